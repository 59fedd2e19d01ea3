"""`megacrystal generate` on a tiny model that has memorised two documents (one in FIM layout)."""

import pytest
import torch

from megacrystal import cli
from megacrystal.generate import fim_prompt, generate_ids
from megacrystal.hf.convert import export_hf
from megacrystal.model.serialization import save_model
from megacrystal.tokenizer import load_tokenizer
from tests.model_util import make_tokenizer, tiny_model

CODE = "def add(a, b):\n    return a + b\n"
PREFIX, MIDDLE, SUFFIX = "for i in range(10):\n", "    print(i * i)", "\n"


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    tok = load_tokenizer(None, make_tokenizer(tmp / "tok.json"))
    docs = [tok.encode(CODE) + [tok.eod], fim_prompt(tok, PREFIX, SUFFIX) + tok.encode(MIDDLE) + [tok.eod]]
    cfg, model = tiny_model(seed=0, vocab_size=tok.vocab_size)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    n = max(map(len, docs))
    x = torch.tensor([d + [tok.eod] * (n - len(d)) for d in docs])
    for _ in range(200):
        loss = model(x[:, :-1], labels=x[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.eval()
    ckpt = save_model(tmp / "ckpt", cfg, model.state_dict(), tokenizer_path=tok.path)
    return tmp, tok, model, ckpt


def test_greedy_continues_the_memorised_text(memorised, capsys):
    tmp, tok, model, ckpt = memorised
    prompt = tok.encode("def add(a, b):")
    new = generate_ids(model, prompt, 40, greedy=True, stop_ids=[tok.eod])
    assert tok.decode(prompt + new) == CODE
    assert (
        cli.main(
            ["generate", "--checkpoint", str(ckpt), "--prompt", "def add(a, b):", "--greedy", "--max-new-tokens", "40"]
        )
        == 0
    )
    assert capsys.readouterr().out == CODE + "\n"
    hf = export_hf(ckpt, "crystalcoder", tmp / "hf")
    assert cli.main(["generate", "--hf", str(hf), "--prompt", "def add(a, b):", "--greedy"]) == 0
    assert capsys.readouterr().out == CODE + "\n"


def test_fim_fills_the_middle(memorised, capsys):
    tmp, tok, model, ckpt = memorised
    assert cli.main(["generate", "--checkpoint", str(ckpt), "--fim", PREFIX, SUFFIX, "--greedy"]) == 0
    assert capsys.readouterr().out == PREFIX + MIDDLE + SUFFIX + "\n"


def test_sampling_is_seeded_and_errors_are_one_line(memorised, capsys):
    tmp, tok, model, ckpt = memorised
    args = ["generate", "--checkpoint", str(ckpt), "--prompt", "for", "--max-new-tokens", "8", "--seed", "3"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("for")
    assert cli.main(["generate", "--checkpoint", str(tmp / "missing"), "--prompt", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0]


def test_kv_cache_gives_the_uncached_greedy_ids(memorised):
    """fp32: the same ids through the KV cache as running the window whole at every step, also past
    max_seq_len (the window slides; the cache restarts) and for the FIM prompt."""
    tmp, tok, model, ckpt = memorised
    long = tok.encode(CODE * 12)[: model.cfg.max_seq_len - 4]
    for prompt in (tok.encode("def add(a, b):"), fim_prompt(tok, PREFIX, SUFFIX), long):
        cached = generate_ids(model, prompt, 12, greedy=True)
        assert cached == generate_ids(model, prompt, 12, greedy=True, cache=False)
        assert len(cached) == 12
