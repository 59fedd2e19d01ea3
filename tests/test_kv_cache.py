"""KV-cache decoding gives the uncached model's logits (fp64 within 1e-9) and greedy ids (fp32, the
eval scorers end to end), for Crystal and LLaMA with grouped KV heads, on right-padded batches whose
rows finish at different steps; misuse is refused in one line. (tp=2: tests/test_eval_ranks.py.)"""

import copy

import numpy as np
import pytest
import torch

from megacrystal.data.indexed import write_documents
from megacrystal.evaluation.completion_scoring import score_completion
from megacrystal.evaluation.documents import sample_code_documents
from megacrystal.evaluation.engine_runner import EvalRunner
from megacrystal.evaluation.fim_scoring import score_fim
from megacrystal.model.incremental import IncrementalLogits
from megacrystal.model.kv_cache import KVCache
from megacrystal.tokenizer import load_tokenizer
from tests.eval_util import CODE_DOCS
from tests.model_util import make_tokenizer, tiny_model

V = 300


def _uncached(model, seq):
    with torch.no_grad():
        return model(torch.tensor([seq], device=next(model.parameters()).device))[0, -1, :V]


@pytest.mark.parametrize(
    "arch, backend",
    [
        (dict(family="crystal"), "sdpa"),
        (dict(family="llama", num_kv_heads=2), "math"),
        (dict(family="llama", num_kv_heads=1), "sdpa"),
    ],
    ids=["crystal-sdpa", "llama-gqa2-math", "llama-mqa-sdpa"],
)
def test_cached_logits_equal_the_whole_sequence_forward(arch, backend):
    """fp64: every step's logits within 1e-9 of running the sequence whole, while rows drop out, and a
    sequence longer than the window restarts exactly as the uncached model does."""
    cfg, model = tiny_model(seed=3, vocab_size=V, max_seq_len=24, attention_backend=backend, **arch)
    model = model.double()
    step = IncrementalLogits(model)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, V, (n,), generator=g).tolist() for n in (5, 13, 1, 9)]
    for t in range(12):
        out = step(seqs)
        assert out.dtype == torch.float64 and out.shape == (len(seqs), V)
        for i, s in enumerate(seqs):
            err = float((out[i] - _uncached(model, s)).abs().max())
            assert err <= 1e-9, (t, i, err)
        seqs = [s + [int(n)] for s, n in zip(seqs, out.argmax(-1), strict=True)]
        if t == 3:
            seqs = [seqs[0], seqs[2], seqs[3]]  # row 1 finished
        if t == 7:
            seqs = [seqs[1]]
    assert (step.prefills, step.steps) == (1, 11)
    window = (seqs[0] * 3)[:24]  # a full window: the next one is shifted, the cache restarts (positions from 0)
    nxt = window[1:] + [7]
    step([window])
    assert float((step([nxt])[0] - _uncached(model, nxt)).abs().max()) <= 1e-9
    assert step.prefills == 3


@pytest.fixture(scope="module")
def scoring_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kv")
    tok = load_tokenizer(None, make_tokenizer(tmp / "tokenizer.json"))
    prefix = str(tmp / "code_text_document")
    write_documents(prefix, [tok.encode(d) + [tok.eod] for d in CODE_DOCS])
    docs = sample_code_documents([("code", prefix, np.arange(len(CODE_DOCS)))], tok, 8, seed=3)
    return tok, docs


# untied heads: a random tiny model with a tied head repeats the prompt's last token (a stop token here)
@pytest.mark.parametrize(
    "arch",
    [dict(family="crystal", tie_embeddings=False), dict(family="llama", num_kv_heads=2)],
    ids=["crystal", "llama"],
)
def test_eval_scoring_gives_the_same_greedy_ids_with_and_without_the_cache(scoring_setup, arch):
    """fp32 through the eval engine: FIM (both modes) and completion predictions identical cached and
    uncached; the cache was used (one prefill per batch of prompts, the rest single-token steps)."""
    tok, docs = scoring_setup
    cfg, model = tiny_model(seed=2, vocab_size=tok.vocab_size, max_seq_len=96, **arch)
    runner = EvalRunner(cfg, model.state_dict(), precision="fp32", device="cpu")
    kw = dict(max_seq_len=cfg.max_seq_len, max_new_tokens=16, seed=3, examples=8, batch_size=4)
    results, batches = {}, 0
    for cached in (True, False):
        fn = lambda b, cached=cached: runner.next_tokens(b, cache=cached)
        fim, comp = score_fim(docs, tok, fn, **kw), score_completion(docs, tok, fn, **kw)
        results[cached] = [e["prediction"] for e in fim["examples"] + comp["examples"]]
        batches = -(-len(fim["examples"]) // 4) - (-len(comp["examples"]) // 4)
    assert results[True] == results[False]
    inc = runner._incremental
    assert inc.prefills == batches and inc.steps >= 4 * batches, (inc.prefills, inc.steps)  # it did generate


def test_cache_misuse_is_refused_in_one_line():
    cfg, model = tiny_model(seed=1, vocab_size=V, max_seq_len=16, document_mask=True)
    x = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="KV-cache decoding: .*segment_ids"):
        model(tokens=x, kv_cache=KVCache(1), segment_ids=torch.zeros_like(x))
    with pytest.raises(ValueError, match="KV-cache decoding: .*position_ids"):
        model(tokens=x, kv_cache=KVCache(1), position_ids=torch.arange(3))
    with pytest.raises(ValueError, match=r"expected 1\.\.16 tokens"):
        IncrementalLogits(model)([list(range(17))])
    cache = KVCache(2)
    with pytest.raises(ValueError, match="a batch of 1 rows, the cache holds 2"):
        model(tokens=x, kv_cache=cache)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh)")
def test_cached_decoding_on_cuda_with_the_compiled_kernels():
    """fp32 on CUDA (Triton kernels, SDPA): greedy ids equal cached and uncached on a ragged batch. bf16
    (flash prefill when installed, SDPA steps, GQA): the cached logits are as close to fp32 as the
    uncached bf16 ones are (twice their measured error)."""
    from megacrystal.evaluation.decoding import greedy_batch

    cfg, model = tiny_model(seed=3, family="llama", num_kv_heads=2, vocab_size=V, max_seq_len=64)
    model = model.cuda()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (5, 33, 1, 20)]
    uncached = lambda b: [int(_uncached(model, s).argmax()) for s in b]
    step = IncrementalLogits(model)
    assert greedy_batch(lambda b: step(b).argmax(-1).tolist(), prompts, 24) == greedy_batch(uncached, prompts, 24)
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    half = IncrementalLogits(m16)
    seqs = [p + [1, 2, 3] for p in prompts]
    half(seqs)
    for _ in range(3):
        seqs = [s + [7] for s in seqs]
        got = half(seqs)
        for i, s in enumerate(seqs):
            ref = _uncached(model, s).float()
            noise = float((_uncached(m16, s).float() - ref).norm() / ref.norm())
            assert float((got[i] - ref).norm() / ref.norm()) <= 2 * noise + 1e-3, (i, noise)
