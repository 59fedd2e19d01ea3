"""The least CPU time any `megacrystal eval` of a run can take on this machine, from measured peaks.

    megacrystal eval --checkpoint runs/demo --output report.json --device cpu
    OMP_NUM_THREADS=1 python benchmarks/eval_floor.py --checkpoint runs/demo --report report.json

A lower bound, not a timing of our code: the work the command's defaults must do, each part at the
fastest rate this machine's torch reaches, with everything else counted as free.
- start-up: a process that only imports torch and torch.distributed.checkpoint (the checkpoint's
  format) and skips the last cycle collection at exit, as `megacrystal eval` does (median CPU time);
- the per-source losses: the forward's FLOPs over every held-out sample the report scored (matrix
  products of the blocks and the output head, and causal attention's two products at their average
  length), divided by the best single-thread fp32 matrix-product rate measured here (a 2048³ product
  and the head's own shape), plus one log-softmax over the logits at its measured rate;
- loading the weights, the FIM and completion decoding, tokenising, writing the report: zero.
The largest speed-up over a baseline's CPU time (by default the newest `eval-vs-baseline-*.json`'s
median) is then baseline / floor. Records benchmarks/results/eval-floor-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from benchmarks.eval_vs_baseline import import_floor_cpu  # noqa: E402
from benchmarks.parallel_bench_util import RESULTS, record  # noqa: E402


def _best(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="runs/demo")
    ap.add_argument("--report", required=True, help="a `megacrystal eval --output` report of that checkpoint")
    ap.add_argument("--baseline-cpu", type=float, default=None, help="CPU seconds of the baseline evaluation")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()

    import torch

    from megacrystal.evaluation.model_loading import load_for_eval

    torch.set_num_threads(1)
    report = json.loads(Path(a.report).read_text())
    loaded = load_for_eval(a.checkpoint)
    sd, cfg = loaded.state_dict, loaded.cfg
    seq = report["validation"]["seq_length"]
    samples = sum(v["samples"] for v in report["losses"].values())
    tokens = samples * seq
    h, vocab, mb = cfg.hidden_size, cfg.vocab_size, report["settings"]["micro_batch_size"]
    block_macs = sum(t.numel() for k, t in sd.items() if k.startswith("layers.") and t.dim() == 2)
    attn_flops = cfg.num_layers * 2 * 2 * h * (seq + 1) / 2  # QK^T and PV per token, causal average
    flops_per_token = 2 * block_macs + 2 * h * vocab + attn_flops
    loss_flops = flops_per_token * tokens

    a2048 = torch.randn(2048, 2048)
    peak_2048 = 2 * 2048**3 / _best(lambda: a2048 @ a2048)
    x, w = torch.randn(mb * seq, h), torch.randn(vocab, h)
    peak_head = 2 * mb * seq * h * vocab / _best(lambda: x @ w.t(), repeats=20)
    peak = max(peak_2048, peak_head)
    logits = torch.randn(mb * seq, vocab)
    softmax_s = _best(lambda: torch.log_softmax(logits, -1), repeats=20) * tokens / (mb * seq)
    start_s = statistics.median(import_floor_cpu() for _ in range(a.rounds))
    loss_s = loss_flops / peak + softmax_s
    floor = start_s + loss_s

    baseline, source = a.baseline_cpu, "--baseline-cpu"
    if baseline is None:
        newest = sorted(RESULTS.glob("eval-vs-baseline-*.json"))[-1]
        baseline, source = json.loads(newest.read_text())["median_cpu_s"]["baseline"], newest.name
    print(f"held-out tokens {tokens}, {flops_per_token / 1e6:.3f} MFLOP/token, {loss_flops / 1e9:.1f} GFLOP")
    print(f"fp32 matmul peak, one thread: {peak_2048 / 1e9:.1f} GFLOP/s (2048^3), {peak_head / 1e9:.1f} (head)")
    print(f"floor: start-up {start_s:.2f} s + losses {loss_s:.2f} s (log-softmax {softmax_s:.2f}) = {floor:.2f} s CPU")
    print(f"baseline {baseline:.2f} s CPU ({source}): at most {baseline / floor:.2f}x")
    path = record(
        f"eval-floor-{time.strftime('%Y%m%d-%H%M%S')}",
        dict(
            what="lower bound of megacrystal eval's CPU time: start-up + losses at measured peak, the rest free",
            checkpoint=a.checkpoint,
            heldout_tokens=tokens,
            flops_per_token=flops_per_token,
            loss_gflop=round(loss_flops / 1e9, 2),
            matmul_peak_gflops={"2048^3": round(peak_2048 / 1e9, 1), "head": round(peak_head / 1e9, 1)},
            log_softmax_s=round(softmax_s, 3),
            startup_floor_cpu_s=round(start_s, 3),
            loss_floor_cpu_s=round(loss_s, 3),
            floor_cpu_s=round(floor, 3),
            baseline_cpu_s=baseline,
            baseline_from=source,
            max_speedup=round(baseline / floor, 2),
        ),
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
