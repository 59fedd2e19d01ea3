"""The curriculum study's variants: equal tokens per source (from `data-inspect`), and the rules each
variant follows; `compare` refuses runs measured with other tokenizers or validation sets."""

import json
import shutil

import numpy as np
import pytest
import yaml

from megacrystal.cli import main
from megacrystal.data.indexed import write_documents
from megacrystal.model.serialization import save_model
from megacrystal.tokenizer import CRYSTAL_SPECIALS
from tests.figure_util import png_size, svg_texts
from tests.model_util import make_tokenizer, tiny_model

FIRST_ID = 3 + len(CRYSTAL_SPECIALS)  # ids below are <unk> <s> </s> and the specials


def _write_source(prefix, rng, docs: int):
    write_documents(prefix, [rng.integers(FIRST_ID, 300, rng.integers(20, 120)).tolist() + [2] for _ in range(docs)])


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    for name, n in (("prose_a", 60), ("prose_b", 40), ("code_a", 50), ("code_b", 30)):
        _write_source(d / f"{name}_text_document", rng, n)
    write_documents(d / "empty_text_document", [[2]])  # an optional source without tokens: left out
    src = lambda n, kind, **kw: {"prefixes": [str(d / f"{n}_text_document")], "kind": kind, **kw}
    base = {
        "model": {"preset": "tiny", "vocab_size": 320, "num_layers": 1},
        "data": {
            "tokenizer_type": "HuggingFaceTokenizer",
            "tokenizer_model": make_tokenizer(d / "tokenizer.json"),
            "seq_length": 32,
            "valid_fraction": 0.05,
            "sources": {
                "prose_a": src("prose_a", "nl"),
                "prose_b": src("prose_b", "nl"),
                "extra": src("empty", "nl", optional=True),
                "code_a": src("code_a", "code", fim=True),
                "code_b": src("code_b", "code", fim=True),
            },
            "phases": [
                {
                    "name": "language",
                    "steps": 7,
                    "blend": {"prose_a": 0.35, "prose_b": 0.35, "extra": 0.2, "code_a": 0.1},
                },
                {
                    "name": "code",
                    "steps": 5,
                    "blend": {"prose_a": 0.12, "prose_b": 0.12, "extra": 0.1, "code_a": 0.4, "code_b": 0.26},
                    "fim_rate": 0.9,
                    "fim_spm_rate": 0.5,
                    "lr": 1e-3,
                },
            ],
        },
        "train": {"micro_batch_size": 2, "global_batch_size": 4, "out_dir": str(d / "runs" / "base")},
    }
    (d / "base.yaml").write_text(yaml.safe_dump(base))
    study = {"base": "base.yaml", "out_dir": str(d / "runs" / "study"), "seeds": [1, 2]}
    (d / "study.yaml").write_text(yaml.safe_dump(study))
    return d


def _inspect(path, capsys) -> dict:
    capsys.readouterr()
    assert main(["data-inspect", "--config", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_variants_have_equal_tokens_per_source_by_data_inspect(study_dir, capsys):
    assert main(["study", "--config", str(study_dir / "study.yaml"), "--dry-run"]) == 0
    configs = study_dir / "runs" / "study" / "configs"
    totals, shapes = {}, {}
    for v in ("crystal", "mixed", "sequential", "reversed"):
        s = _inspect(configs / f"{v}.yaml", capsys)
        per_source: dict[str, int] = {}
        for p in s["phases"]:
            for name, x in p["sources"].items():
                per_source[name] = per_source.get(name, 0) + x["samples"]
                assert x["off_by_samples"] == 0  # blends realised exactly
        totals[v] = (s["total_tokens"], {k: n * s["seq_length"] for k, n in per_source.items() if n})
        shapes[v] = [
            (p["name"], p["steps"], p["fim_rate"], sorted(k for k, x in p["sources"].items() if x["samples"]))
            for p in s["phases"]
        ]
    assert totals["crystal"][0] == 12 * 4 * 32
    assert set(totals["crystal"][1]) == {"prose_a", "prose_b", "code_a", "code_b"}  # the empty optional one left out
    for v in ("mixed", "sequential", "reversed"):
        assert totals[v] == totals["crystal"], v
    # what makes each variant itself
    assert [x[:2] for x in shapes["crystal"]] == [("language", 7), ("code", 5)]
    assert [x[:2] for x in shapes["reversed"]] == [("code", 5), ("language", 7)]
    assert [x[:2] for x in shapes["mixed"]] == [("mixed", 12)]
    # every source's expected FIM samples are the same too (crystal: 0.9 of its phase-2 code samples)
    from megacrystal.config import load_config
    from megacrystal.study.variants import source_totals

    fims = {}
    for v in ("crystal", "mixed", "sequential", "reversed"):
        cfg = load_config(str(configs / f"{v}.yaml"))
        fims[v] = {k: round(f, 6) for k, (_, f) in source_totals(cfg.data.phases, 4).items()}
    crystal = _inspect(configs / "crystal.yaml", capsys)
    for src in ("code_a", "code_b"):
        assert fims["crystal"][src] == pytest.approx(0.9 * crystal["phases"][1]["sources"][src]["samples"])
    assert fims["mixed"] == fims["sequential"] == fims["reversed"] == fims["crystal"]
    seq = shapes["sequential"]
    assert seq[0][3] == ["prose_a", "prose_b"] and seq[1][3] == ["code_a", "code_b"]
    # one config per seed, differing in the seeds and the run directory only
    a = yaml.safe_load((configs / "mixed_seed1.yaml").read_text())
    b = yaml.safe_load((configs / "mixed_seed2.yaml").read_text())
    assert (a["train"]["seed"], b["train"]["seed"], a["data"]["seed"], b["data"]["seed"]) == (1, 2, 1, 2)
    a["train"].update(seed=0, out_dir=""), b["train"].update(seed=0, out_dir="")
    a["data"]["seed"] = b["data"]["seed"] = 0
    assert a == b


def _eval(tmp_path, name, model_dir, data_prefix) -> str:
    out = tmp_path / f"{name}.json"
    argv = ["eval", "--checkpoint", str(model_dir), "--data", f"prose={data_prefix}", "--seq-length", "16",
            "--fim-examples", "0", "--completion-examples", "0", "--no-progress", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    return str(out)


def test_compare_refuses_other_tokenizers_and_validation_sets(tmp_path, capsys):
    cfg, model = tiny_model(seed=1, vocab_size=320)
    tok1 = make_tokenizer(tmp_path / "tok1.json")
    (tmp_path / "t2").mkdir()
    tok2 = make_tokenizer(tmp_path / "t2" / "tokenizer.json", vocab=280)
    m1 = save_model(tmp_path / "m1", cfg, model.state_dict(), tokenizer_path=tok1)
    m2 = save_model(tmp_path / "m2", cfg, model.state_dict(), tokenizer_path=tok2)
    rng = np.random.default_rng(1)
    _write_source(tmp_path / "x_text_document", rng, 8)
    _write_source(tmp_path / "y_text_document", rng, 8)
    (tmp_path / "copy").mkdir()
    for ext in ("bin", "idx"):
        shutil.copy(tmp_path / f"x_text_document.{ext}", tmp_path / "copy" / f"x_text_document.{ext}")
    a = _eval(tmp_path, "a", m1, tmp_path / "x_text_document")
    same = _eval(tmp_path, "same", m1, tmp_path / "copy" / "x_text_document")  # same content, other path
    other_data = _eval(tmp_path, "other_data", m1, tmp_path / "y_text_document")
    other_tok = _eval(tmp_path, "other_tok", m2, tmp_path / "x_text_document")
    capsys.readouterr()
    assert main(["compare", a, same, "--output", str(tmp_path / "ok"), "--format", ""]) == 0
    table = capsys.readouterr().out
    assert "| a | 1 | eval |" in table and "| same | 1 | eval |" in table
    summary = json.loads((tmp_path / "ok" / "compare.json").read_text())
    assert (
        summary["groups"]["a"]["valid_loss"]["prose"]["mean"] == json.loads(open(a).read())["losses"]["prose"]["loss"]
    )
    for bad, word in ((other_data, "validation sets"), (other_tok, "tokenizers")):
        assert main(["compare", a, bad, "--output", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0] and bad in err[0]
    assert not (tmp_path / "no" / "compare.json").exists()


def test_a_finished_run_is_reused_and_a_started_one_keeps_its_config(study_dir, capsys):
    from megacrystal.study.jobs import Job

    run = study_dir / "reuse" / "seed1"
    job = Job("v/seed1", run, study_dir / "c.yaml", 12, ["--max-samples", "4"])
    job.plan()
    assert [w for w, _ in job.steps] == ["train", "eval"] and job.status == "todo"
    for step in (6, 12):
        ckpt = run / "checkpoints" / f"step_{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer.json").write_text(json.dumps({"step": step}))
        (ckpt / "manifest.json").write_text("{}")
        (run / "checkpoints" / "latest").write_text(ckpt.name)
        job.plan()
        if step == 6:
            assert [w for w, _ in job.steps] == ["train", "eval"]  # resumes: the trainer continues from step 6
    assert (
        [w for w, _ in job.steps] == ["eval"]
        and job.status == "trained"
        and job.steps[0][1][-4:] == ["--all", "--no-progress", "--max-samples", "4"]
    )
    files = job.eval_files()  # every kept checkpoint's result under the study's eval settings
    assert [f.name[:13] for f in files] == ["step_00000006", "step_00000012"]
    files[0].parent.mkdir()
    files[0].write_text("{}")
    job.plan()
    assert [w for w, _ in job.steps] == ["eval"]  # step 12 still to score
    files[1].write_text("{}")
    job.plan()
    assert job.steps == [] and job.status == "done"
    # a run that has started is never silently given another config
    study = study_dir / "study.yaml"
    assert main(["study", "--config", str(study), "--dry-run"]) == 0
    started = study_dir / "runs" / "study" / "mixed" / "seed1"
    started.mkdir(parents=True)
    (started / "metrics.jsonl").write_text("")
    capsys.readouterr()
    assert main(["study", "--config", str(study), "--dry-run", "data.phases.0.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "configs/mixed_seed1.yaml" in err and "different config" in err


def test_study_trains_evaluates_compares_and_reuses(study_dir, capsys):
    """The whole command, shortened: 2 variants x 1 seed, 2 + 2 steps, in 2 parallel processes."""
    out = study_dir / "runs" / "e2e"
    spec = {
        "base": "base.yaml",
        "out_dir": str(out),
        "variants": ["crystal", "mixed"],
        "seeds": [3],
        "overrides": [
            "data.phases.0.steps=2",
            "data.phases.1.steps=2",
            "train.eval_interval=2",
            "train.save_interval=2",
            "log.tensorboard=false",
        ],
        "eval_args": [
            "--max-samples",
            "4",
            "--fim-examples",
            "2",
            "--completion-examples",
            "2",
            "--max-new-tokens",
            "4",
        ],
        "jobs": 2,
        "job_timeout_s": 600,
    }
    (study_dir / "e2e.yaml").write_text(yaml.safe_dump(spec))
    assert main(["study", "--config", str(study_dir / "e2e.yaml")]) == 0
    record = json.loads((out / "study.json").read_text())
    assert record["parallel_jobs"] == 2 and {r["status"] for r in record["runs"].values()} == {"done"}
    rows = {
        v: json.loads((out / v / "seed3" / "metrics.jsonl").read_text().splitlines()[-1]) for v in ("crystal", "mixed")
    }
    assert rows["crystal"]["step"] == rows["mixed"]["step"] == 4
    assert rows["crystal"]["samples_per_source"] == rows["mixed"]["samples_per_source"]  # what training really read
    for v in ("crystal", "mixed"):  # every kept checkpoint evaluated
        reports = sorted((out / v / "seed3" / "eval").glob("step_*.json"))
        assert [p.name[:13] for p in reports] == ["step_00000002", "step_00000004"]
        assert set(json.loads(reports[-1].read_text())["losses"]) == {"prose_a", "prose_b", "code_a", "code_b"}
    table = (out / "compare" / "compare.md").read_text()
    assert "| crystal | 1 | eval |" in table and "| mixed | 1 | eval |" in table
    for name in ("valid_loss.png", "trajectory.png"):
        png_size(out / "compare" / name)
    assert "loss code_a" in svg_texts(out / "compare" / "trajectory.svg")
    trajectory = (out / "compare" / "trajectory.md").read_text()
    assert "| crystal | language | 2 | 2 |" in trajectory and "| mixed | mixed | 4 | 4 |" in trajectory
    logs = {v: (out / v / "seed3" / "study.log").stat().st_size for v in ("crystal", "mixed")}
    assert main(["study", "--config", str(study_dir / "e2e.yaml")]) == 0  # everything reused
    assert {v: (out / v / "seed3" / "study.log").stat().st_size for v in logs} == logs
    again = json.loads((out / "study.json").read_text())["runs"]
    assert all(r["status"] == "done" and r["seconds"] == 0.0 for r in again.values())  # nothing ran again
