"""Phase schedule: lengths, continuation of a source across phases, realised weights, plan errors."""

import numpy as np
import pytest

from megacrystal.config import ConfigError
from megacrystal.data.phases import PhasedDataset
from megacrystal.data.plan import make_plan, split_documents

from .conftest import make_config, write_random


def test_phase_lengths_in_steps_and_tokens(corpus, tmp_path):
    cfg = make_config(
        corpus,
        tmp_path,
        phases=[
            {"name": "a", "steps": 3, "blend": {"prose": 1}},
            {"name": "b", "tokens": 64 * 8 * 4 + 1, "blend": {"code": 1}},
        ],
    )  # a bit over 4 steps -> 5
    plan = make_plan(cfg)
    assert [(p.start, p.num_samples, p.steps) for p in plan.phases] == [(0, 24, 3), (24, 40, 5)]
    assert plan.phase_of_step(2).name == "a" and plan.phase_of_step(3).name == "b"


def test_source_continues_its_stream_across_phases(corpus, tmp_path, tokenizer):
    cfg = make_config(corpus, tmp_path)
    plan = make_plan(cfg)
    ds = PhasedDataset(plan, str(tmp_path / "cache"), tokenizer=tokenizer)
    seen = {"prose": [], "code": []}
    for g in range(len(ds)):
        loc = ds.locate(g)
        assert plan.phases[loc.phase].start <= g < plan.phases[loc.phase].end
        seen[loc.source].append(loc.source_sample)
    # each source's samples over both phases are 0, 1, 2, ... : phase 2 picks up where phase 1 stopped
    for s, ks in seen.items():
        assert ks == list(range(len(ks))), s
    first_phase_prose = sum(1 for g in range(plan.phases[0].end) if ds.locate(g).source == "prose")
    assert ds.cursors[1]["prose"] == first_phase_prose > 0


def test_realised_weights_within_one_sample(corpus, tmp_path, tokenizer):
    cfg = make_config(corpus, tmp_path)
    plan = make_plan(cfg)
    ds = PhasedDataset(plan, None, tokenizer=tokenizer)
    for p, (src, _) in zip(plan.phases, ds.phase_arrays, strict=True):
        counts = np.bincount(src, minlength=len(p.sources))
        assert np.all(np.abs(counts - p.weights * p.num_samples) < 1.0)


def test_too_many_epochs_is_a_config_error(corpus, tmp_path):
    cfg = make_config(corpus, tmp_path, max_epochs=2, phases=[{"name": "long", "steps": 400, "blend": {"prose": 1}}])
    with pytest.raises(ConfigError, match=r"data\.sources\.prose: .* would be read \d+ times .*data\.max_epochs=2"):
        make_plan(cfg)


def test_empty_source(corpus, tmp_path):
    empty = str(tmp_path / "empty")
    write_random(empty, 0, 1, 0)
    phases = [{"name": "p", "steps": 2, "blend": {"prose": 0.5}}]
    cfg = make_config(corpus, tmp_path, phases=phases)
    cfg.data.sources["void"] = type(cfg.data.sources["prose"])(prefixes=[empty])
    cfg.data.phases[0].blend["void"] = 0.5
    with pytest.raises(
        ConfigError, match=r"data\.phases\[0\] \(p\)\.blend\.void: weight 0\.5 but source 'void' has no"
    ):
        make_plan(cfg)
    cfg.data.sources["void"].optional = True
    plan = make_plan(cfg)
    assert plan.phases[0].sources == ["prose"] and plan.sources["void"].empty


def test_missing_file_names_the_field(corpus, tmp_path):
    cfg = make_config(corpus, tmp_path)
    cfg.data.sources["code"].prefixes.append(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"data\.sources\.code\.prefixes\[2\]: .*nope\.idx: index file not found"):
        make_plan(cfg)


def test_split_is_document_level_deterministic_and_nested():
    tr, va = split_documents(1000, 0.05)
    tr2, va2 = split_documents(1000, 0.05)
    assert len(va) == 50 and len(tr) == 950 and not set(tr) & set(va)
    np.testing.assert_array_equal(va, va2)
    _, va_more = split_documents(1000, 0.1)
    assert set(va) <= set(va_more)
    assert len(split_documents(5, 0.0)[1]) == 0


def test_file_weights_inside_a_source(corpus, tmp_path):
    cfg = make_config(corpus, tmp_path, phases=[{"name": "p", "steps": 20, "blend": {"code": 1}}])
    cfg.data.sources["code"].weights = [3.0, 1.0]
    plan = make_plan(cfg)
    ds = PhasedDataset(plan, None)
    stream = ds.streams["code"]
    files = np.array([stream.locate(k)[0] for k in range(len(stream))])
    share = (files == 0).mean()
    assert abs(share - 0.75) < 2 / len(stream)


def test_fim_needs_a_tokenizer_with_fim_tokens(corpus, tmp_path):
    cfg = make_config(corpus, tmp_path, tokenizer_model=None)
    with pytest.raises(
        ConfigError, match=r"data\.tokenizer_model: not set, but data\.phases\[1\] \(code\) has fim_rate"
    ):
        make_plan(cfg)
