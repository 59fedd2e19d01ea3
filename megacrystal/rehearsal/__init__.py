"""`megacrystal rehearse`: a launch of N GPU ranks played on this CPU, checked before a cluster is booked.

Each distinct rank position runs `megacrystal train`'s own code on the meta device in a fake world of
N ranks (positions.py, play.py); the record (record.py) holds per rank the peak device memory by
kind, the FLOPs and collective bytes per step, and the findings (findings.py). See
docs/parallelism.md ("Before you book the cluster") and docs/rehearsal.md (the JSON schema).
"""

from __future__ import annotations


def rehearse(*args, **kwargs):
    from .run import rehearse as _rehearse

    return _rehearse(*args, **kwargs)


__all__ = ["rehearse"]
