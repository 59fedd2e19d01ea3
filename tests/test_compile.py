"""`model.compile: true` (each block through torch.compile; inductor on CPU): one tiny model, two steps,
compiled and checkpointed (model.recompute=full), equal to the eager run within 20 times the fp32
noise floor measured here (the eager fp32 run against fp64, tests/parallel_cases.py)."""

import os

import pytest

from megacrystal.code_version import code_version
from megacrystal.model.compile import CACHE_ENV, CompiledForward, use_own_inductor_cache, why_not
from tests.parallel_cases import NOISE_FACTOR, data, differences, make_cfg, noise_floor, train

TINY = ["model.num_layers=1", "train.precision=fp32"]


def test_compiled_blocks_train_like_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # compiled here, whatever other runs cached
    monkeypatch.delenv(CACHE_ENV, raising=False)
    reason = why_not()
    if reason is not None:
        pytest.skip(f"torch.compile cannot run here: {reason}")
    batches = data(steps=2)
    refs = {tuple(TINY): train(TINY, batches)}
    # with full recomputation: the checkpointed block's recompute replays the same compiled graph
    got = train(TINY + ["model.compile=true", "model.recompute=full"], batches)
    assert CompiledForward.broken is None  # it compiled: no fallback to eager
    floor = noise_floor(tuple(TINY), batches, refs)
    worst = max(differences(got, refs[tuple(TINY)], make_cfg(TINY).model))
    assert worst <= NOISE_FACTOR * floor, f"compiled vs eager {worst:.2e}, bound {NOISE_FACTOR * floor:.2e}"


def test_compiled_graphs_are_cached_per_package_version_unless_the_user_says(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    ours = use_own_inductor_cache()
    assert ours == os.environ[CACHE_ENV] and ours.startswith(str(tmp_path / "megacrystal" / "inductor"))
    assert ours.endswith(code_version())
    monkeypatch.setenv(CACHE_ENV, default_cache_dir())  # inductor writes its default there on first use
    assert use_own_inductor_cache() == ours
    mine = str(tmp_path / "mine")
    monkeypatch.setenv(CACHE_ENV, mine)  # a user's choice stays
    assert use_own_inductor_cache() == mine
