"""`megacrystal doctor`: what is installed here, and which kernel / backend / loader each op will use
on this machine and why -- versions, GPU and compute capability, and for every missing piece the
command that adds it. `--json` prints the same as one JSON object.

    megacrystal doctor [--json] [--device cuda|cpu]
    megacrystal doctor --verify      # check the CUDA kernels on this GPU, record the result

`--verify` runs the kernel checks that ship with the package (`kernel_checks.py`) on this GPU and writes
the result to the user's cache directory (`compiled/record.py`), where `optim.impl: auto` and
`model.grad_accum_fusion: auto` look for it. Exit codes: 0 every check passed (recorded), 1 a check
failed (recorded as failed) or the record could not be written, 3 no CUDA GPU here, 4 the CUDA kernels
are not built.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import importlib.util
import json
import platform
import sys

import torch

from .compiled import apex as apex_support
from .compiled import build as cuda_build
from .compiled import cuda_kernels
from .compiled import select as cuda_select
from .compiled.record import record_path, verified, write_record
from .model import flash_backends as fb

DISTS = {  # what `pip` calls it -> the extra or recipe that adds it
    "torch": "pip install torch",
    "triton": "pip install 'megacrystal[triton]'",
    "flash-attn-4": "pip install 'megacrystal[fa4]'",
    "flash-attn": fb.INSTALL["fa2"],
    "nvidia-dali-cuda130": "pip install 'megacrystal[dali]'",
    "transformers": "pip install transformers",
}


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _ops(device: torch.device) -> dict:
    """op -> {uses, why}."""
    from .ops.dispatch import resolve, triton_available

    out = {}
    for name in ("norm", "rotary", "swiglu", "cross_entropy"):
        which, _ = resolve(name, "auto", device.type)
        if which == "triton":
            why = "CUDA device and Triton imports"
        elif device.type != "cuda":
            why = "no CUDA device: the torch reference (Triton kernels run on CUDA)"
        else:
            why = "Triton is not installed" if not triton_available() else "Triton kernel unavailable"
        out[name] = dict(uses=which, why=why)
    flavour, why = fb.pick(device)
    if device.type == "cuda" and flavour is not None:
        out["attention"] = dict(
            uses=f"flash ({flavour})",
            why=why + "; order " + " > ".join(fb.order(torch.cuda.get_device_capability(device))),
        )
    else:
        out["attention"] = dict(uses="sdpa", why=why)
    use, why = cuda_select.auto_reason(device, None)
    out["optimizer step"] = dict(uses="fused CUDA AdamW" if use else "torch foreach AdamW", why=why)
    out["grad-accum fusion (bf16)"] = dict(uses="cuBLASLt GEMM into main_grad" if use else "off", why=why)
    apex_norm = apex_support.status()["pieces"]["fused_norm"] and device.type == "cuda"
    out["norm with model.use_apex_norm"] = dict(
        uses="apex fused norm" if apex_norm else out["norm"]["uses"], why=apex_support.status()["detail"]
    )
    from .compiled import native

    dali = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
    out["data loader"] = dict(
        uses="torch DataLoader" + (" (data.backend: dali available)" if dali else ""),
        why="native index helpers " + ("built" if native.native is not None else "missing: numpy fallbacks"),
    )
    return out


def report(device: torch.device | None = None) -> dict:
    cuda = torch.cuda.is_available()
    device = device or torch.device("cuda" if cuda else "cpu")
    gpus = []
    if cuda:
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            gpus.append(dict(name=torch.cuda.get_device_name(i), capability=f"{cap[0]}.{cap[1]}"))
    lib = cuda_kernels.library(quiet=True)
    cap = cuda_select.capability(device)
    kernels = dict(
        built=lib is not None,
        path=str(lib.path) if lib else None,
        build_id=lib.build_id if lib else None,
        verified=bool(lib and verified(lib.build_id, cap)),
        record=str(record_path(lib.build_id, cap)) if lib and cap else None,
        nvcc=cuda_build.find_nvcc(),
        why=cuda_kernels.why_missing() or None,
    )
    packages = {d: _version(d) for d in DISTS}
    packages["megacrystal"] = _version("megacrystal")
    apex = apex_support.status()
    missing = []
    if lib is None:
        missing.append(dict(piece="CUDA kernels (fused AdamW, grad-accum fusion)", command=cuda_kernels.BUILD_HINT))
    if not apex["nvidia"]:
        missing.append(dict(piece=f"NVIDIA apex ({apex['detail']})", command=apex_support.BUILD_RECIPE))
    for d, cmd in DISTS.items():
        if packages[d] is None and d != "torch":
            missing.append(dict(piece=d, command=cmd))
    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        device=str(device),
        gpus=gpus,
        packages=packages,
        flash_flavours=fb.installed(),
        apex=apex,
        cuda_kernels=kernels,
        ops=_ops(device),
        missing=missing,
    )


def render(r: dict) -> str:
    lines = [f"python {r['python']}  torch {r['torch']} (CUDA {r['torch_cuda'] or 'none: CPU build'})"]
    gpu = ", ".join(f"{g['name']} (sm {g['capability']})" for g in r["gpus"]) or "none"
    lines += [f"device {r['device']}  GPUs: {gpu}", "", "installed:"]
    for d, v in r["packages"].items():
        lines.append(f"  {d:22s} {v or '-'}")
    lines.append(f"  {'flash flavours':22s} {', '.join(r['flash_flavours']) or '-'}")
    lines.append(f"  {'apex':22s} {r['apex']['detail']}")
    k = r["cuda_kernels"]
    state = (
        f"{k['path']} (build {k['build_id']}, verified on this GPU: "
        f"{'yes' if k['verified'] else 'no, see megacrystal doctor --verify'})"
        if k["built"]
        else k["why"]
    )
    lines.append(f"  {'CUDA kernels':22s} {state}")
    lines.append(f"  {'nvcc':22s} {k['nvcc'] or '-'}")
    lines += ["", "each op on this machine:"]
    for op, d in r["ops"].items():
        lines.append(f"  {op:30s} {d['uses']:32s} {d['why']}")
    if r["missing"]:
        lines += ["", "missing (and the command that adds it):"]
        lines += [f"  {m['piece']}: {m['command']}" for m in r["missing"]]
    return "\n".join(lines)


EXIT_FAILED, EXIT_NO_GPU, EXIT_NOT_BUILT = 1, 3, 4


def verify(record_dir=None) -> int:
    """Run the kernel checks on this GPU and record the result; returns the exit code."""
    say = "megacrystal doctor --verify"
    if not torch.cuda.is_available():
        cuda = torch.version.cuda or "none: a CPU build"
        print(f"{say}: no CUDA GPU here (torch {torch.__version__}, CUDA {cuda}); nothing to verify", file=sys.stderr)
        return EXIT_NO_GPU
    lib = cuda_kernels.library(quiet=True)
    if lib is None:
        print(f"{say}: the CUDA kernels are {cuda_kernels.why_missing()}", file=sys.stderr)
        return EXIT_NOT_BUILT
    from .kernel_checks import run_checks

    device = torch.device("cuda")
    cap, gpu = cuda_select.capability(device), torch.cuda.get_device_name(device)
    print(f"checking CUDA kernels build {lib.build_id} ({lib.path}) on {gpu} (sm {cap}):")
    checks = run_checks(lib)
    passed = all(c["passed"] for c in checks)
    versions = {d: _version(d) for d in ("megacrystal", "torch", "triton")}
    versions.update(python=platform.python_version(), torch_cuda=torch.version.cuda)
    rec = dict(build_id=lib.build_id, capability=cap, gpu=gpu, passed=passed, library=str(lib.path))
    rec.update(versions=versions, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), checks=checks)
    try:
        path = write_record(rec, record_dir)
    except OSError as e:
        print(f"{say}: could not write the record ({e})", file=sys.stderr)
        return EXIT_FAILED
    n_bad = sum(not c["passed"] for c in checks)
    verdict = "every check passed" if passed else f"{n_bad} of {len(checks)} checks FAILED"
    print(f"{verdict}; recorded in {path}: `auto` {'uses' if passed else 'does not use'} these kernels on sm {cap}")
    return 0 if passed else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal doctor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the text report")
    ap.add_argument(
        "--device", choices=["cuda", "cpu"], default=None, help="the device to report for (default: cuda if any)"
    )
    ap.add_argument(
        "--verify",
        action="store_true",
        help="check the CUDA kernels on this GPU and record the result (exit 3: no GPU)",
    )
    a = ap.parse_args(argv)
    if a.verify:
        return verify()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("megacrystal doctor: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    r = report(torch.device(a.device) if a.device else None)
    print(json.dumps(r, indent=1) if a.json else render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
