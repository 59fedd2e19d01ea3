"""`model.compile: true` (each block through torch.compile; inductor on CPU): one tiny model, two steps,
compiled and checkpointed (model.recompute=full), equal to the eager run within 20 times the fp32
noise floor measured here (the eager fp32 run against fp64, tests/parallel_cases.py)."""

import pytest

from megacrystal.model.compile import CompiledForward, why_not
from tests.parallel_cases import NOISE_FACTOR, data, differences, make_cfg, noise_floor, train

TINY = ["model.num_layers=1", "train.precision=fp32"]


def test_compiled_blocks_train_like_eager():
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
