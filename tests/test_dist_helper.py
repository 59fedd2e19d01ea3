"""The gloo rank helper itself (tests/dist.py): ranks run and reduce, a failing rank is reported."""

import pytest
import torch
import torch.distributed as dist

from tests.dist import run_ranks


def _allreduce(rank, world):
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return t.item()


def _fails_on_one(rank, world):
    if rank == 1:
        raise ValueError("boom on rank one")
    return rank


def test_all_ranks_run_and_reduce():
    assert run_ranks(_allreduce, 3) == [6.0, 6.0, 6.0]


def test_a_failing_rank_is_reported():
    with pytest.raises(RuntimeError, match="boom on rank one"):
        run_ranks(_fails_on_one, 2, timeout=60)
