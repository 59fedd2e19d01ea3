"""On-the-fly FIM: layouts, un-permuting gives the document back, rates, determinism, masking."""

import math

import numpy as np
import pytest

from megacrystal.data.fim import FIM, unpermute
from megacrystal.data.gpt_dataset import SamplePart
from megacrystal.data.phases import PhasedDataset
from megacrystal.data.plan import make_plan

from .conftest import make_config


def _doc(tokenizer, text):
    ids = np.array(tokenizer.encode(text) + [tokenizer.eod], dtype=np.int64)
    return ids, [SamplePart(document=3, position=17, epoch=0, offset=0, length=len(ids))]


def _pad_part(n):
    return SamplePart(document=-1, position=-1, epoch=0, offset=0, length=n)


@pytest.mark.parametrize("spm_rate", [0.0, 1.0])
def test_layout_and_unpermute(tokenizer, corpus, spm_rate):
    fim = FIM(tokenizer, seed=1)
    sp = tokenizer.special
    n_checked = 0
    for i, text in enumerate(corpus["code"][:12]):
        text = text[:700]
        ids, parts = _doc(tokenizer, text)
        out, (info,) = fim.apply(ids, parts, rate=1.0, spm_rate=spm_rate, phase=0, fkey=i)
        assert len(out) == len(ids)
        assert info.mode == ("spm" if spm_rate else "psm")
        if spm_rate:
            assert out[0] == sp["fim_prefix"] and out[1] == sp["fim_suffix"]
        else:
            assert out[0] == sp["fim_prefix"]
        assert list(out).count(sp["fim_middle"]) == 1
        # a lone document grows by the sentinels: its end falls off the sample
        assert info.cut >= 3 or (out == sp["fim_pad"]).any()
        long_out, (long_info, _) = FIM(tokenizer, seed=1).apply(
            np.concatenate([ids, np.full(40, sp["fim_pad"])]),
            parts + [_pad_part(40)],
            rate=1.0,
            spm_rate=spm_rate,
            phase=0,
            fkey=i,
        )
        if long_info.cut == 0:
            body = long_out[: long_info.length - 1]
            assert long_out[long_info.length - 1] == tokenizer.eod
            assert unpermute(tokenizer, body, long_info) == text
            n_checked += 1
    assert n_checked >= 10


def test_rate_zero_and_nl_untouched(tokenizer):
    fim = FIM(tokenizer, seed=1)
    ids, parts = _doc(tokenizer, "def f(x):\n    return x + 1\n")
    out, info = fim.apply(ids, parts, rate=0.0, spm_rate=0.5, phase=0, fkey=0)
    assert out is ids and info[0].mode == "none"


def test_decision_rate_within_statistical_bounds(tokenizer):
    fim = FIM(tokenizer, seed=7)
    for rate in (0.1, 0.5, 0.9):
        n = 20000
        hits = sum(fim.decide(1, 99, pos, pos % 1000, rate) for pos in range(n))
        sigma = math.sqrt(n * rate * (1 - rate))
        assert abs(hits - n * rate) < 5 * sigma, (rate, hits)


def _fim_phase_dataset(corpus, tmp_path, tokenizer, seed=1234, rate=0.5):
    cfg = make_config(
        corpus,
        tmp_path,
        seed=seed,
        phases=[
            {"name": "c", "steps": 12, "blend": {"code": 0.5, "snippets": 0.5}, "fim_rate": rate, "fim_spm_rate": 0.5}
        ],
    )
    return PhasedDataset(make_plan(cfg), str(tmp_path / "cache"), tokenizer=tokenizer)


def test_samples_rates_masks_and_determinism(corpus, tmp_path, tokenizer):
    ds = _fim_phase_dataset(corpus, tmp_path, tokenizer)
    pad = tokenizer.special["fim_pad"]
    modes = []
    for g in range(len(ds)):
        tokens, parts, loc, report = ds.raw(g)
        assert len(tokens) == 65 and sum(p.length for p in parts) == 65
        assert sum(r.length for r in report) + int((tokens[sum(r.length for r in report) :] == pad).sum()) == 65
        modes += [r.mode for r in report]
        s = ds[g]
        assert np.all(s["loss_mask"][s["labels"] == pad] == 0)
        assert np.all(s["loss_mask"][(s["labels"] != pad) & (s["tokens"] != pad)] == 1)
    n = len(modes)
    fim = sum(m != "none" for m in modes)
    spm = sum(m == "spm" for m in modes)
    assert abs(fim - 0.5 * n) < 5 * math.sqrt(n * 0.25), (fim, n)
    assert abs(spm - 0.5 * fim) < 5 * math.sqrt(fim * 0.25) + 1
    again = _fim_phase_dataset(corpus, tmp_path / "b", tokenizer)
    other = _fim_phase_dataset(corpus, tmp_path / "c", tokenizer, seed=99)
    same = [np.array_equal(ds[g]["tokens"], again[g]["tokens"]) for g in range(len(ds))]
    assert all(same)
    differ = [not np.array_equal(ds[g]["tokens"], other[g]["tokens"]) for g in range(len(ds))]
    assert sum(differ) > len(ds) // 2


def test_fim_sample_unpermutes_to_the_plain_sample(corpus, tmp_path, tokenizer):
    """Every FIM piece not cut by the sample end, put back in order, decodes to its original text."""
    ds = _fim_phase_dataset(corpus, tmp_path, tokenizer, rate=1.0)
    checked = 0
    for g in range(len(ds)):
        tokens, parts, loc, report = ds.raw(g)
        plain, _, _ = ds.streams[loc.source].sample(loc.source_sample)
        at = 0
        for p, r in zip(parts, report, strict=False):  # pieces past the sample end have no report
            piece = plain[at : at + p.length]
            at += p.length
            body = len(piece) - (1 if piece[-1] == tokenizer.eod else 0)
            original = tokenizer.decode(piece[:body].tolist())
            if r.mode != "none" and r.cut == 0 and "\ufffd" not in original:
                assert unpermute(tokenizer, tokens[r.start : r.start + r.length], r) == original
                checked += 1
    assert checked >= 10


def test_sentencepiece_fim_round_trip(tmp_path):
    """The demo's kind of tokenizer (SentencePiece BPE, byte fallback, identity normalisation)."""
    from megacrystal.tokenizer import load_tokenizer

    from .corpus import build_demo_layout, code_texts

    build_demo_layout(str(tmp_path))
    tok = load_tokenizer("SentencePieceTokenizer", str(tmp_path / "demo_data/tokenizer/tokenizer.model"))
    fim = FIM(tok, seed=3)
    pad = tok.special["fim_pad"]
    checked = 0
    for i, text in enumerate(code_texts(20, 600)):
        ids = np.array(tok.encode(text) + [tok.eod] + [pad] * 40, dtype=np.int64)
        parts = [SamplePart(3, 17 + i, 0, 0, len(ids) - 40), _pad_part(40)]
        out, report = fim.apply(ids, parts, rate=1.0, spm_rate=0.5, phase=0, fkey=i)
        r = report[0]
        assert r.mode in ("psm", "spm")
        if r.cut == 0:
            assert unpermute(tok, out[: r.length], r) == text
            checked += 1
    assert checked >= 10
