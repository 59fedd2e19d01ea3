"""lm-evaluation-harness on a megacrystal checkpoint or an HF export, in one call.

    megacrystal eval --harness TASKS --checkpoint C            (the command, evaluation/command.py)
    python -m megacrystal.evaluation.harness --checkpoint C --tasks hellaswag,arc_easy [--limit N]

C may be a run directory, a checkpoint directory or a model directory (exported to the HF layout first,
into a temporary directory beside the results, removed afterwards), or an HF directory (used as is;
crystalcoder exports load through their own modeling code, `trust_remote_code`). The export is in the
crystalcoder layout when the model fits it, else the LLaMA layout. lm-eval is an optional extra
(`pip install 'megacrystal[eval]'`). Results: lm-eval's results JSON plus a "megacrystal" block
(checkpoint, layout, versions), written atomically to `C/eval/lm_eval-<UTC time>.json` (or `output`),
never over an earlier file.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

from ..atomic_io import write_new

INSTALL_HINT = "pip install 'megacrystal[eval]' (or: pip install lm-eval)"


class HarnessError(ValueError):
    """A request lm-eval cannot run; the message is one line that names the file or option."""


def _is_hf_dir(path: Path) -> bool:
    if not (path / "config.json").is_file():
        return False
    return any((path / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))


def _export(checkpoint: str, into: Path) -> tuple[Path, str]:
    """Export a megacrystal checkpoint: crystalcoder layout when the model fits it, else llama."""
    from ..hf.convert import HFError, export_hf

    reasons = []
    for fmt in ("crystalcoder", "llama"):
        try:
            return export_hf(checkpoint, fmt, into / fmt), fmt
        except HFError as e:
            if "--format" not in str(e):  # not a layout mismatch: the checkpoint itself is bad
                raise HarnessError(str(e)) from None
            reasons.append(str(e))
    raise HarnessError(f"{checkpoint}: fits no HF layout lm-eval can load ({'; '.join(reasons)})")


def results_path(checkpoint: str, output: str | None) -> Path:
    """Where the results go; refuses a path that exists (results are never overwritten)."""
    if output is not None:
        path = Path(output)
        if path.exists():
            raise HarnessError(f"--output {path}: exists; results are never overwritten (choose a new name)")
        return path
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path(checkpoint) / "eval" / f"lm_eval-{stamp}.json"


def _write_new(path: Path, text: str) -> None:
    """Atomic write that fails rather than replace an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not write_new(path, text):
        raise FileExistsError(errno.EEXIST, "File exists", str(path))


def run_harness(
    checkpoint: str,
    tasks: list[str],
    output: str | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 1,
    device: str = "cpu",
    num_fewshot: int | None = None,
    include_path: str | None = None,
) -> dict:
    """Run lm-eval `tasks` on the model at `checkpoint`; -> lm-eval's results dict (+ "megacrystal")."""
    if importlib.util.find_spec("lm_eval") is None:
        raise HarnessError(f"lm-evaluation-harness is not installed; {INSTALL_HINT}")
    tasks = [t.strip() for t in tasks if t and t.strip()]
    if not tasks:
        raise HarnessError("--tasks: no task names given (e.g. --tasks hellaswag,arc_easy)")
    src = Path(checkpoint)
    if not src.is_dir():
        raise HarnessError(f"--checkpoint {src}: not a directory")
    if include_path is not None and not Path(include_path).is_dir():
        raise HarnessError(f"--include-path {include_path}: not a directory")
    if limit is not None and (limit <= 0 or (limit >= 1 and limit != int(limit))):
        raise HarnessError(f"--limit: expected a number of examples >= 1 or a fraction in (0, 1), got {limit}")
    if limit is not None and limit >= 1:
        limit = int(limit)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    out_path = results_path(checkpoint, output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".hf-export-", dir=out_path.parent) as tmp:
        if _is_hf_dir(src):
            hf_dir, layout = src, json.loads((src / "config.json").read_text()).get("model_type", "?")
        else:
            hf_dir, layout = _export(checkpoint, Path(tmp))
        results = _evaluate(hf_dir, tasks, limit, batch_size, device, num_fewshot, include_path)
    results["megacrystal"] = {
        "checkpoint": str(src.resolve()),
        "hf_layout": layout,
        "exported": hf_dir != src,
        "tasks": tasks,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "device": device,
        "results_file": str(out_path),
        "versions": _versions(),
    }
    from lm_eval.utils import handle_non_serializable

    _write_new(out_path, json.dumps(results, indent=2, default=handle_non_serializable) + "\n")
    return results


def _evaluate(hf_dir: Path, tasks, limit, batch_size, device, num_fewshot, include_path) -> dict:
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = _task_manager(TaskManager, tasks, include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" or in --include-path {include_path}" if include_path else ""
        raise HarnessError(f"--tasks: unknown lm-eval task {unknown[0]!r} (not in lm-eval's task list{where})")
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    try:
        lm = HFLM(pretrained=str(hf_dir), trust_remote_code=True, batch_size=batch_size, device=device, dtype=dtype)
    except (ImportError, OSError) as e:  # a missing optional package (protobuf for SentencePiece), unreadable files
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise HarnessError(f"{hf_dir}: lm-eval cannot load the model or its tokenizer: {first}") from None
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager, log_samples=False
    )
    if results is None:  # only non-zero ranks of a distributed run get None
        raise HarnessError("lm-eval returned no results on this rank")
    return dict(results)


def _task_manager(TaskManager, tasks: list[str], include_path: str | None):
    """lm-eval's task index; when every task is in `include_path`, only that folder is indexed (lm-eval's
    ~15k built-in task files take a minute to scan)."""
    if include_path is not None:
        try:
            local = TaskManager(include_path=include_path, include_defaults=False)
        except TypeError:  # lm-eval before include_defaults
            local = None
        if local is not None and all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=include_path)


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("megacrystal", "lm_eval", "transformers", "torch"):
        try:
            out[pkg] = md.version(pkg.replace("_", "-"))
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def format_table(results: dict) -> str:
    """A console table: task, metric, value, ± stderr (one row per metric and filter)."""
    rows = [("task", "metric", "value", "stderr")]
    for task, metrics in sorted(results.get("results", {}).items()):
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, int | float):  # alias, sample_len
                continue
            metric, _, filt = key.partition(",")
            err = metrics.get(f"{metric}_stderr,{filt}" if filt else f"{metric}_stderr")
            name = metric if filt in ("", "none") else f"{metric} ({filt})"
            rows.append((task, name, f"{value:.4f}", f"{err:.4f}" if isinstance(err, int | float) else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m megacrystal.evaluation.harness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="run, checkpoint, model or HF directory")
    ap.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    ap.add_argument("--output", help="results JSON path (default: CHECKPOINT/eval/lm_eval-<time>.json)")
    ap.add_argument("--limit", type=float, help="examples per task (or a fraction of each task)")
    ap.add_argument("--batch-size", default="1", help="an integer or 'auto'")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-fewshot", type=int)
    ap.add_argument("--include-path", help="directory of extra task YAMLs")
    a = ap.parse_args(argv)
    try:
        results = run_harness(
            a.checkpoint,
            a.tasks.split(","),
            a.output,
            a.limit,
            a.batch_size,
            a.device,
            a.num_fewshot,
            a.include_path,
        )
    except ValueError as e:  # HarnessError, and the checkpoint readers' errors
        print(f"megacrystal eval: {e}", file=sys.stderr)
        return 1
    print(format_table(results))
    print(f"megacrystal eval: wrote {results['megacrystal']['results_file']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
