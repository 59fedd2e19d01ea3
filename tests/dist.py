"""Run a function on N real gloo ranks (spawned processes) and collect what each returns.

    results = run_ranks(fn, world_size=4, args=(...))   # fn(rank, world_size, *args) at module level

Rendezvous goes through a file store in a fresh temporary directory (no port races). A rank that
raises makes the call raise with that rank's traceback; a rank that hangs is killed after `timeout`
seconds and the call fails -- never a retry.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
import tempfile
import traceback
from datetime import timedelta
from pathlib import Path


def _child(fn, rank: int, world_size: int, args: tuple, tmp: str, env: dict) -> None:
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
    )
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    out = Path(tmp) / f"rank{rank}.pkl"
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
        )
        result = fn(rank, world_size, *args)
        payload = ("ok", result)
    except BaseException:
        payload = ("error", traceback.format_exc())
    out.write_bytes(pickle.dumps(payload))
    try:
        if dist.is_initialized():
            if payload[0] == "ok":
                dist.barrier()
            try:
                from megacrystal.parallel import state

                state.destroy()
            except ImportError:
                pass
            if dist.is_initialized():
                dist.destroy_process_group()
    finally:
        # Leave without interpreter teardown racing gloo's threads (the known abort at exit).
        os._exit(0)


def run_ranks(fn, world_size: int, args: tuple = (), timeout: float = 300.0, env: dict | None = None) -> list:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mc-dist-") as tmp:
        procs = [
            ctx.Process(target=_child, args=(fn, r, world_size, args, tmp, dict(env or {})), daemon=True)
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        import time

        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results, errors = [], []
        for r in range(world_size):
            f = Path(tmp) / f"rank{r}.pkl"
            if not f.exists():
                errors.append(
                    f"rank {r}: no result (exit code {procs[r].exitcode}"
                    f"{', killed after timeout' if r in hung else ''})"
                )
                results.append(None)
                continue
            status, value = pickle.loads(f.read_bytes())
            if status == "error":
                errors.append(f"rank {r} raised:\n{value}")
                results.append(None)
            else:
                results.append(value)
        if errors:
            raise RuntimeError(f"{len(errors)} of {world_size} ranks failed\n" + "\n".join(errors))
        return results


def torchrun(nproc: int, module: str, *args: str) -> list[str]:
    """The command line of a torchrun launch of `python -m module args` with `nproc` processes here."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        module,
        *args,
    ]
