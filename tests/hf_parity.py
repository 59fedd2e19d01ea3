"""Parity of crystalcoder exports with megacrystal's own forward, through transformers' AutoModelForCausalLM
+ trust_remote_code (the modeling code the export carries). A library for tests/test_hf_remote.py, and a
script to run the same checks under any other Python that has torch + transformers:

    PYTHONPATH=$PWD /tmp/tf44/bin/python tests/hf_parity.py [--out benchmarks/results]

It prints (and with --out records) per tiny-model variant: max |logit| gap in fp32, greedy generate()
vs megacrystal's generator, KV-cache vs full forward, a left-padded batch vs each row alone, the beam
search score vs the same tokens scored by megacrystal, and bf16/fp16 gaps relative to the logit range.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from megacrystal.generate import generate_ids  # noqa: E402
from megacrystal.hf.convert import export_hf  # noqa: E402
from megacrystal.model.serialization import save_model  # noqa: E402
from tests.model_util import make_tokenizer, tiny_model  # noqa: E402

# muP on/off x partial/whole-head rotary x tied/untied, in four models
VARIANTS = {
    "mup-partial-tied": {},
    "plain-whole-untied": {"mup": False, "rotary_fraction": 1.0, "tie_embeddings": False},
    "mup-whole-untied": {"rotary_fraction": 1.0, "tie_embeddings": False},
    "plain-partial-tied": {"mup": False},
}
EOS = 2  # </s> of tests/model_util.make_tokenizer


def load_hf(path, dtype=torch.float32):
    """-> (model in eval mode, loading info) through AutoModelForCausalLM + trust_remote_code."""
    import transformers

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), trust_remote_code=True, output_loading_info=True, **{key: dtype}
    )
    return model.eval(), info


def export_variant(tmp: Path, overrides: dict, seed: int = 0, vocab_size: int = 1000):
    """A tiny Crystal model saved as a megacrystal checkpoint and exported -> (cfg, model, ckpt, hf_dir)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg, model = tiny_model(seed, vocab_size=vocab_size, **overrides)
    ckpt = save_model(tmp / "ckpt", cfg, model.state_dict(), tokenizer_path=make_tokenizer(tmp / "tok.json"))
    return cfg, model, ckpt, export_hf(ckpt, "crystalcoder", tmp / "hf")


def _ids(cfg, shape, seed):
    return torch.randint(3, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits_gap(cfg, model, hf, seed=0) -> float:
    ids = _ids(cfg, (2, 23), seed)
    return float((model(ids)[..., : cfg.vocab_size] - hf(input_ids=ids).logits).abs().max())


@torch.no_grad()
def greedy_pair(cfg, model, hf, n=12, seed=1) -> tuple[list[int], list[int]]:
    """-> (megacrystal's greedy tokens, generate()'s), both cut before the end-of-document token."""
    prompt = _ids(cfg, (1, 6), seed)
    ours = generate_ids(model, prompt[0].tolist(), n, greedy=True, stop_ids=[EOS])
    out = hf.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=EOS)[0, prompt.shape[1] :].tolist()
    return ours, out[: out.index(EOS)] if EOS in out else out


@torch.no_grad()
def cache_gap(cfg, hf, seed=2) -> float:
    """Prefill 7 tokens, then feed 5 more one at a time through the KV cache, vs one full forward."""
    ids = _ids(cfg, (2, 12), seed)
    full = hf(input_ids=ids).logits
    out = hf(input_ids=ids[:, :7], use_cache=True)
    steps = [out.logits]
    cache = out[1]
    for i in range(7, 12):
        out = hf(input_ids=ids[:, i : i + 1], use_cache=True, past_key_values=cache)
        cache = out[1]
        steps.append(out.logits)
    return float((torch.cat(steps, dim=1) - full).abs().max())


@torch.no_grad()
def left_pad_gaps(cfg, hf, seed=3) -> tuple[float, bool]:
    """Two prompts (5 and 9 tokens) left-padded into one batch: max logit gap at the real positions vs each
    prompt alone, and whether batched greedy generate() equals each row's own."""
    a, b = _ids(cfg, (1, 5), seed), _ids(cfg, (1, 9), seed + 1)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), a], 1), b])
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    both = hf(input_ids=batch, attention_mask=mask).logits
    gap = max(
        float((both[0, 4:] - hf(input_ids=a).logits[0]).abs().max()),
        float((both[1] - hf(input_ids=b).logits[0]).abs().max()),
    )
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    together = hf.generate(batch, attention_mask=mask, **kw)
    same = torch.equal(together[0, 4:], hf.generate(a, **kw)[0]) and torch.equal(together[1], hf.generate(b, **kw)[0])
    return gap, same


@torch.no_grad()
def beam_gap(cfg, model, hf, seed=4) -> float:
    """Beam search (3 beams, 6 tokens, no length penalty): its score vs the same tokens scored by megacrystal.
    A cache that is not reordered with the beams gives a score that does not belong to the tokens."""
    prompt = _ids(cfg, (1, 5), seed)
    out = hf.generate(
        prompt,
        num_beams=3,
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=EOS,
    )
    seq = out.sequences[:1]
    logp = torch.log_softmax(model(seq)[0, :-1, : cfg.vocab_size].double(), -1)
    new = range(prompt.shape[1] - 1, seq.shape[1] - 1)
    ours = sum(float(logp[i, seq[0, i + 1]]) for i in new)
    return abs(ours - float(out.sequences_scores[0]))


@torch.no_grad()
def sampling_ok(cfg, hf, seed=5) -> bool:
    """Sampling runs, stays in the vocabulary and repeats under the same seed."""
    prompt = _ids(cfg, (1, 5), seed)
    runs = []
    for _ in range(2):
        torch.manual_seed(seed)
        runs.append(hf.generate(prompt, do_sample=True, top_k=20, temperature=0.9, max_new_tokens=8, pad_token_id=EOS))
    return torch.equal(runs[0], runs[1]) and int(runs[0].max()) < cfg.vocab_size


@torch.no_grad()
def half_gap(cfg, model, hf_dir, dtype, seed=6) -> float:
    """max |logit gap| of the model loaded in `dtype` vs megacrystal in fp32, over the fp32 logit range."""
    hf, _ = load_hf(hf_dir, dtype)
    ids = _ids(cfg, (2, 17), seed)
    ref = model(ids)[..., : cfg.vocab_size]
    return float((hf(input_ids=ids).logits.float() - ref).abs().max() / ref.abs().max())


def run_variant(tmp: Path, name: str) -> dict:
    cfg, model, _, hf_dir = export_variant(tmp / name, VARIANTS[name])
    hf, info = load_hf(hf_dir)
    ours, theirs = greedy_pair(cfg, model, hf)
    pad_gap, pad_generate_same = left_pad_gaps(cfg, hf)
    return {
        "missing_keys": sorted(info["missing_keys"]),
        "unexpected_keys": sorted(info["unexpected_keys"]),
        "logits_max_abs_gap_fp32": logits_gap(cfg, model, hf),
        "greedy_equal": ours == theirs,
        "greedy_tokens": len(ours),
        "kv_cache_gap": cache_gap(cfg, hf),
        "left_pad_gap": pad_gap,
        "left_pad_generate_equal": pad_generate_same,
        "beam_score_gap": beam_gap(cfg, model, hf),
        "sampling_ok": sampling_ok(cfg, hf),
        "bf16_rel_gap": half_gap(cfg, model, hf_dir, torch.bfloat16),
        "fp16_rel_gap": half_gap(cfg, model, hf_dir, torch.float16),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="directory to record hf-parity-transformers<version>-<date>.json in")
    a = ap.parse_args(argv)
    import transformers

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_variant(Path(tmp), name) for name in VARIANTS}
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine() + " " + platform.processor(),
        "variants": results,
    }
    text = json.dumps(record, indent=2)
    print(text)
    if a.out:
        day = datetime.date.today().isoformat()
        path = Path(a.out) / f"hf-parity-transformers{transformers.__version__}-{day}.json"
        path.write_text(text + "\n")
        print(f"wrote {path}", file=sys.stderr)
    ok = all(
        r["logits_max_abs_gap_fp32"] <= 1e-5
        and r["greedy_equal"]
        and not r["missing_keys"]
        and not r["unexpected_keys"]
        for r in results.values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
