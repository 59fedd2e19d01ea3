"""Each check of `megacrystal rehearse` fails when it should: a defect put into the real code path of
the step (the product's own function, replaced for the test) or a configuration that cannot fit, and
the finding names the rank, the call and the frame."""

from __future__ import annotations

import torch

from megacrystal.engine.engine import Engine
from megacrystal.parallel import collectives as C
from megacrystal.parallel.p2p import P2P
from megacrystal.rehearsal import rehearse

CRYSTAL = "examples/crystal_7b.yaml"
TINY = ["model.preset=tiny", "data.seq_length=128", "train.micro_batch_size=2", "parallel.sequence_parallel=false"]
HERE = "tests/test_rehearsal_checks.py"


def _fail(workdir, world, overrides, check, gpu="h100"):
    rec = rehearse(CRYSTAL, world, gpu, TINY + overrides, steps=1, jobs=1, workdir=workdir)
    assert rec["verdict"] == "fail"
    found = [f for f in rec["findings"] if f["check"] == check]
    assert found, "\n".join(rec["lines"])
    return rec, found


def test_a_host_tensor_in_a_step_collective_is_found(rehearsal_workdir, monkeypatch):
    loss_part = Engine._loss_part

    def counted_on_the_host(self, step):  # the defect the loop's per-source count had: a CPU tensor, dp group
        C.all_reduce(torch.ones(3, dtype=torch.float64), self.grid.dp)
        return loss_part(self, step)

    monkeypatch.setattr(Engine, "_loss_part", counted_on_the_host)
    rec, found = _fail(rehearsal_workdir, 2, ["parallel.tp=1"], "host_tensor")
    assert {f["rank"] for f in found} == {0, 1}
    assert found[0]["call"].startswith("all_reduce(cpu float64[3]) on a dp group")
    frames = found[0]["frame"].split(" <- ")  # innermost first: the collective helper, the defect, its caller
    assert frames[0].startswith("megacrystal/parallel/collectives.py") and frames[0].endswith(" all_reduce")
    assert frames[1].startswith(HERE) and frames[1].endswith(" counted_on_the_host")
    assert frames[2].startswith("megacrystal/engine/engine.py") and frames[2].endswith(" _norm_and_loss")
    line = next(x for x in rec["lines"] if "host tensor" in x)
    assert line.startswith("rank 0 (and 1 other played rank): host tensor in a collective of a device group")


def test_a_collective_only_some_members_issue_is_found(rehearsal_workdir, monkeypatch):
    norm_and_loss = Engine._norm_and_loss

    def one_more_on_tp_rank_1(self, step):
        if self.grid.tp_rank == 1:
            C.all_reduce(torch.zeros(4, device=self.device), self.grid.tp)
        return norm_and_loss(self, step)

    monkeypatch.setattr(Engine, "_norm_and_loss", one_more_on_tp_rank_1)
    _, found = _fail(rehearsal_workdir, 2, ["parallel.tp=2"], "collective_order")
    f = found[0]
    # the first differing call on each side: rank 1's extra all_reduce against rank 0's next call
    assert f["rank"] == 0 and "rank 1 issues all_reduce(float32[4], SUM)" in f["detail"]
    assert HERE in f["detail"] and "one_more_on_tp_rank_1" in f["detail"]
    assert f["frame"].startswith("megacrystal/")


def test_a_mismatched_pipeline_transfer_is_found(rehearsal_workdir, monkeypatch):
    buffer = P2P._buffer

    def short_on_stage_1(self):
        t = buffer(self)
        if self.grid.pp_rank == 1 and t.dim() == 3:
            t = torch.empty((t.shape[0], t.shape[1] // 2, t.shape[2]), dtype=t.dtype, device=t.device)
        return t

    monkeypatch.setattr(P2P, "_buffer", short_on_stage_1)
    _, found = _fail(rehearsal_workdir, 2, ["parallel.tp=1", "parallel.pp=2"], "p2p")
    f = found[0]
    assert f["rank"] == 0 and f["call"].startswith("send #2 ") and "to rank 1" in f["call"]  # #1: the ring check
    assert "rank 1 receives #2 as " in f["detail"] and "[2, 64, 64]" in f["detail"]
    assert f["frame"].startswith("megacrystal/parallel/p2p.py")


def test_a_layout_that_does_not_fit_is_found(rehearsal_workdir):
    # the 7B recipe on one A100 with a replicated optimizer: 16 bytes of state per parameter alone
    over = ["parallel.tp=1", "parallel.distributed_optimizer=false"]
    rec = rehearse(
        CRYSTAL, 1, "a100", over + ["parallel.sequence_parallel=false"], steps=1, jobs=1, workdir=rehearsal_workdir
    )
    assert rec["verdict"] == "fail"
    (f,) = [f for f in rec["findings"] if f["check"] == "memory"]
    assert f["rank"] == 0 and f["call"].startswith("peak ") and "optimizer" in f["call"]
    assert f["detail"].startswith("a100: ")
    assert rec["ranks"][0]["memory"]["peak_bytes"] > rec["gpu"]["usable_bytes"]
