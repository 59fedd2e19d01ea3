"""What every parallel benchmark records next to its figures: machine, versions, date."""

from __future__ import annotations

import datetime
import json
import os
import platform
import queue
import time
from pathlib import Path

from megacrystal.atomic_io import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    info = dict(
        host=platform.node(),
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        loadavg_at_record=[round(x, 2) for x in os.getloadavg()],
    )
    try:
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def stamp() -> str:
    """A UTC time for result file names (a new run never overwrites an earlier record)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")


def sleep_cost(chunks, forward_s: float, backward_s: float) -> None:
    """Every transformer block of `chunks` costs a fixed time on top of its real work: an autograd
    function that sleeps `forward_s` in its forward and `backward_s` in its backward. Fixed compute
    measures a schedule on a shared 2-core machine, where real arithmetic of several ranks would slow
    each other down."""
    import time

    import torch

    class Cost(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            time.sleep(forward_s)
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            time.sleep(backward_s)
            return g

    for chunk in chunks:
        for block in chunk.layers.values():
            block.register_forward_hook(lambda mod, inp, out: Cost.apply(out))


def record(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    atomic_write(path, json.dumps(dict(machine=machine(), **payload), indent=1) + "\n")
    return path


def _child(fn, rank, world, args, tmp, q):
    import torch
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        q.put((rank, fn(rank, world, *args)))
    except BaseException as e:
        q.put((rank, RuntimeError(f"rank {rank}: {type(e).__name__}: {e}")))
    finally:
        q.close()
        q.join_thread()  # the result is in the pipe before this process ends
        from megacrystal.parallel import state

        state.destroy()
        os._exit(0)


def spawn(fn, world: int, args: tuple = (), timeout: float = 1200) -> list:
    """fn(rank, world, *args) on `world` gloo processes (fn at module level); returns their results."""
    import multiprocessing as mp
    import tempfile

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        q = ctx.Queue()
        procs = [ctx.Process(target=_child, args=(fn, r, world, args, tmp, q)) for r in range(world)]
        for p in procs:
            p.start()
        out: dict = {}
        deadline = time.monotonic() + timeout
        try:
            while len(out) < world:
                try:
                    rank, value = q.get(timeout=2)
                    out[rank] = value
                    continue
                except queue.Empty:
                    pass
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in out]
                if dead:  # e.g. killed by the OOM killer: the other ranks would wait in a collective
                    raise RuntimeError(f"rank {dead[0]} died (exit code {procs[dead[0]].exitcode}) before its result")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no result from ranks {sorted(set(range(world)) - set(out))} in {timeout} s")
        finally:
            for p in procs:
                p.join(60 if len(out) == world else 0)
                if p.is_alive():
                    p.kill()
    errors = [v for v in out.values() if isinstance(v, BaseException)]
    if errors:
        raise errors[0]
    return [out[r] for r in range(world)]
