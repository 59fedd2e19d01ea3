"""optim.loss_normalization: tokens (per loss token) vs fixed (batch x seq, Crystal's), on real batches."""

import numpy as np
import pytest
import torch

from megacrystal.data.indexed import IndexedDatasetWriter
from megacrystal.data.loader import StepLoader
from megacrystal.data.phases import PhasedDataset
from megacrystal.data.plan import make_plan
from megacrystal.engine.engine import Engine
from tests.parallel_cases import make_cfg

from .conftest import make_config


def _char_tokenized(corpus, tmp_path, tokenizer) -> str:
    """Code documents stored one token per character (not the tokenizer's own encoding, as data
    tokenized by another tool can be): FIM re-encodes its three parts, the sample shrinks and the
    rest is <fim_pad>."""
    prefix = str(tmp_path / "chars_text_document")
    with IndexedDatasetWriter(prefix) as w:
        for text in corpus["code"][:20]:
            ids = [i for ch in text[:1500] for i in tokenizer.encode(ch)]
            w.add_document(np.array(ids + [tokenizer.eod]))
    return prefix


def _batches(corpus, tmp_path, tokenizer):
    sources = {"prose": {"prefixes": [corpus["prefixes"]["prose"]]}, "chars": {"prefixes": [], "kind": "code"}}
    sources["chars"]["prefixes"] = [_char_tokenized(corpus, tmp_path, tokenizer)]
    phases = [
        {"name": "plain", "steps": 1, "blend": {"prose": 1.0}},
        {"name": "fim", "steps": 1, "blend": {"chars": {"weight": 1.0, "fim_rate": 1.0}}},
    ]
    cfg = make_config(corpus, tmp_path, phases=phases, sources=sources)
    ds = PhasedDataset(make_plan(cfg), str(tmp_path / "cache"), tokenizer=tokenizer)
    return list(StepLoader(ds, 0, 1, 2, 8))


def test_normalisations_agree_unmasked_and_differ_by_the_masked_share(corpus, tmp_path, tokenizer):
    plain, fim = _batches(corpus, tmp_path, tokenizer)
    pad = tokenizer.special["fim_pad"]
    assert all(bool(mb["loss_mask"].all()) for mb in plain)
    mask = torch.cat([mb["loss_mask"] for mb in fim])
    masked = 1.0 - float(mask.mean())
    assert masked > 0.05 and bool((torch.cat([mb["labels"] for mb in fim])[mask == 0] == pad).all())
    base = ["model.vocab_size=640", "model.max_seq_len=64", "data.seq_length=64", "optim.clip_grad=1e9"]
    out = {}
    for mode in ("tokens", "fixed"):
        torch.manual_seed(0)
        engine = Engine(make_cfg(base + [f"optim.loss_normalization={mode}"]), torch.device("cpu"))
        out[mode] = [engine.train_step(plain, 1e-3), engine.train_step(fim, 1e-3)]
    (t_plain, t_fim), (f_plain, f_fim) = out["tokens"], out["fixed"]
    # nothing masked: the same denominator, the same loss, the same gradient
    assert f_plain["loss"] == t_plain["loss"] and f_plain["grad_norm"] == t_plain["grad_norm"]
    # FIM padding masked: the fixed loss and gradient are (1 - masked share) x the token mean's
    assert f_fim["loss"] == pytest.approx(t_fim["loss"] * (1.0 - masked), rel=1e-6)
    assert f_fim["grad_norm"] == pytest.approx(t_fim["grad_norm"] * (1.0 - masked), rel=1e-5)
    assert f_fim["tokens"] == t_fim["tokens"] == float(mask.sum())
