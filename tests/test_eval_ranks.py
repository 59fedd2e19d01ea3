"""The evaluation engine on several gloo ranks gives the serial model's losses and logits (tensor,
pipeline, context and data parallel), spreads generation work over data-parallel replicas, and
decodes the same greedy ids on tp=2 with the KV cache as without it."""

import torch

from megacrystal.evaluation.decoding import greedy_batch, one_at_a_time
from megacrystal.evaluation.engine_runner import EvalRunner
from tests.dist import run_ranks
from tests.model_util import tiny_model

RTOL = 1e-5  # fp32, as the other parallel-vs-serial tests (tests/parallel_cases.py)
S = 16


def _samples(n: int, vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(n):
        t = torch.randint(0, vocab, (S + 1,), generator=g).numpy()
        out.append(
            {
                "tokens": t[:-1],
                "labels": t[1:],
                "loss_mask": (torch.arange(S) % 5 != i % 5).float().numpy(),  # some masked tokens
                "position_ids": torch.arange(S).numpy(),
                "segment_ids": torch.zeros(S, dtype=torch.int32).numpy(),
                "source_id": 0,
                "phase_id": 0,
                "sample_id": i,
            }
        )
    return out


def _serial(cfg, model, samples, prompt):
    total, count = 0.0, 0.0
    with torch.no_grad():
        for s in samples:
            logits = model(torch.as_tensor(s["tokens"])[None])[0, :, : cfg.vocab_size].double()
            loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(s["labels"]), reduction="none")
            mask = torch.as_tensor(s["loss_mask"]).double()
            total, count = total + float((loss * mask).sum()), count + float(mask.sum())
        last = model(torch.tensor([prompt]))[0, -1, : cfg.vocab_size].double()
    return total / count, last


def _on_ranks(rank, world, layouts):

    cfg, model = tiny_model(seed=4, vocab_size=300, max_seq_len=32)
    sd = model.state_dict()
    samples = _samples(5, cfg.vocab_size)
    prompt = [int(x) for x in samples[0]["tokens"][:9]]
    out = []
    for tp, pp, cp in layouts:
        r = EvalRunner(cfg, sd, tp=tp, pp=pp, micro_batch_size=2, precision="fp32", device="cpu", cp=cp)
        total, count = 0.0, 0.0
        for i in range(0, len(samples), r.global_batch):
            s, c = r.loss(samples[i : i + r.global_batch])
            total, count = total + s, count + c
        gen = pp == 1 and cp == 1
        logits = r.logits(prompt).double() if gen else None
        spread = r.map(list(range(7)), lambda xs, r=r: [(x * x, r.grid.dp_rank) for x in xs], 2) if gen else None
        out.append(dict(layout=(tp, pp, cp), loss=total / count, count=count, logits=logits, spread=spread))
    return out, _decode_tp2()


def _decode_tp2():
    """Greedy ids on tp=2 (LLaMA, 2 KV heads: one per rank) through the KV cache and without it (fp32),
    and the cached ids in fp64, next to the serial fp64 model's; rows stop at different steps."""
    cfg, model = tiny_model(seed=6, family="llama", num_kv_heads=2, vocab_size=300, max_seq_len=32)
    g = torch.Generator().manual_seed(8)
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (3, 9, 1, 6)]
    serial = model.double()
    step = lambda ids: int(serial(torch.tensor([ids]))[0, -1, :300].argmax())
    with torch.no_grad():
        ref = greedy_batch(one_at_a_time(step), prompts, 12)
        stop = [ref[0][3]]  # row 0 stops at its 4th token, the others when (if) they meet it
        ref = greedy_batch(one_at_a_time(step), prompts, 12, stop)
    out = {"serial_fp64": ref}
    for precision in ("fp32", "fp64"):
        r = EvalRunner(cfg, model.state_dict(), tp=2, precision=precision, device="cpu")
        out[precision] = greedy_batch(r.next_tokens, prompts, 12, stop)
        out[precision + "_steps"] = r._incremental.steps
        out[precision + "_uncached"] = greedy_batch(lambda b, r=r: r.next_tokens(b, cache=False), prompts, 12, stop)
    return out


def test_eval_runner_on_two_ranks_matches_the_serial_model():
    cfg, model = tiny_model(seed=4, vocab_size=300, max_seq_len=32)
    samples = _samples(5, cfg.vocab_size)
    want_loss, want_logits = _serial(cfg, model, samples, [int(x) for x in samples[0]["tokens"][:9]])
    want_count = sum(float(s["loss_mask"].sum()) for s in samples)
    results = run_ranks(_on_ranks, 2, args=([(2, 1, 1), (1, 2, 1), (1, 1, 1), (1, 1, 2)],), timeout=300)
    for rank, (res, dec) in enumerate(results):
        assert dec["fp32"] == dec["fp32_uncached"] and dec["fp64"] == dec["fp64_uncached"] == dec["serial_fp64"], rank
        assert len(dec["fp64"][0]) == 3 and dec["fp64_steps"] >= 10  # rows stopped apart; the cache stepped
        for r in res:
            assert r["count"] == want_count, r["layout"]
            assert abs(r["loss"] - want_loss) <= RTOL * want_loss, (rank, r["layout"], r["loss"], want_loss)
            if r["logits"] is not None:
                err = float((r["logits"] - want_logits).norm() / want_logits.norm())
                assert err <= RTOL, (rank, r["layout"], err)
        tp2, _, dp2, _ = res
        assert [v for v, _ in tp2["spread"]] == [x * x for x in range(7)]
        assert [v for v, _ in dp2["spread"]] == [x * x for x in range(7)]
        assert [who for _, who in dp2["spread"]] == [i % 2 for i in range(7)]  # each replica did every 2nd
