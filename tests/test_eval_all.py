"""A run's trajectory: `eval --all` scores every kept checkpoint once (resumable, never overwriting),
`export-hf --all` writes one HF folder per kept checkpoint, `compare --trajectory` plots and tabulates
the scores against tokens seen. On two tiny real runs with several kept checkpoints."""

import importlib.util
import json
import signal
from pathlib import Path

import pytest

from megacrystal.cli import main
from tests.figure_util import axes_count, png_size, svg_texts
from tests.test_study import study_dir  # noqa: F401 (fixture: tiny corpus, tokenizer and base config)

EVAL = ["--max-samples", "4", "--documents", "4", "--fim-examples", "2", "--completion-examples", "2",
        "--max-new-tokens", "12", "--no-progress"]  # fmt: skip
KEPT = [4, 8, 12]  # saves at 3, 4, 6, 7 (phase end), 8, 10, 12; keep_checkpoints 1 + keep_every 4 keep these


@pytest.fixture(scope="module")
def runs(study_dir):  # noqa: F811
    """Two runs of the study test's base config, its code source made of real code lines (FIM, completion)."""
    from megacrystal.data.indexed import write_documents
    from megacrystal.tokenizer import load_tokenizer
    from tests.eval_util import CODE_DOCS

    tok = load_tokenizer(None, str(study_dir / "tokenizer.json"))
    docs = [CODE_DOCS[i % 4].replace("a", f"a{i}").replace("i", f"i{i % 7}") for i in range(60)]
    write_documents(study_dir / "real_code_text_document", [tok.encode(d) + [tok.eod] for d in docs])
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        run = study_dir / "traj" / name
        argv = ["train", "--config", str(study_dir / "base.yaml"), f"train.out_dir={run}", f"train.seed={seed}",
                f"data.seed={seed}", "train.save_interval=3", "train.keep_checkpoints=1", "train.keep_every=4",
                "train.eval_interval=3", "log.tensorboard=false",
                f"data.sources.code_a.prefixes=[{study_dir / 'real_code_text_document'}]"]  # fmt: skip
        assert main(argv) == 0
        out[name] = run
    return out


def _results(run: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((run / "eval").glob("step_*.json"))}


def test_eval_all_scores_each_kept_checkpoint_once_resumes_and_matches_single_evals(runs, capsys, monkeypatch):
    run = runs["a"]
    assert sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*")) == KEPT
    monkeypatch.setenv("MEGACRYSTAL_EVAL_STOP_AFTER", "1")  # a Ctrl-C before the second checkpoint
    # as in a terminal: a shell without job control starts background commands with SIGINT ignored,
    # and Python then keeps ignoring it (pytest run as `cmd &` would never see the Ctrl-C)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["eval", "--checkpoint", str(run), "--all", *EVAL]) == 130
    finally:
        signal.signal(signal.SIGINT, old)
    assert "interrupted after scoring 1 of 3" in capsys.readouterr().err
    first = _results(run)
    assert len(first) == 1 and next(iter(first)).startswith("step_00000004-")
    assert not [p for p in (run / "eval").iterdir() if p.name not in first]  # no partial file left
    monkeypatch.delenv("MEGACRYSTAL_EVAL_STOP_AFTER")
    assert main(["eval", "--checkpoint", str(run), "--all", *EVAL]) == 0
    assert "1 already scored with these settings" in capsys.readouterr().out
    done = _results(run)
    fp = next(iter(first))[14:22]
    assert sorted(done) == [f"step_{s:08d}-{fp}.json" for s in KEPT] and all(done[k] == v for k, v in first.items())
    assert main(["eval", "--checkpoint", str(run), "--all", *EVAL]) == 0  # nothing new
    assert "3 already scored with these settings" in capsys.readouterr().out and _results(run) == done
    # the scores equal a single `eval` of each checkpoint
    for step in KEPT:
        single = run.parent / f"single_{step}.json"
        ckpt = run / "checkpoints" / f"step_{step:08d}"
        assert main(["eval", "--checkpoint", str(ckpt), "--output", str(single), *EVAL]) == 0
        a, b = (json.loads(p.read_text()) for p in (single, run / "eval" / f"step_{step:08d}-{fp}.json"))
        for key in ("losses", "fim", "completion", "scoring", "validation", "tokenizer"):
            assert a[key] == b[key], (step, key)
        assert a["model"]["step"] == step and a["model"]["tokens"] == step * 4 * 32
    # the same settings name the same file: a single eval's default output is refused, not overwritten
    assert main(["eval", "--checkpoint", str(run), *EVAL]) == 2
    assert f"step_00000012-{fp}.json: exists" in capsys.readouterr().err
    # other settings: other files, the earlier ones untouched
    assert main(["eval", "--checkpoint", str(run), "--all", "--steps", "8,12", *EVAL[:-2], "13", "--no-progress"]) == 0
    now = _results(run)
    assert len(now) == 5 and all(now[k] == v for k, v in done.items())


def test_eval_all_refuses_unknown_steps_and_output(runs, capsys):
    run = runs["a"]
    assert main(["eval", "--checkpoint", str(run), "--all", "--steps", "8,7", *EVAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[7]" in err[0] and "kept: [4, 8, 12]" in err[0]
    assert main(["eval", "--checkpoint", str(run), "--all", "--output", "x.json", *EVAL]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["eval", "--checkpoint", str(run.parent / "nowhere"), "--all", *EVAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]


@pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is not None, reason="checks the message where lm-eval is missing"
)
def test_eval_all_harness_without_lm_eval_is_one_line_and_writes_nothing(runs, capsys):
    before = sorted(p.name for p in (runs["b"]).rglob("*"))
    assert main(["eval", "--checkpoint", str(runs["b"]), "--all", "--harness", "hellaswag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "megacrystal[eval]" in err[0]
    assert sorted(p.name for p in (runs["b"]).rglob("*")) == before


@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed")
def test_eval_all_harness_scores_each_kept_checkpoint_once(runs, tmp_path, capsys):
    from tests.test_harness import write_tiny_tasks

    tasks = write_tiny_tasks(tmp_path / "tasks")
    argv = ["eval", "--checkpoint", str(runs["b"]), "--all", "--harness", "megacrystal_tiny_mc",
            "--include-path", str(tasks), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    files = sorted((runs["b"] / "eval").glob("lm_eval-step_*.json"))
    assert [f.name[:21] for f in files] == [f"lm_eval-step_{s:08d}" for s in KEPT]
    assert all("megacrystal_tiny_mc" in json.loads(f.read_text())["results"] for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]
    assert main(argv) == 0 and "3 already scored" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_export_hf_all_writes_one_folder_per_kept_checkpoint_and_never_overwrites(runs, tmp_path, capsys):
    import torch

    from megacrystal.checkpoint import load_model_state
    from megacrystal.hf.convert import hf_to_model

    out = tmp_path / "hf"
    argv = ["export-hf", "--checkpoint", str(runs["a"]), "--all", "--format", "crystalcoder", "--output", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"step_{s:08d}" for s in KEPT]
    for step in KEPT:
        conf = json.loads((out / f"step_{step:08d}" / "config.json").read_text())
        phase = "language" if step <= 7 else "code"
        assert conf["megacrystal"] == {"step": step, "tokens": step * 4 * 32, "phase": phase,
                                       "checkpoint": f"step_{step:08d}"}  # fmt: skip
        _, ours = load_model_state(runs["a"] / "checkpoints" / f"step_{step:08d}")
        _, back, _ = hf_to_model(out / f"step_{step:08d}")
        assert all(torch.equal(back[k], ours[k]) for k in ours)  # each folder holds its own step's weights
    (out / "step_00000012" / "model.safetensors").unlink()  # a folder that exists is never rewritten, even damaged
    stamps = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")}
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "0 new folder(s)" in text and text.count("exists; skipped") == 3
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


def test_compare_trajectory_plots_and_tabulates_every_checkpoint_at_each_phase_end(runs, tmp_path, capsys):
    import csv

    for run in runs.values():
        assert main(["eval", "--checkpoint", str(run), "--all", *EVAL]) == 0
    out = tmp_path / "cmp"
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--output", str(out), "--trajectory"]) == 0
    for stem in ("valid_loss", "trajectory"):  # real figures, PNG and SVG
        png_size(out / f"{stem}.png")
        svg_texts(out / f"{stem}.svg")
    texts = svg_texts(out / "trajectory.svg")
    metrics = [f"loss {s}" for s in ("code_a", "code_b", "prose_a", "prose_b")]
    metrics += [f"{t} {m}" for t in ("FIM PSM", "FIM SPM", "next-line") for m in ("edit similarity", "exact match")]
    assert set(metrics) <= set(texts) and axes_count(out / "trajectory.svg") == len(metrics)
    assert {"a (n=1)", "b (n=1)"} <= set(texts)  # both runs overlaid
    # the phase-end table: language ends at step 7 (last kept checkpoint 6), code at 12; values from the reports
    rows = list(csv.DictReader((out / "trajectory.csv").open()))
    assert {(r["run"], r["phase"], r["phase_end_step"], r["step"]) for r in rows} == {
        (run, phase, end, step) for run in "ab" for phase, end, step in (("language", "7", "4"), ("code", "12", "12"))
    }
    fp = json.loads((out / "trajectory.json").read_text())["settings"]["eval"]
    for r in rows:
        rep = json.loads((runs[r["run"]] / "eval" / f"step_{int(r['step']):08d}-{fp}.json").read_text())
        if r["metric"] == "loss prose_a":
            assert float(r["mean"]) == rep["losses"]["prose_a"]["loss"] and int(r["tokens"]) == int(r["step"]) * 128
        if r["metric"] == "FIM SPM edit similarity":
            assert float(r["mean"]) == rep["fim"]["spm"]["edit_similarity"]
    table = (out / "trajectory.md").read_text()
    assert "| a | language | 7 | 4 |" in table and "| b | code | 12 | 12 |" in table
    # runs scored with other settings are not put on one plot: b now has more results under other settings
    assert main(["eval", "--checkpoint", str(runs["b"]), "--all", *EVAL[:-2], "13", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--output", str(tmp_path / "no"), "--trajectory"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different eval settings" in err[0] and str(runs["b"]) in err[0]
