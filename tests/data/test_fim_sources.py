"""FIM as a property of a source in a phase, and replays of an earlier phase's range (FIM included)."""

import math

import numpy as np
import pytest

from megacrystal.config import ConfigError, validate_config
from megacrystal.data import inspect as inspect_mod
from megacrystal.data.loader import StepLoader
from megacrystal.data.phases import PhasedDataset
from megacrystal.data.plan import make_plan

from . import corpus as corpus_mod
from .conftest import make_config

FIM_NAMES = ("fim_prefix", "fim_middle", "fim_suffix", "fim_pad")


def _fim_ids(tokenizer):
    return np.array([tokenizer.special[n] for n in FIM_NAMES])


def test_a_source_without_fim_never_receives_a_fim_token(corpus, tmp_path, tokenizer):
    phases = [
        {"name": "a", "steps": 6, "blend": {"prose": 0.3, "code": 0.4, "snippets": 0.3}, "fim_rate": 0.9},
        {"name": "b", "steps": 6, "blend": {"snippets": 0.5, "code": 0.5}, "fim_rate": 1.0},
        {"name": "c", "steps": 4, "blend": {"prose": 0.5, "code": {"weight": 0.5, "fim_rate": 0.5}}},
    ]
    cfg = make_config(corpus, tmp_path, phases=phases)
    cfg.data.sources["snippets"].fim = False  # code, but not opted in
    validate_config(cfg)
    plan = make_plan(cfg)
    assert [e.fim_rate for e in plan.phases[0].entries] == [0.0, 0.9, 0.0]
    assert [e.fim_rate for e in plan.phases[2].entries] == [0.0, 0.5]
    ds = PhasedDataset(plan, str(tmp_path / "cache"), tokenizer=tokenizer)
    fim_ids = _fim_ids(tokenizer)
    seen = {"prose": 0, "snippets": 0, "code": 0}
    code_fim = 0
    for g in range(len(ds)):
        tokens, parts, loc, report = ds.raw(g)
        seen[loc.source] += 1
        if loc.source == "code":
            code_fim += bool(np.isin(tokens, fim_ids).any())
            continue
        assert report is None and not np.isin(tokens, fim_ids).any(), (g, loc)
        plain, _, _ = ds.streams[loc.source].sample(loc.source_sample)
        np.testing.assert_array_equal(tokens, plain)
        s = ds[g]
        assert not np.isin(s["labels"], fim_ids).any() and s["loss_mask"].all()
    assert min(seen.values()) > 10 and code_fim > seen["code"] // 2


def test_phase_fim_rate_needs_a_source_that_opts_in(corpus, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.phases\[0\]\.fim_rate: 0\.9 but no source of its blend opts in"):
        make_config(corpus, tmp_path, phases=[{"name": "p", "steps": 2, "blend": {"prose": 1.0}, "fim_rate": 0.9}])


def _short_docs(corpus, tmp_path, tokenizer):
    """Two sources of a few thousand short code documents each."""
    chunks = [t[i : i + 90] for t in corpus["code"] for i in range(0, len(t), 90)]
    chunks = [c for c in chunks if c.strip()]
    return corpus_mod.write_corpus(str(tmp_path / "short"), {"a": chunks[::2], "b": chunks[1::2]}, tokenizer)


def test_per_source_fim_rates_within_binomial_noise(corpus, tmp_path, tokenizer):
    p = _short_docs(corpus, tmp_path, tokenizer)
    phases = [
        {
            "name": "p",
            "steps": 900,
            "blend": {
                "short_a": {"weight": 0.5, "fim_rate": 0.25},
                "short_b": {"weight": 0.5, "fim_rate": 0.75, "fim_spm_rate": 1.0},
            },
        }
    ]
    sources = {"short_a": {"prefixes": [p["a"]], "kind": "code"}, "short_b": {"prefixes": [p["b"]], "kind": "code"}}
    cfg = make_config(corpus, tmp_path, phases=phases, seq_length=32, sources=sources)
    ds = PhasedDataset(make_plan(cfg), str(tmp_path / "cache"), tokenizer=tokenizer)
    modes = {"short_a": {}, "short_b": {}}
    for g in range(len(ds)):
        _, parts, loc, report = ds.raw(g)
        for part, r in zip(parts, report, strict=False):
            if part.offset == 0 and part.length >= 2:  # one count per document occurrence
                modes[loc.source][part.position] = r.mode
    for name, rate, spm in (("short_a", 0.25, 0.5), ("short_b", 0.75, 1.0)):
        m = list(modes[name].values())
        n, fim = len(m), sum(x != "none" for x in m)
        assert n > 2000, (name, n)
        assert abs(fim - rate * n) < 4 * math.sqrt(n * rate * (1 - rate)), (name, fim, n)
        spms = sum(x == "spm" for x in m)
        assert abs(spms - spm * fim) < 4 * math.sqrt(fim * spm * (1 - spm)) + 1e-9, (name, spms, fim)


REPLAY_PHASES = [
    {"name": "p1", "steps": 6, "blend": {"prose": 0.4, "code": 0.6}, "fim_rate": 0.9},
    {
        "name": "p2",
        "steps": 6,
        "blend": {
            "prose": 0.5,
            "snippets": {"weight": 0.2, "fim_rate": 0.3},
            "code_again": {"weight": 0.3, "replay": {"phase": "p1", "source": "code", "start": 0.25, "end": 0.5}},
        },
    },
]


def _replay_dataset(corpus, tmp_path, tokenizer):
    cfg = make_config(corpus, tmp_path, phases=REPLAY_PHASES)
    return cfg, PhasedDataset(make_plan(cfg), str(tmp_path / "cache"), tokenizer=tokenizer)


def _equal(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in ("tokens", "labels", "loss_mask", "position_ids", "segment_ids"))


def test_replay_equals_the_replayed_samples_token_for_token(corpus, tmp_path, tokenizer):
    cfg, ds = _replay_dataset(corpus, tmp_path, tokenizer)
    p1, p2 = ds.plan.phases
    firsts = [g for g in range(p1.start, p1.end) if ds.locate(g).source == "code"]
    assert [ds.locate(g).entry_sample for g in firsts] == list(range(len(firsts)))
    a, b = int(0.25 * len(firsts)), int(0.5 * len(firsts))
    replays = [g for g in range(p2.start, p2.end) if ds.locate(g).entry.name == "code_again"]
    assert len(replays) > b - a  # more than one pass over the range: it wraps around
    pad = tokenizer.special["fim_pad"]
    with_fim = 0
    for c, g in enumerate(replays):
        original = firsts[a + c % (b - a)]
        assert _equal(ds[g], ds[original]), (g, original)
        t, _, loc, report = ds.raw(g)
        assert loc.source == "code" and int(ds[g]["phase_id"]) == 1
        with_fim += any(r.mode != "none" for r in report) or bool((t == pad).any())
    assert with_fim > len(replays) // 2
    # the replay takes none of the source's fresh samples: code is not read in p2 beyond p1's cursor
    assert ds.cursors[1]["code"] == len(firsts) and "code" not in ds.counts[1]


def test_replay_resumes_inside_the_range(corpus, tmp_path, tokenizer):
    cfg, ds = _replay_dataset(corpus, tmp_path, tokenizer)
    full = [[mb["tokens"].clone() for mb in step] for step in StepLoader(ds, 0, 1, 2, 8)]
    p2_first_step = ds.plan.phases[1].start // 8
    resume_at = p2_first_step + 2
    again = PhasedDataset(make_plan(cfg), str(tmp_path / "cache"), tokenizer=tokenizer)  # a fresh process's view
    loader = StepLoader(again, 0, 1, 2, 8)
    loader.load_state_dict({"step": resume_at, "global_batch_size": 8, "total_samples": len(again)})
    rest = [[mb for mb in step] for step in loader]
    assert len(rest) == len(full) - resume_at
    replayed = 0
    for s, step in enumerate(rest, start=resume_at):
        for m, mb in enumerate(step):
            assert np.array_equal(mb["tokens"], full[s][m])
            replayed += sum(again.locate(int(g)).entry.replay is not None for g in mb["sample_id"])
    assert replayed > 0


def test_inspect_shows_the_replay_row(corpus, tmp_path, tokenizer):
    cfg, ds = _replay_dataset(corpus, tmp_path, tokenizer)
    s = inspect_mod.summarize(cfg)
    p2 = s["phases"][1]
    row = p2["sources"]["code_again"]
    n1 = s["phases"][0]["sources"]["code"]["samples"]
    assert row["replay"] == {"phase": "p1", "start": 0.25, "end": 0.5} and row["source"] == "code"
    assert row["replay_samples"] == int(0.5 * n1) - int(0.25 * n1)
    assert row["tokens"] == row["samples"] * 64
    assert row["epochs_read"] == pytest.approx(row["samples"] / row["replay_samples"])
    assert row["fim_rate"] == 0.9 and row["fim_share"] > 0.6
    assert p2["sources"]["snippets"]["fim_rate"] == 0.3 and p2["sources"]["prose"]["fim_rate"] == 0.0
    assert "replays 0.25..0.5 of p1's code" in inspect_mod.render(s)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"weight": 0.2, "replay": {"phase": "p2", "source": "code"}}, r"replay\.phase: expected an earlier phase"),
        ({"weight": 0.2, "replay": {"phase": "p1", "source": "snippets"}}, r"replay\.source: 'snippets' is not"),
        ({"weight": 0.2, "fim_rate": 0.5, "replay": {"phase": "p1", "source": "code"}}, r"takes the FIM draws"),
        ({"weight": 0.2, "replay": {"phase": "p1", "source": "code", "start": 0.5, "end": 0.5}}, r"0 <= start < end"),
    ],
)
def test_replay_config_errors(corpus, tmp_path, entry, message):
    phases = [dict(REPLAY_PHASES[0]), dict(REPLAY_PHASES[1], blend={"prose": 0.5, "again": entry})]
    with pytest.raises(ConfigError, match=message):
        make_config(corpus, tmp_path, phases=phases)


def test_validation_sets_only_for_sources_a_phase_validates(corpus, tmp_path):
    from megacrystal.data.loader import build_validation

    phases = [dict(p, valid_sources=["prose"]) for p in REPLAY_PHASES]
    cfg = make_config(corpus, tmp_path, phases=phases, valid_fraction=0.2)
    assert set(build_validation(make_plan(cfg), str(tmp_path / "cache"))) == {"prose"}
    phases[1] = dict(REPLAY_PHASES[1])  # a phase without valid_sources validates every source
    cfg = make_config(corpus, tmp_path, phases=phases, valid_fraction=0.2)
    assert set(build_validation(make_plan(cfg), str(tmp_path / "cache"))) == {"prose", "code", "snippets"}


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", r"blend\.code: expected a number, got 'abc'"),
        ({"weight": 1, "fim": 0.5}, r"unknown field 'data\.phases\[0\]\.blend\.code\.fim'"),
        ({"weight": 1, "fim_rate": 1.5}, r"blend\.code\.fim_rate: expected 0\.\.1, got 1\.5"),
    ],
)
def test_blend_entry_errors_name_the_field(corpus, tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config(corpus, tmp_path, phases=[{"name": "p", "steps": 2, "blend": {"code": value}}])
