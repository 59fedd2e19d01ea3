"""Where each collective of a step is issued and waited on, and what compute lies between.

Every collective and transfer a played rank issues in its optimizer steps (wherever it is waited: a
ZeRO parameter all-gather issued by one step's optimizer is waited in the next step's forward, or by
the checkpoint save at the end of a phase, which the rehearsal's one-step phases put after every
step but the last phase's) is placed by two cursors: the matmul and attention FLOPs the rank had dispatched when it
issued the call and when it waited on it. On a GPU the compute dispatched between the two runs while
the transfer is in flight, so it is what the transfer can hide behind. A blocking call (no work
handle) is waited where it is issued: nothing between.

The rows group calls by (kind, op, group, issue site, wait site). Kinds: `param_gather`,
`grad_reduce`, `p2p` (the engine's overlapped handles, parallel/collectives.py `issue`), `ring` (the
cp ring's transfers), `async` (another asynchronous call), `blocking`. With a hardware entry each
row also carries estimates: the transfer's time alone on its link (planner/comm.py's alpha-beta on
the group's placement), the compute between at the entry's efficiencies, and the part of the
transfer that compute covers, min(1, compute / transfer) per call. Calls that share a link or the
same compute are not discounted against each other here; `megacrystal plan --explain` simulates the
step with them (docs/planner.md).
"""

from __future__ import annotations

import statistics

from ..planner import comm

WRAPPERS = ("megacrystal/parallel/collectives.py",)  # frames that only pass a call through


def site(chain: str | None) -> str:
    """The first frame of a `where()` chain outside the collective wrappers, and its first caller in
    another file (the chain's frames inside one file are one step of the call)."""
    if not chain:
        return "(not waited)"
    frames = [f for f in chain.split(" <- ") if not f.startswith(WRAPPERS)]
    if not frames:
        return chain.split(" <- ")[0]
    first = frames[0]
    other = [f for f in frames[1:] if f.split(":")[0] != first.split(":")[0]]
    return " <- ".join(f.removeprefix("megacrystal/") for f in [first] + other[:1])


def _kind(rec: dict, p2p: bool) -> str:
    if rec.get("handle"):
        return rec["handle"]
    if p2p:
        return "ring" if rec.get("group_name") == "cp" else "p2p"
    return "async" if rec.get("async_op") else "blocking"


def _op(rec: dict, p2p: bool) -> str:
    if p2p:
        return rec["kind"]  # send | recv
    return rec["op"].replace("_into_tensor", "").replace("_single", "").replace("_tensor", "")


def _transfer_s(rec: dict, op: str, play: dict, hw) -> float:
    if op in ("send", "recv", "isend", "irecv"):
        peer = rec.get("peer", -1)
        intra = peer < 0 or comm.same_node(play["rank"], peer, hw.gpus_per_node)
        return comm.p2p(rec["bytes"], intra, hw)
    ranks = play["groups"].get(rec["group"], {}).get("ranks") or [play["rank"]]
    span = comm.span_of(list(ranks), hw.gpus_per_node)
    kind = {"all_reduce": "all_reduce", "all_gather": "all_gather", "reduce_scatter": "reduce_scatter"}.get(op)
    return comm.collective(kind, rec["bytes"], span, hw) if kind and span.size > 1 else 0.0


def _compute_s(between: list[int], hw, precision: str) -> float:
    peak = hw.peak_flops(precision)
    attn = hw.attn_eff.get("flash") or next(iter(hw.attn_eff.values()), hw.gemm_eff)
    return between[0] / (peak * hw.gemm_eff) + between[1] / (peak * attn)


def overlaps(play: dict, hw=None, precision: str = "bf16") -> list[dict]:
    """Rows (module doc) for the calls of `play` (a played rank's result) issued in its steps."""
    rows: dict[tuple, dict] = {}
    calls = [(r, False) for r in play["collectives"]] + [(r, True) for r in play["p2p"]]
    for rec, p2p in calls:
        if not str(rec.get("section")).startswith("step ") or rec.get("skipped") or "cursor" not in rec:
            continue
        if not p2p and (rec.get("bytes", 0) == 0 or rec["op"] == "barrier"):
            continue  # object collectives and barriers carry no tensor
        kind, op = _kind(rec, p2p), _op(rec, p2p)
        waited = rec.get("waited_at") if (p2p or rec.get("async_op")) else rec["frame"]
        wait_cursor = rec.get("wait_cursor") if waited is not rec["frame"] else rec["cursor"]
        key = (kind, op, rec.get("group_name"), site(rec["frame"]), site(waited))
        row = rows.setdefault(
            key,
            dict(
                kind=kind,
                op=op,
                group=rec.get("group_name"),
                issued_at=key[3],
                waited_at=key[4],
                calls=0,
                bytes=0,
                between=[],
                transfer_s=[],
            ),
        )
        row["calls"] += 1
        row["bytes"] += rec["bytes"]
        between = [w - c for w, c in zip(wait_cursor, rec["cursor"], strict=True)] if wait_cursor else None
        row["between"].append(between)
        if hw is not None:
            row["transfer_s"].append(_transfer_s(rec, op, play, hw))
    out = []
    for row in rows.values():
        waited = [b for b in row.pop("between") if b is not None]
        row["never_waited"] = row["calls"] - len(waited)
        tf = sum(b[0] + b[1] for b in waited) / len(waited) if waited else 0.0
        row["tflop_between"] = round(tf / 1e12, 6)  # mean per call
        row["tflop_between_min"] = round(min((b[0] + b[1] for b in waited), default=0) / 1e12, 6)
        secs = row.pop("transfer_s")
        if hw is not None:
            comp = [_compute_s(b, hw, precision) for b in waited]
            row["est_transfer_ms"] = round(1e3 * statistics.fmean(secs), 4) if secs else 0.0
            row["est_compute_between_ms"] = round(1e3 * statistics.fmean(comp), 4) if comp else 0.0
            hid = sum(min(t, c) for t, c in zip(secs, comp, strict=False))
            row["est_hidden"] = round(hid / sum(secs), 3) if sum(secs) > 0 else None
        out.append(row)
    return sorted(out, key=lambda r: (-r["bytes"], r["kind"]))


def text(rows: list[dict], rank: int, gpu: str, limit: int = 14) -> list[str]:
    """The rows as printed under the rank table (largest traffic first)."""
    if not rows:
        return []
    lines = [
        f"collectives of rank {rank}'s steps: where issued, where waited, compute between "
        f"(estimates on {gpu} per call, alone on its link)",
        f"  {'kind':<12} {'op':<14} {'group':<6} {'calls':>5} {'MiB':>9} {'TFLOP betw':>10} {'xfer ms':>8} "
        f"{'hidden':>6}  issued at -> waited at",
    ]
    for r in rows[:limit]:
        hid = r.get("est_hidden")
        lines.append(
            f"  {r['kind']:<12} {r['op']:<14} {r['group']!s:<6} {r['calls']:>5} {r['bytes'] / 2**20:>9.1f} "
            f"{r['tflop_between']:>10.3f} {r.get('est_transfer_ms', 0.0):>8.3f} "
            f"{'-' if hid is None else f'{hid:.0%}':>6}  {r['issued_at']} -> {r['waited_at']}"
        )
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more rows in the JSON record (ranks[i].overlaps)")
    return lines
