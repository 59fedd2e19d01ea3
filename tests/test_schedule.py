"""The LR schedule: Crystal's phase 1 decay, re-warmup between phases, constant style."""

import itertools

import pytest

from megacrystal.config import PhaseConfig
from megacrystal.train.lr_schedule import Schedule, phase_lr


def test_crystal_phase1_stops_part_way_down_its_decay():
    p1 = PhaseConfig(name="p1", steps=79721, lr=0.012, min_lr=1.2408e-4, warmup_steps=86, decay_steps=294337)
    assert phase_lr(p1, 0, 79721) == pytest.approx(0.012 / 86)
    assert phase_lr(p1, 85, 79721) == pytest.approx(0.012)
    assert phase_lr(p1, 79720, 79721) == pytest.approx(0.0088, abs=1e-4)  # docs/recipe.md: "LR ≈ 0.0088"


def test_phases_rewarm_and_end_at_min_lr():
    a = PhaseConfig(name="a", steps=10, lr=1.0, min_lr=0.1, warmup_steps=2)
    b = PhaseConfig(name="b", steps=20, lr=0.5, min_lr=0.05, warmup_steps=4, decay_style="cosine")
    s = Schedule([a, b], [10, 20])
    assert s.total_steps == 30 and s.span(9).name == "a" and s.span(10).name == "b"
    assert s.lr(1) == pytest.approx(1.0)
    assert s.lr(9) == pytest.approx(0.1)
    assert s.lr(10) == pytest.approx(0.5 / 4)  # re-warmup
    assert s.lr(13) == pytest.approx(0.5)
    assert s.lr(29) == pytest.approx(0.05)
    lrs = [s.lr(i) for i in range(13, 30)]
    assert all(x >= y for x, y in itertools.pairwise(lrs))


def test_constant_style():
    c = PhaseConfig(name="c", steps=5, lr=0.3, min_lr=0.0, decay_style="constant")
    assert [phase_lr(c, i, 5) for i in range(5)] == [0.3] * 5
