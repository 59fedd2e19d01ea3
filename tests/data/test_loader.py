"""The step loader: resume at any step, worker-count invariance, DP sharding, validation sets."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megacrystal.data.loader import StepLoader, build_data

from .conftest import make_config


def _flat(step_batches):
    return [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in mb.items()} for mb in step_batches]


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.fixture(scope="module")
def data(corpus, tmp_path_factory):
    cfg = make_config(corpus, tmp_path_factory.mktemp("run"), valid_fraction=0.1)
    return cfg, build_data(cfg)


def test_batch_contents(data):
    cfg, (plan, loader, valid) = data
    steps = list(loader)
    assert len(steps) == plan.total_steps == 12
    mb = steps[0][0]
    assert mb["tokens"].shape == (2, 64) and mb["tokens"].dtype == torch.int64
    assert torch.equal(mb["tokens"][:, 1:], mb["labels"][:, :-1])
    assert mb["cu_seqlens"][-1] == 2 * 64 and mb["cu_seqlens"].dtype == torch.int32
    assert set(mb["source_id"].tolist()) <= {0, 1} and mb["phase_id"].tolist() == [0, 0]
    for s in steps:
        for m in s:  # cu_seqlens: document starts over the flattened batch, from segment_ids
            seg = m["segment_ids"]
            starts = [
                b * 64 + i for b in range(seg.shape[0]) for i in range(64) if i == 0 or seg[b, i] != seg[b, i - 1]
            ]
            assert m["cu_seqlens"].tolist() == starts + [seg.numel()]
            assert m["max_seqlen"] == max(np.diff(starts + [seg.numel()]))
            if cfg.model.document_mask:
                assert (m["position_ids"][m["segment_ids"] != 0] < 64).all()
    ids = [int(i) for s in steps for m in s for i in m["sample_id"]]
    assert ids == list(range(plan.total_samples))  # dp=1: all samples, in order
    assert {int(m["phase_id"][0]) for m in steps[-1]} == {1}


def test_source_counts_of_a_step_are_its_global_batch(data):
    """The trainer's per-source counts come from the data plan, on every rank alike, with no
    collective: they equal what the step's micro-batches hold over all dp ranks."""
    cfg, (plan, loader, _) = data
    for dp in (1, 2):
        shards = [
            StepLoader(loader.dataset, r, dp, cfg.train.micro_batch_size, cfg.train.global_batch_size)
            for r in range(dp)
        ]
        for step, per_rank in enumerate(zip(*(iter(s) for s in shards), strict=True)):
            held = np.zeros(len(plan.source_names), dtype=np.int64)
            for mbs in per_rank:
                for mb in mbs:
                    held += np.bincount(mb["source_id"].numpy(), minlength=len(held))
            for s in shards:
                assert s.source_counts(step).tolist() == held.tolist(), step


@pytest.mark.parametrize("stop", [0, 1, 4, 5, 6, 11])  # incl. mid-phase and at the phase boundary
def test_resume_yields_the_same_following_batches(data, stop):
    cfg, (plan, loader, _) = data
    full = [_flat(s) for s in StepLoader(loader.dataset, 0, 1, 2, 8)]
    first = StepLoader(loader.dataset, 0, 1, 2, 8)
    it = iter(first)
    for _ in range(stop):
        next(it)
    state = first.state_dict()
    assert state["step"] == stop
    resumed = StepLoader(loader.dataset, 0, 1, 2, 8)
    resumed.load_state_dict(state)
    rest = [_flat(s) for s in resumed]
    assert len(rest) == len(full) - stop
    for a, b in zip(rest, full[stop:], strict=True):
        for x, y in zip(a, b, strict=True):
            _same(x, y)


@settings(max_examples=25, deadline=None)
@given(
    stop=st.integers(0, 12),
    layout=st.sampled_from([(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (1, 4)]),
    rank_pick=st.integers(0, 3),
)
def test_resume_property_any_step_any_layout(data, stop, layout, rank_pick):
    cfg, (plan, loader, _) = data
    dp, mbs = layout
    rank = rank_pick % dp
    full = list(StepLoader(loader.dataset, rank, dp, mbs, 8))
    first = StepLoader(loader.dataset, rank, dp, mbs, 8)
    consumed = list(itertools.islice(first, stop))
    assert len(consumed) == stop
    resumed = StepLoader(loader.dataset, rank, dp, mbs, 8)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert full and len(rest) == len(full) - stop
    for a, b in zip(rest, full[stop:], strict=True):
        assert [m["sample_id"].tolist() for m in a] == [m["sample_id"].tolist() for m in b]
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x["tokens"], y["tokens"]) and torch.equal(x["loss_mask"], y["loss_mask"])


def test_identical_batches_whatever_the_number_of_workers(data):
    cfg, (plan, loader, _) = data
    ref = [_flat(s) for s in StepLoader(loader.dataset, 0, 1, 2, 8, num_workers=0)]
    par = StepLoader(loader.dataset, 0, 1, 2, 8, num_workers=2)
    par.load_state_dict({"step": 3})
    got = [_flat(s) for s in par]
    assert 0 < len(got) == len(ref) - 3
    for a, b in zip(got, ref[3:], strict=True):
        for x, y in zip(a, b, strict=True):
            _same(x, y)


def test_dp_shards_partition_the_global_batch(data):
    cfg, (plan, loader, _) = data
    per_rank = [list(StepLoader(loader.dataset, r, 2, 2, 8)) for r in range(2)]
    for step in range(plan.total_steps):
        got = sorted(int(i) for r in range(2) for mb in per_rank[r][step] for i in mb["sample_id"])
        assert got == list(range(step * 8, step * 8 + 8))
        assert len(per_rank[0][step]) == 2  # 8 / (2 * 2) micro-batches per rank
    with pytest.raises(ValueError, match="not divisible"):
        StepLoader(loader.dataset, 0, 3, 2, 8)


def test_state_of_another_configuration_is_refused(data):
    cfg, (plan, loader, _) = data
    with pytest.raises(ValueError, match="global_batch_size"):
        loader.load_state_dict({"step": 1, "global_batch_size": 16})
    with pytest.raises(ValueError, match="phases changed"):
        loader.load_state_dict({"step": 1, "total_samples": 5})


def test_validation_per_source(data):
    cfg, (plan, loader, valid) = data
    assert set(valid) == {"prose", "code", "snippets"}
    train_docs = set(plan.sources["prose"].files[0].train_documents.tolist())
    v = valid["prose"]
    for k in range(len(v.stream)):
        _, parts, _ = v.stream.sample(k)
        assert not {p.document for p in parts} & train_docs  # held-out documents only
    a = [_flat(s) for s in v.batches(2, 0, 1, 2, 8)]
    b = [_flat(s) for s in v.batches(2, 0, 1, 2, 8)]
    assert len(a) == 2 and all(int(mb["source_id"][0]) == plan.sources["prose"].index for s in a for mb in s)
    for x, y in zip(a, b, strict=True):
        for p, q in zip(x, y, strict=True):
            _same(p, q)


@pytest.mark.gpu
def test_pinned_batches_on_cuda(data):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (pinned memory is used only with CUDA)")
    cfg, (plan, loader, _) = data
    ref = [_flat(s) for s in StepLoader(loader.dataset, 0, 1, 2, 8)]
    for workers in (0, 2):
        got = list(StepLoader(loader.dataset, 0, 1, 2, 8, num_workers=workers, pin_memory=True))
        assert got[0][0]["tokens"].is_pinned()
        for a, b in zip(got, ref, strict=True):
            for x, y in zip(a, b, strict=True):
                _same(x, y)


def test_position_ids_restart_at_documents_with_document_mask(corpus, tmp_path):
    cfg = make_config(corpus, tmp_path, phases=[{"name": "p", "steps": 3, "blend": {"snippets": 1}}])
    cfg.model = dataclasses.replace(cfg.model, document_mask=True)
    _, loader, _ = build_data(cfg, with_validation=False)
    most = 0
    for step in loader:
        for m in step:
            pos, seg = m["position_ids"], m["segment_ids"]
            for b in range(pos.shape[0]):
                for i in range(1, pos.shape[1]):
                    expected = pos[b, i - 1] + 1 if seg[b, i] == seg[b, i - 1] else 0
                    assert pos[b, i] == expected
            most = max(most, int(seg.max()))
    assert most > 0  # short documents: some samples hold several


def test_eod_mask_loss(corpus, tmp_path, tokenizer):
    cfg = make_config(
        corpus, tmp_path, eod_mask_loss=True, phases=[{"name": "p", "steps": 2, "blend": {"snippets": 1}}]
    )
    _, loader, _ = build_data(cfg, with_validation=False)
    n_eod = 0
    for step in loader:
        for m in step:
            eod = m["tokens"] == tokenizer.eod
            n_eod += int(eod.sum())
            assert (m["loss_mask"][eod] == 0).all() and (m["loss_mask"][~eod] == 1).all()
    assert n_eod > 0
