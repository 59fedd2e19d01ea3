"""Start-up work per rank is proportional to its shard: the initial draw of a tensor-parallel piece is
that slice of the serial draw (and draws nothing else), and `train.init_from` a consolidated model or
an HF export reads, on each rank of a tp2·pp2 (or tp2·dp2+ZeRO) layout, only the elements it keeps
(counted by a hook on safetensors' reads), loading exactly the serial model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from megacrystal.config import ModelConfig
from megacrystal.engine.engine import Engine
from megacrystal.hf.convert import export_hf
from megacrystal.model import init_draw
from megacrystal.model.init_draw import splitmix64, splitmix64_reference
from megacrystal.model.mup import full_init, init_parameters
from megacrystal.model.padding import local_true_box
from megacrystal.model.param_spec import param_spec
from megacrystal.model.serialization import save_model
from megacrystal.train.init_from import init_from
from tests.dist import run_ranks
from tests.parallel_cases import make_cfg

CRYSTAL = ["train.precision=fp64", "model.ffn_hidden_size=66"]  # FFN padded: 128 serial, 256 at tp2
LLAMA = ["train.precision=fp64", "model.family=llama", "model.num_kv_heads=2", "model.ffn_hidden_size=128"]  # GQA


def test_the_stream_is_splitmix64_at_any_index():
    key = 0xDEADBEEF12345678
    idx = [0, 1, 2, 12345, 2**31 + 7, 2**40 + 3]
    got = splitmix64(key, torch.tensor(idx, dtype=torch.int64))
    assert [int(z) & (2**64 - 1) for z in got] == [splitmix64_reference(key, i) for i in idx]


@pytest.mark.parametrize(
    "dim, tp, full, true", [(0, 2, (128, 12), (100, 12)), (1, 3, (10, 96), (10, 70)), (0, 4, (64,), (50,))]
)
def test_a_piece_draws_exactly_its_slice_of_the_serial_draw(dim, tp, full, true):
    cfg = ModelConfig(preset="tiny").resolve()
    name = "layers.0.mlp.up.weight"
    serial = torch.zeros(full)
    serial[tuple(slice(0, n) for n in true)] = full_init(cfg, name, "hidden", true, seed=11)
    for r in range(tp):
        m = nn.Module()
        local = list(full)
        local[dim] //= tp
        m.w = nn.Parameter(torch.full(local, float("nan")))
        spec = param_spec(m.w)
        spec.init, spec.seed_name, spec.full_shape, spec.true_shape = "hidden", name, full, true
        spec.shard_dim, spec.tp_size, spec.tp_rank = dim, tp, r
        before = init_draw.elements_drawn()
        init_parameters(m, cfg, seed=11)
        assert torch.equal(m.w.detach(), serial.chunk(tp, dim)[r])  # padding zero, values bitwise the serial ones
        assert init_draw.elements_drawn() - before == math.prod(local_true_box(m.w)[1])


def test_the_draw_runs_on_the_meta_device():
    cfg = ModelConfig(preset="tiny").resolve()
    m = nn.Module()
    m.w = nn.Parameter(torch.empty(3000, 64, device="meta"))
    param_spec(m.w).init = "embedding"
    init_parameters(m, cfg, seed=0)
    assert m.w.device.type == "meta" and m.w.shape == (3000, 64)


def _drawn_kinds(p) -> bool:
    return param_spec(p).init not in ("ones", "zeros")


def _held(engine, stored: dict | None = None) -> int:
    """Elements this rank keeps: the true part of each piece (with `stored` shapes: the piece's
    overlap with the stored tensor, padding inside the piece included)."""
    n = 0
    for m in engine.chunks:
        for name, p in m.named_parameters():
            start, size = local_true_box(p)
            if stored is None:
                n += math.prod(size) if _drawn_kinds(p) else 0
            else:
                s = stored[param_spec(p).seed_name if param_spec(p).tied_copy else name]
                n += math.prod(max(0, min(a + k, t) - a) for a, k, t in zip(start, p.shape, s, strict=True))
    return n


class _Counting:
    """Wraps `safetensors.safe_open`: counts the elements of every tensor it returns."""

    elements = 0

    def __init__(self, real, *args, **kwargs):
        self.f = real(*args, **kwargs)

    def keys(self):
        return self.f.keys()

    def get_tensor(self, k):
        t = self.f.get_tensor(k)
        _Counting.elements += t.numel()
        return t

    def get_slice(self, k):
        sl = self.f.get_slice(k)
        outer = self

        class Slice:
            def get_shape(self):
                return sl.get_shape()

            def __getitem__(self, idx):
                t = sl[idx]
                type(outer).elements += t.numel()
                return t

        return Slice()


def _ranks(rank, world, jobs):
    import safetensors

    real = safetensors.safe_open
    out = []
    for overrides, path in jobs:
        cfg = make_cfg(overrides)
        if path is None:  # the initial draw
            before = init_draw.elements_drawn()
            e = Engine(cfg, torch.device("cpu"))
            out.append((init_draw.elements_drawn() - before, _held(e), e.full_model_state()))
            continue
        e = Engine(cfg, torch.device("cpu"), init_weights=False)
        safetensors.safe_open = lambda *a, **k: _Counting(real, *a, **k)
        _Counting.elements = 0
        try:
            before = init_draw.elements_drawn()
            init_from(e, path, with_optimizer=False)
            drawn = init_draw.elements_drawn() - before
        finally:
            safetensors.safe_open = real
        stored = _stored_shapes(path, e)
        out.append((_Counting.elements, _held(e, stored), drawn, e.full_model_state()))
    return out


def _stored_shapes(path, engine) -> dict:
    from megacrystal.hf.sliced import hf_source
    from megacrystal.model.serialization import open_model

    src = open_model(path)[1] if (path / "model_config.json").is_file() else hf_source(path)[1]
    return src.shapes()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    out = {}
    for fam, overrides, fmt in (("crystal", CRYSTAL, "crystalcoder"), ("llama", LLAMA, "llama")):
        e = Engine(make_cfg(overrides + ["train.seed=5"]), torch.device("cpu"))  # not the runs' seed
        sd = e.full_model_state()
        save_model(root / fam / "model", e.cfg.model, sd)
        export_hf(root / fam / "model", fmt, root / fam / "hf")
        out[fam] = (root / fam, sd)
    return out


def _serial(overrides, path=None):
    e = Engine(
        make_cfg([o for o in overrides if not o.startswith("parallel.")]),
        torch.device("cpu"),
        init_weights=path is None,
    )
    if path is not None:
        init_from(e, path, with_optimizer=False)
    return e.full_model_state()


def test_each_rank_draws_and_reads_only_its_share_and_loads_the_serial_model(models):
    tp2pp2 = ["parallel.tp=2", "parallel.pp=2"]
    zero = ["parallel.tp=2", "parallel.distributed_optimizer=true"]
    crystal, llama = models["crystal"][0], models["llama"][0]
    jobs = [
        (CRYSTAL + tp2pp2, None),
        (CRYSTAL + tp2pp2, crystal / "model"),
        (CRYSTAL + tp2pp2, crystal / "hf"),
        (LLAMA + tp2pp2, llama / "hf"),
        (LLAMA + zero, llama / "hf"),
    ]
    res = run_ranks(_ranks, 4, (jobs,), timeout=600)
    serial_draw = _serial(CRYSTAL)
    drawn, held, state = zip(*[r[0] for r in res], strict=True)
    assert drawn == held and state[0].keys() == serial_draw.keys()
    assert all(torch.equal(state[0][k], serial_draw[k]) for k in serial_draw)
    total = sum(v.numel() for v in serial_draw.values())
    assert max(drawn) < 0.4 * total  # a quarter of the matrices, plus replicated norms/biases
    for i, (overrides, path) in enumerate(jobs[1:], start=1):
        read, want, drew, state = zip(*[r[i] for r in res], strict=True)
        assert read == want, (path, read, want)  # exactly the elements each rank keeps
        assert drew == (0, 0, 0, 0)  # loading weights draws nothing
        fam = "crystal" if "crystal" in str(path) else "llama"
        sd = models[fam][1]
        file_total = sum(v.numel() for v in sd.values())
        assert max(read) < 0.6 * file_total, (path, read, file_total)
        assert all(torch.equal(state[0][k], sd[k]) for k in sd), path
        ref = _serial(overrides, path)
        assert all(torch.equal(state[0][k], ref[k]) for k in ref), path


def test_a_pytorch_bin_hf_directory_is_read_memory_mapped(models, tmp_path):
    import shutil

    from safetensors.torch import load_file

    src, sd = models["llama"]
    hf = tmp_path / "hf"
    shutil.copytree(src / "hf", hf)
    torch.save(load_file(hf / "model.safetensors"), hf / "pytorch_model.bin")
    (hf / "model.safetensors").unlink()
    assert all(torch.equal(v, sd[k]) for k, v in _serial(LLAMA, hf).items())
