"""The rehearsal's result as one JSON-able record: a stable, documented schema (docs/rehearsal.md).

Schema `megacrystal-rehearsal/1`; fields are only ever added. Bytes are bytes, FLOPs are FLOPs (a
multiply-add is 2), per rank and per optimizer step of the rehearsed (capped) micro-batch count.
"""

from __future__ import annotations

from collections import defaultdict

from .overlaps import overlaps

SCHEMA = "megacrystal-rehearsal/1"

# The substitutions a rehearsal makes, each at one named place (docs/parallelism.md lists them too).
SEAMS = [
    "process group: torch's fake backend for the meta device only (meta:fake), started with a FakeStore",
    "train.device=meta: parameters, activations and every per-step tensor are meta tensors (shapes, no values)",
    "host groups: new_group(backend='gloo') becomes a cpu:fake group (rehearsal/comms.py)",
    "host reads: parallel.host.to_host returns zeros (valid batch, no stop, finite, no clipping) and counts reads",
    "a host tensor in a device-group collective is reported and skipped; a read outside to_host gets 0",
    "object collectives on fake groups return this rank's object for every member",
    "torch.distributed.checkpoint.save plans (local and global plan, bytes) and writes nothing",
    "a copy of a meta tensor to the host (checkpoint staging) copies nothing",
    "attention on meta: a flash-attention-shaped op (same outputs and saved tensors), FLOPs by formula",
    "fused kernels: the Triton wrappers allocate and save as on the GPU, nothing is launched (torch twins without Triton)",
]


def _aggregate(recs: list[dict]) -> list[dict]:
    agg: dict[tuple, dict] = {}
    for r in recs:
        k = (r["op"], r["group_name"], r["group_size"], r.get("dtype"), r.get("bytes", 0), r.get("reduce"))
        a = agg.get(k)
        if a is None:
            a = agg[k] = dict(
                op=r["op"],
                group=r["group_name"],
                group_size=r["group_size"],
                dtype=r.get("dtype"),
                bytes=r.get("bytes", 0),
                reduce=r.get("reduce"),
                count=0,
            )
        a["count"] += 1
    return sorted(agg.values(), key=lambda a: (-a["bytes"] * a["count"], a["op"]))


def _p2p(recs: list[dict], by_group: bool = True) -> dict:
    """Totals of the transfers, and the same per group kind (`by_group`: pp for pipeline transfers, cp for
    the ring's K/V blocks)."""
    out = dict(sends=0, recvs=0, send_bytes=0, recv_bytes=0)
    for r in recs:
        k = "send" if r["kind"] == "send" else "recv"
        out[k + "s"] += 1
        out[k + "_bytes"] += r["bytes"]
    if by_group:
        names = sorted({r.get("group_name", "group") for r in recs})
        out["by_group"] = {n: _p2p([r for r in recs if r.get("group_name", "group") == n], False) for n in names}
    return out


def section(play: dict, name: str) -> dict:
    flops = play["flops"].get(name, {})
    return dict(
        flops={k: int(flops.get(k, 0)) for k in ("matmul", "attention", "other")},
        other_bytes=int(play["other_bytes"].get(name, 0)),
        ops=int(play.get("ops", {}).get(name, 0)),
        collectives=_aggregate([r for r in play["collectives"] if r["section"] == name]),
        p2p=_p2p([r for r in play["p2p"] if r["section"] == name]),
        host_reads=[w for w, _ in play["host_reads"].get(name, [])],
        peak_bytes=play["memory"]["sections"].get(name, {}).get("peak_bytes", 0),
    )


def rank_record(play: dict, hw=None, precision: str = "bf16") -> dict:
    steps = [dict(step=i, **section(play, f"step {i}")) for i in range(1, play["steps"] + 1)]
    works = [
        dict(
            op=r["op"],
            group=r["group_name"],
            section=r["section"],
            issued_at=r["frame"],
            issue_order=r["order"],
            waited_at=r.get("waited_at"),
            wait_order=r.get("wait_order"),
        )
        for r in play["collectives"]
        if r.get("async_op")
    ]
    by_section: dict[str, int] = defaultdict(int)
    for c in play["checkpoint"]:
        by_section["bytes"] += c["bytes"]
        by_section["items"] += c["items"]
    return dict(
        rank=play["rank"],
        coords=play["coords"],
        seconds=play["seconds"],
        section_seconds=play["section_seconds"],
        memory=play["memory"],
        state=play["engine"],
        steps=steps,
        setup=section(play, "setup"),
        eval=section(play, "eval"),
        checkpoint=dict(section(play, "checkpoint"), planned=dict(by_section)),
        async_work=works,
        overlaps=overlaps(play, hw, precision),
    )
