"""Checks across played ranks: the same collectives in every group, matched transfers, memory that fits.

(Per-rank checks, such as a host tensor in a device collective or a host read in the step, are found
while a rank plays: meta_mode.py, comms.py, play_state.py.)
"""

from __future__ import annotations

from .findings import Finding
from .gpus import GPU, GiB


def _call_sig(rec: dict) -> tuple:
    return (rec["op"], rec.get("dtype"), str(rec.get("shape")), rec.get("reduce"))


def _call_text(rec: dict) -> str:
    shape = "".join(str(s) for s in rec.get("shape") or [])
    red = f", {rec['reduce']}" if rec.get("reduce") else ""
    return f"{rec['op']}({rec.get('dtype') or ''}{shape}{red}) #{rec['n']} on {rec['group_name']} group {rec['group']}"


def collective_order(plays: list[dict]) -> list[Finding]:
    """Every played member of a group issues the same collectives in the same order (op, dtype, shape,
    reduce op); the first difference is named on both sides."""
    played = {p["rank"] for p in plays}
    calls: dict[str, dict[int, list]] = {}
    members: dict[str, tuple] = {}
    for p in plays:
        for gid, g in p["groups"].items():
            members[gid] = tuple(g["ranks"])
            calls.setdefault(gid, {}).setdefault(p["rank"], [])
        for rec in p["collectives"]:
            seq = calls.setdefault(rec["group"], {}).setdefault(p["rank"], [])
            seq.append(dict(rec, n=len(seq) + 1))
    out = []
    for gid, by_rank in calls.items():
        ranks = [r for r in members.get(gid, sorted(by_rank)) if r in played and r in by_rank]
        if len(ranks) < 2:
            continue
        ref = ranks[0]
        for r in ranks[1:]:
            f = _first_difference(ref, by_rank[ref], r, by_rank[r])
            if f is not None:
                out.append(f)
    return out


def _first_difference(ra: int, a: list, rb: int, b: list) -> Finding | None:
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x is not None and y is not None and _call_sig(x) == _call_sig(y):
            continue
        if x is None:  # rb issues one more
            return Finding(
                "collective_order", rb, _call_text(y), y["frame"], f"rank {ra} issues no call #{i + 1} on this group"
            )
        other = f"rank {rb} issues " + (f"{_call_text(y)} at {y['frame']}" if y else "nothing more on this group")
        return Finding("collective_order", ra, _call_text(x), x["frame"], other)
    return None


def p2p_matching(plays: list[dict]) -> list[Finding]:
    """Each send from a to b has b's matching receive from a on the same group: the same position in
    their order, shape and dtype (NCCL pairs point-to-point messages between two ranks of a
    communicator in issue order, whatever their tags): pipeline transfers and the cp ring's alike."""
    played = {p["rank"]: p for p in plays}
    sends: dict[tuple, list] = {}
    recvs: dict[tuple, list] = {}
    for p in plays:
        for rec in p["p2p"]:
            if rec["peer"] < 0:
                continue
            if rec["kind"] == "send":
                sends.setdefault((p["rank"], rec["peer"], rec["group"]), []).append(rec)
            else:
                recvs.setdefault((rec["peer"], p["rank"], rec["group"]), []).append(rec)
    out = []
    for pair in sorted(set(sends) | set(recvs)):
        a, b, _group = pair
        if a not in played or b not in played:
            continue
        s, r = sends.get(pair, []), recvs.get(pair, [])
        for i in range(max(len(s), len(r))):
            x = s[i] if i < len(s) else None
            y = r[i] if i < len(r) else None
            if x and y and (x["shape"], x["dtype"]) == (y["shape"], y["dtype"]):
                continue
            if x is None:
                out.append(
                    Finding(
                        "p2p",
                        b,
                        f"recv #{i + 1} {y['dtype']}{y['shape']} from rank {a}",
                        y["frame"],
                        f"rank {a} sends only {len(s)} to rank {b}",
                    )
                )
            else:
                got = (
                    f"receives #{i + 1} as {y['dtype']}{y['shape']} at {y['frame']}" if y else "posts no receive for it"
                )
                out.append(
                    Finding(
                        "p2p", a, f"send #{i + 1} {x['dtype']}{x['shape']} to rank {b}", x["frame"], f"rank {b} {got}"
                    )
                )
            break
    return out


def memory_fit(plays: list[dict], gpu: GPU, gpu_key: str) -> list[Finding]:
    out = []
    for p in plays:
        m = p["memory"]
        if m["peak_bytes"] > gpu.usable:
            parts = ", ".join(f"{k} {v / GiB:.1f}" for k, v in m["peak_breakdown"].items() if v)
            out.append(
                Finding(
                    "memory",
                    p["rank"],
                    f"peak {m['peak_bytes'] / GiB:.1f} GiB in {m['peak_section']} ({parts} GiB)",
                    "(device memory)",
                    f"{gpu_key}: {gpu.usable / GiB:.1f} GiB usable of {gpu.capacity / GiB:.1f} GiB",
                )
            )
    return out
