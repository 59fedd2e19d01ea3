"""lm-evaluation-harness on a megacrystal checkpoint (megacrystal/evaluation/harness.py), with tiny local tasks
(a task YAML + jsonl written here, found through include_path: lm-eval's own tasks download datasets)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from megacrystal.evaluation.harness import HarnessError, format_table, main, run_harness
from megacrystal.model.serialization import save_model
from megacrystal.tokenizer import load_tokenizer
from tests.model_util import make_tokenizer, tiny_model

HAVE_LM_EVAL = importlib.util.find_spec("lm_eval") is not None
needs_lm_eval = pytest.mark.skipif(
    not HAVE_LM_EVAL, reason="lm-eval is not installed (pip install 'megacrystal[eval]')"
)

MC = [
    {"question": "def add(a, b):\n    return", "choices": ["a + b", "print(i)", "os.getcwd()"], "answer": 0},
    {"question": "The quick brown fox jumps over the", "choices": ["lazy dog.", "range(10)"], "answer": 0},
    {"question": "for i in range(10):\n    print(i", "choices": [" * i)", " brown"], "answer": 0},
    {"question": "Crystal is trained on SlimPajama and", "choices": ["StarCoder data", "import sys"], "answer": 0},
    {"question": "import os\nimport", "choices": ["sys", "fox"], "answer": 0},
]
GEN = [
    {"prompt": "def add(a, b):\n    return a +", "target": " b"},
    {"prompt": "The quick brown", "target": " fox"},
    {"prompt": "import os\nimport", "target": " sys"},
]


def write_tiny_tasks(directory: Path) -> Path:
    """Two lm-eval tasks on local data: a multiple-choice (loglikelihood) and a generate_until one."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("mc", MC), ("gen", GEN)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = "dataset_path: json\ntest_split: test\nmetadata:\n  version: 1.0\n"
    (directory / "megacrystal_tiny_mc.yaml").write_text(
        "task: megacrystal_tiny_mc\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: question\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n" + common
    )
    (directory / "megacrystal_tiny_gen.yaml").write_text(
        "task: megacrystal_tiny_gen\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: prompt\ndoc_to_target: target\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n" + common
    )
    return directory


def _checkpoint(tmp_path):
    cfg, model = tiny_model(1, vocab_size=300, mup=False)
    tok = make_tokenizer(tmp_path / "tok.json")
    return cfg, model, save_model(tmp_path / "ckpt", cfg, model.state_dict(), tokenizer_path=tok)


@torch.no_grad()
def our_accuracy(model, cfg, tok_path) -> float:
    """The multiple-choice accuracy from megacrystal's own forward: argmax over the summed log-probabilities
    of each choice's tokens after the question (lm-eval's ' ' target delimiter)."""
    tok = load_tokenizer(None, tok_path)
    right = 0
    for row in MC:
        ctx = tok.encode(row["question"])
        scores = []
        for choice in row["choices"]:
            whole = tok.encode(row["question"] + " " + choice)
            logp = torch.log_softmax(model(torch.tensor([whole]))[0, :, : cfg.vocab_size].double(), -1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
        right += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    return right / len(MC)


@needs_lm_eval
def test_harness_on_a_checkpoint_matches_our_own_scoring(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    cfg, model, ckpt = _checkpoint(tmp_path)
    tasks = write_tiny_tasks(tmp_path / "tasks")
    res = run_harness(str(ckpt), ["megacrystal_tiny_mc", "megacrystal_tiny_gen"], batch_size=2, include_path=str(tasks))
    mc = res["results"]["megacrystal_tiny_mc"]["acc,none"]
    assert mc == pytest.approx(our_accuracy(model, cfg, str(ckpt / "tokenizer.json")))
    assert 0.0 <= res["results"]["megacrystal_tiny_gen"]["exact_match,none"] <= 1.0
    assert res["megacrystal"]["hf_layout"] == "crystalcoder" and res["megacrystal"]["exported"]
    first = Path(res["megacrystal"]["results_file"])
    assert first.parent == ckpt / "eval" and json.loads(first.read_text())["results"] == json.loads(
        json.dumps(res["results"])
    )
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".hf-export-")]  # the export is gone
    table = format_table(res)
    assert "megacrystal_tiny_mc" in table and "acc" in table
    # a second run, here through the module's command line, writes a new file beside the first
    assert main(["--checkpoint", str(ckpt), "--tasks", "megacrystal_tiny_mc", "--include-path", str(tasks)]) == 0
    assert len(list((ckpt / "eval").glob("lm_eval-*.json"))) == 2
    with pytest.raises(HarnessError, match="exists; results are never overwritten"):
        run_harness(str(ckpt), ["megacrystal_tiny_mc"], output=str(first), include_path=str(tasks))


@needs_lm_eval
def test_harness_on_an_hf_export_uses_it_as_is(tmp_path, monkeypatch):
    from megacrystal.hf.convert import export_hf

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    cfg, model, ckpt = _checkpoint(tmp_path)
    hf = export_hf(ckpt, "crystalcoder", tmp_path / "hf")
    tasks = write_tiny_tasks(tmp_path / "tasks")
    res = run_harness(
        str(hf), ["megacrystal_tiny_mc"], limit=5, include_path=str(tasks), output=str(tmp_path / "r.json")
    )
    assert not res["megacrystal"]["exported"]
    assert res["results"]["megacrystal_tiny_mc"]["acc,none"] == pytest.approx(
        our_accuracy(model, cfg, str(ckpt / "tokenizer.json"))
    )


@pytest.mark.skipif(HAVE_LM_EVAL, reason="checks the message shown where lm-eval is missing")
def test_harness_without_lm_eval_says_how_to_install(tmp_path, capsys):
    _, _, ckpt = _checkpoint(tmp_path)
    with pytest.raises(HarnessError, match=r"not installed; pip install 'megacrystal\[eval\]'"):
        run_harness(str(ckpt), ["hellaswag"])
    assert main(["--checkpoint", str(ckpt), "--tasks", "hellaswag"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "megacrystal[eval]" in err
    from megacrystal import cli  # the same through `megacrystal eval --harness`

    assert cli.main(["eval", "--harness", "hellaswag", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "megacrystal[eval]" in err
    assert not (ckpt / "eval").exists()


def test_format_table_lists_each_metric_with_its_stderr():
    res = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "ppl,none": 12.0}}}
    lines = format_table(res).splitlines()
    assert lines[0].split() == ["task", "metric", "value", "stderr"]
    assert lines[2].split() == ["t", "acc", "0.5000", "0.1000"] and lines[3].split() == ["t", "ppl", "12.0000", "-"]
