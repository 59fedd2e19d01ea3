"""`megacrystal eval`: losses against a hand computation, FIM / completion scoring against models that
know (or never give) the answer, the JSON report."""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megacrystal.cli import main
from megacrystal.data.indexed import write_documents
from megacrystal.evaluation.completion_scoring import score_completion
from megacrystal.evaluation.decoding import one_at_a_time
from megacrystal.evaluation.documents import sample_code_documents
from megacrystal.evaluation.fim_scoring import score_fim
from megacrystal.evaluation.text_metrics import edit_similarity, levenshtein, line_scores
from megacrystal.model.serialization import save_model
from megacrystal.tokenizer import load_tokenizer
from tests.eval_util import CODE_DOCS, LookupModel, SilentModel
from tests.model_util import make_tokenizer, tiny_model

S = 16  # sample length of the loss test


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(None, make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


@pytest.fixture(scope="module")
def code_file(tmp_path_factory, tok):
    prefix = str(tmp_path_factory.mktemp("code") / "code_text_document")
    write_documents(prefix, [tok.encode(d) + [tok.eod] for d in CODE_DOCS])
    return prefix


def test_edit_similarity_and_line_scores():
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3
    assert edit_similarity("abc", "abc") == 1.0 and edit_similarity("abc", "xyz") == 0.0
    assert edit_similarity("", "") == 1.0
    assert line_scores("    return x  \nmore", "    return x\n") == {"exact_match": 1.0, "edit_similarity": 1.0}
    assert line_scores("return x\n", "    return x\n")["exact_match"] == 0.0  # indentation counts


def _plain_levenshtein(a: str, b: str) -> int:
    """The textbook dynamic programme (the reference of the bit-parallel one)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_bit_parallel_levenshtein_equals_the_dynamic_programme():
    r = random.Random(0)
    for _ in range(3000):
        alphabet = r.choice(["ab", "abcdefgh", "aé✓ \n\t"])
        a = "".join(r.choice(alphabet) for _ in range(r.randint(0, 80)))
        b = "".join(r.choice(alphabet) for _ in range(r.randint(0, 80)))
        assert levenshtein(a, b) == _plain_levenshtein(a, b) == levenshtein(b, a), (a, b)


def test_fim_exact_match_is_one_for_a_model_that_knows_the_middle_and_zero_for_one_that_never_fills(tok, code_file):
    docs = sample_code_documents([("code", code_file, np.arange(len(CODE_DOCS)))], tok, 8, seed=3)
    assert len(docs) == len(CODE_DOCS)  # every document has >= 3 non-blank lines
    good = score_fim(docs, tok, one_at_a_time(LookupModel(tok, CODE_DOCS)), max_seq_len=128, max_new_tokens=24, seed=3)
    bad = score_fim(docs, tok, one_at_a_time(SilentModel(tok)), max_seq_len=128, max_new_tokens=24, seed=3)
    for mode in ("psm", "spm"):
        assert good[mode]["n"] == len(CODE_DOCS)
        assert good[mode]["exact_match"] == 1.0 and good[mode]["edit_similarity"] == 1.0
        assert bad[mode]["exact_match"] == 0.0 and bad[mode]["edit_similarity"] == 0.0
    assert all(e["prediction"].rstrip("\n") == e["middle"].rstrip("\n") for e in good["examples"])
    # the scored middles are real lines of the documents, not empty
    assert all(e["middle"].strip() and e["middle"] in CODE_DOCS[e["document"]] for e in good["examples"])


def test_completion_exact_match_one_and_zero(tok, code_file):
    docs = sample_code_documents([("code", code_file, np.arange(len(CODE_DOCS)))], tok, 8, seed=5)
    good = score_completion(
        docs, tok, one_at_a_time(LookupModel(tok, CODE_DOCS)), max_seq_len=128, max_new_tokens=24, seed=5
    )
    bad = score_completion(docs, tok, one_at_a_time(SilentModel(tok)), max_seq_len=128, max_new_tokens=24, seed=5)
    assert good["n"] == len(CODE_DOCS) and good["exact_match"] == 1.0
    assert bad["exact_match"] == 0.0


def _hand_loss(model, vocab: int, doc: list[int]) -> tuple[float, int]:
    """Token-mean cross entropy over the windows [i*S, i*S + S + 1) of one document."""
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range((len(doc) - 1) // S):
            w = torch.tensor(doc[i * S : i * S + S + 1])
            logits = model(w[None, :-1])[0, :, :vocab].double()
            total += float(F.cross_entropy(logits, w[1:], reduction="sum"))
            n += S
    return total / n, n


def test_eval_losses_equal_a_hand_computation_and_report(tmp_path, tok, code_file):
    cfg, model = tiny_model(seed=2, vocab_size=320)
    mdir = save_model(tmp_path / "model", cfg, model.state_dict(), tokenizer_path=tok.path)
    rng = np.random.default_rng(0)
    prose = rng.integers(0, tok.vocab_size, 3 * S + 1).tolist()  # 3 samples (one padded batch of 2 + 1)
    write_documents(tmp_path / "prose_text_document", [prose])
    code = [t for d in CODE_DOCS for t in tok.encode(d)][: 2 * S + 1]
    write_documents(tmp_path / "code_text_document", [code])
    out = tmp_path / "eval.json"
    argv = [
        "eval", "--checkpoint", str(mdir), "--data", f"prose={tmp_path / 'prose_text_document'}",
        "--data", f"code={tmp_path / 'code_text_document'}", "--seq-length", str(S), "--micro-batch-size", "2",
        "--fim-examples", "4", "--completion-examples", "4", "--max-new-tokens", "8", "--output", str(out),
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads(out.read_text())
    for name, doc in (("prose", prose), ("code", code)):
        want, n = _hand_loss(model, cfg.vocab_size, doc)
        got = rep["losses"][name]
        assert got["tokens"] == n and got["samples"] == n // S
        assert got["loss"] == pytest.approx(want, rel=1e-5)
        assert got["perplexity"] == pytest.approx(float(np.exp(want)), rel=1e-5)
    # lines of the one code document, each scored in both modes
    assert 1 <= rep["fim"]["psm"]["n"] == rep["fim"]["spm"]["n"] <= 4
    assert {e["document"] for e in rep["fim"]["examples"]} == {0}
    assert 1 <= rep["completion"]["n"] <= 4 and 0.0 <= rep["completion"]["edit_similarity"] <= 1.0
    assert rep["tokenizer"]["fingerprint"] and rep["validation"]["fingerprint"]
    # an existing report is kept
    assert main(argv) == 2
    assert main([*argv, "--force", "--fim-examples", "0", "--completion-examples", "0"]) == 0
    assert "fim" not in json.loads(out.read_text())


def test_eval_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]


def test_harness_option_without_the_harness_module_is_one_line(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("megacrystal.evaluation.harness") is not None:
        pytest.skip("the lm-evaluation-harness bridge is installed; its own tests cover --harness")
    assert main(["eval", "--checkpoint", str(tmp_path), "--harness", "hellaswag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--harness" in err[0]


def test_batched_decoding_reads_each_sequence_at_its_own_end():
    """Right padding is exact under causal attention: a batch of prompts of different lengths gives
    each one's logits alone (fp32; 1e-5 as the other engine-vs-serial checks)."""
    from megacrystal.evaluation.engine_runner import EvalRunner

    cfg, model = tiny_model(seed=3, vocab_size=300, max_seq_len=32)
    runner = EvalRunner(cfg, model.state_dict(), micro_batch_size=2, precision="fp32", device="cpu")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (5, 17, 1, 32)]
    batched = runner.last_logits(prompts).double()
    with torch.no_grad():
        for i, p in enumerate(prompts):
            alone = model(torch.tensor([p]))[0, -1, : cfg.vocab_size].double()
            assert float((batched[i] - alone).norm() / alone.norm()) <= 1e-5, i
    assert runner.next_tokens(prompts) == batched.argmax(-1).tolist()


def test_generation_batch_default_follows_the_kv_cache_size():
    from megacrystal.config import ModelConfig
    from megacrystal.evaluation.command import build_parser, generation_batch

    a = build_parser().parse_args(["--checkpoint", "x"])
    tiny = ModelConfig(preset="tiny").resolve()  # 4 layers x 128 slots x 64 features: 256 KiB a prompt in fp32
    big = ModelConfig(num_layers=32, hidden_size=4096, num_heads=32, vocab_size=32000, max_seq_len=2048).resolve()
    assert generation_batch(a, tiny, "fp32") == 64
    assert generation_batch(a, big, "bf16") == 16  # 1 GiB of cache a prompt
    a.generation_batch_size = 5
    assert generation_batch(a, big, "bf16") == generation_batch(a, tiny, "fp32") == 5
