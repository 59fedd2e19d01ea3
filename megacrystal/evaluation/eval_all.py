"""`megacrystal eval --checkpoint RUN --all [--steps 1000,2000]`: score every kept checkpoint of a run.

Every committed checkpoint of RUN (what `train.keep_checkpoints` / `train.keep_every` kept), or the
listed steps, is scored with the same held-out data and settings as a single `eval` of it would be,
one engine reused from checkpoint to checkpoint. Each result goes to RUN/eval/step_N-<fingerprint>.json
(results.py); a checkpoint already scored with the same settings is skipped, so a second call scores
nothing new and an interrupted call (Ctrl-C, SIGTERM, a killed job) resumes where it stopped: a result
is written whole or not at all. One progress bar counts the checkpoints. With `--harness TASKS` each
checkpoint goes through lm-evaluation-harness instead (RUN/eval/lm_eval-step_N-<fingerprint>.json).

Test hook: MEGACRYSTAL_EVAL_STOP_AFTER=N sends this process SIGINT before it starts the (N+1)-th
checkpoint of the call, the way a user's Ctrl-C would.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from pathlib import Path

from ..log import get_logger

log = get_logger("megacrystal.eval")
STOP_AFTER = "MEGACRYSTAL_EVAL_STOP_AFTER"


def select_steps(kept: list[tuple[int, Path]], steps: str | None) -> list[tuple[int, Path]]:
    if not steps:
        return kept
    try:
        want = sorted({int(s) for s in steps.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"--steps {steps!r}: expected comma-separated step numbers, e.g. 1000,2000") from None
    have = dict(kept)
    missing = [s for s in want if s not in have]
    if missing:
        raise ValueError(f"--steps: no kept checkpoint at step {missing} (kept: {sorted(have)})")
    return [(s, have[s]) for s in want]


def _harness_settings(a) -> dict:
    return dict(
        harness=sorted(t.strip() for t in a.harness.split(",") if t.strip()),
        limit=a.limit,
        num_fewshot=a.num_fewshot,
        include_path=a.include_path,
        device=a.device,
    )


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="eval --all", unit="ckpt", dynamic_ncols=True, disable=not enabled)


def _maybe_stop(scored: int) -> None:
    n = os.environ.get(STOP_AFTER)
    if n is not None and scored >= int(n):
        signal.raise_signal(signal.SIGINT)  # delivered to this (the main) thread before it returns


def _score_one(a, path: Path, out: Path, cache: dict) -> str | None:
    """Score one checkpoint into `out`; -> a line for the console (None on ranks other than 0)."""
    from .command import evaluate
    from .model_loading import load_for_eval
    from .results import write_new_json

    if a.harness:
        from . import harness

        res = harness.run_harness(
            str(path),
            [t for t in a.harness.split(",") if t],
            output=str(out),
            limit=a.limit,
            batch_size=a.batch_size,
            device=a.device,
            num_fewshot=a.num_fewshot,
            include_path=a.include_path,
        )
        return f"{path.name}: wrote {res['megacrystal']['results_file']}"
    report = evaluate(a, load_for_eval(str(path)), cache)
    if report is None:
        return None
    if not write_new_json(out, report):
        return f"{path.name}: {out} appeared meanwhile (another eval); kept it"
    losses = report.get("losses") or {}
    mean = sum(v["loss"] for v in losses.values()) / len(losses) if losses else float("nan")
    return f"{path.name}: mean loss {mean:.4f} over {len(losses)} sources; wrote {out}"


def main_all(a) -> int:
    from ..checkpoint.files import kept_checkpoints
    from ..checkpoint.format import CheckpointError
    from ..config import ConfigError
    from .command import resolve_precision, scoring_settings
    from .results import harness_path, report_path, settings_fingerprint

    err = lambda msg: print(f"megacrystal eval: {msg}", file=sys.stderr)
    if not a.all:
        err("--steps needs --all")
        return 2
    if a.output or a.force:
        err("--all writes RUN/eval/step_N-<settings fingerprint>.json and never replaces one; drop --output/--force")
        return 2
    if a.harness:
        import importlib.util

        from .harness import INSTALL_HINT

        if importlib.util.find_spec("lm_eval") is None:  # as a single `eval --harness`: one line, nothing done
            err(f"lm-evaluation-harness is not installed; {INSTALL_HINT}")
            return 2
    run = Path(a.checkpoint)
    try:
        todo_all = select_steps(kept_checkpoints(run), a.steps)
        if a.harness:
            fp = settings_fingerprint(_harness_settings(a))
            where = lambda step: harness_path(run, step, fp)
        else:
            fp = settings_fingerprint(scoring_settings(a, resolve_precision(a)))
            where = lambda step: report_path(run, step, fp)
    except (CheckpointError, ValueError, OSError) as e:
        err(e)
        return 2
    # Decided from the files before the first collective: every rank of a torchrun launch sees the same list.
    todo = [(s, p) for s, p in todo_all if not where(s).exists()]
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        print(
            f"{run}: {len(todo_all)} checkpoints, {len(todo_all) - len(todo)} already scored with these settings "
            f"(fingerprint {fp}), {len(todo)} to score"
        )
    inner = copy.copy(a)
    inner.no_progress = True
    cache: dict = {}
    failed, scored = [], 0
    bar = _bar(len(todo), main_rank and not a.no_progress)
    try:
        for step, path in todo:
            _maybe_stop(scored)
            try:
                line = _score_one(inner, path, where(step), cache)
            except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
                failed.append(step)
                bar.write(f"megacrystal eval: step {step}: {e}", file=sys.stderr)
            else:
                scored += 1
                if line and main_rank:
                    bar.write(line)
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        err(f"interrupted after scoring {scored} of {len(todo)}; run the same command again to resume")
        return 130
    finally:
        bar.close()
        from ..parallel.state import destroy

        destroy()
    if failed:
        err(f"{len(failed)} checkpoint(s) not scored (steps {failed}); the others are written")
        return 2
    if main_rank:
        print(f"scored {scored} checkpoint(s); results in {run / 'eval'}")
    return 0
