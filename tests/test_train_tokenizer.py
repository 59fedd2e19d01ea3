import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools.train_tokenizer import main, train_tokenizer
from megacrystal.tokenizer import CRYSTAL_SPECIALS, load_tokenizer
from tests.data_helpers import corpus_texts, small_corpus, small_sp_model

TRICKY = [
    "def f(x):\n\treturn x  \r\n\n\n",
    "   leading spaces\n    indented\n",
    "\n",
    "\n\n",
    " ",
    "",
    "a\u2581b \u2581\u2581 c\u2581",
    "emoji 🎉 and 日本語 and \x00 NUL",
    "<fim_prefix>x<fim_suffix>y<fim_middle>",
    "trailing space \n",
]


def test_specials_eod_and_vocab():
    tok = load_tokenizer("SentencePieceTokenizer", small_sp_model())
    assert tok.vocab_size == 700 and tok.eod == 2
    assert list(tok.special) == CRYSTAL_SPECIALS
    assert len(set(tok.special.values())) == len(CRYSTAL_SPECIALS)
    # user-defined symbols: matched in text only when asked (Megatron's behaviour); by default they stay text
    raw = load_tokenizer("SentencePieceTokenizer", small_sp_model(), allow_special_in_text=True)
    assert raw.encode("<fim_middle>") == [tok.special["fim_middle"]]
    assert tok.special["fim_middle"] not in tok.encode("<fim_middle>")


def test_lossless_on_real_code_and_prose():
    tok = load_tokenizer(None, small_sp_model())
    docs = corpus_texts("code_python") + corpus_texts("code_c") + corpus_texts("prose_pydoc")
    assert len(docs) > 10
    ids = tok.encode_batch(docs)
    for d, i in zip(docs, ids, strict=True):
        assert tok.decode(i) == d
    # newlines are real pieces, not bytes
    assert tok.encode("\n") == [3]


@pytest.mark.parametrize("text", TRICKY)
def test_lossless_on_tricky_text(text):
    tok = load_tokenizer(None, small_sp_model())
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode_batch([text]) == [tok.encode(text)]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_lossless_on_any_text(text):
    tok = load_tokenizer(None, small_sp_model())
    assert tok.decode(tok.encode(text)) == text


def test_cli_and_errors(tmp_path, capsys):
    corpus = str(small_corpus() / "prose_pydoc.jsonl")
    assert main(["--input", corpus, "--vocab-size", "400", "--output", str(tmp_path / "t")]) == 0
    assert "18 Crystal specials" in capsys.readouterr().out
    assert (tmp_path / "t" / "tokenizer.model").is_file() and (tmp_path / "t" / "tokenizer.vocab").is_file()
    with pytest.raises(ValueError, match="--vocab-size"):
        train_tokenizer(corpus, 100, str(tmp_path / "u"))
    assert main(["--input", str(tmp_path / "missing.jsonl"), "--vocab-size", "400", "--output", str(tmp_path)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
