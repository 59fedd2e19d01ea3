"""Document text never becomes a control token (EOD, FIM, ...) unless --allow-special-in-text asks for
Megatron's behaviour; the same rule when FIM re-encodes a piece."""

import numpy as np
import pytest

from data_tools.preprocess import preprocess
from megacrystal.data.fim import FIM
from megacrystal.data.gpt_dataset import SamplePart
from megacrystal.data.indexed import IndexedDataset
from megacrystal.tokenizer import load_tokenizer
from tests.data_helpers import CRYSTAL_TOKENIZER, needs_crystal, small_sp_model, write_jsonl

TEXTS = [
    "<p>price <s>10</s> 8 EUR</p>\nnext paragraph",
    "def f():\n    return '<|fim_prefix|>' + \"<|fim_middle|>\"  # sentinels as strings\n",
    "plain text without markers",
]


def _run(tmp_path, name, model, kind, **kw):
    src = write_jsonl(tmp_path / "in.jsonl", TEXTS)
    s = preprocess(src, str(tmp_path / name), kind, model, append_eod=True, workers=2, progress=False, **kw)
    ds = IndexedDataset(tmp_path / f"{name}_text_document")
    return s, [ds[i].tolist() for i in range(len(ds))]


@needs_crystal
def test_crystal_markers_in_text_are_text_unless_allowed(tmp_path):
    from tokenizers import Tokenizer

    tok = load_tokenizer("HuggingFaceTokenizer", str(CRYSTAL_TOKENIZER))
    eod, fim_prefix = tok.eod, tok.special["fim_prefix"]
    assert (eod, fim_prefix) == (2, 32000) and {2, 32000, 32001} <= tok.control_ids
    s, docs = _run(tmp_path, "safe", str(CRYSTAL_TOKENIZER), "HuggingFaceTokenizer")
    assert s["documents"] == 3 and not s["allow_special_in_text"]
    for text, ids in zip(TEXTS, docs, strict=True):
        assert ids[-1] == eod and not set(ids[:-1]) & tok.control_ids, text  # EOD only where the pipeline put it
        assert tok.decode(ids[:-1]) == text
    # with the flag: the tokenizer's plain encoding, as Megatron's preprocess_data.py writes it
    s, docs = _run(tmp_path, "megatron", str(CRYSTAL_TOKENIZER), "HuggingFaceTokenizer", allow_special_in_text=True)
    hf = Tokenizer.from_file(str(CRYSTAL_TOKENIZER))
    assert docs == [hf.encode(t, add_special_tokens=False).ids + [eod] for t in TEXTS]
    assert eod in docs[0][:-1] and fim_prefix in docs[1]
    assert not set(docs[2]) - {eod} & tok.control_ids


@needs_crystal
def test_crystal_tokenizer_directory_as_megatron_takes_it(tmp_path):
    by_file = _run(tmp_path, "f", str(CRYSTAL_TOKENIZER), "HuggingFaceTokenizer")[1]
    by_dir = _run(tmp_path, "d", str(CRYSTAL_TOKENIZER.parent), "HuggingFaceTokenizer")[1]
    assert by_dir == by_file


def test_sentencepiece_user_symbols_in_text_are_text_unless_allowed(tmp_path):
    tok = load_tokenizer("SentencePieceTokenizer", small_sp_model())
    spell = tok.decode([tok.special["fim_prefix"]])  # how our SentencePiece model spells it
    texts = [f"a {spell} b </s> c", spell]
    for t in texts:
        ids = tok.encode(t)
        assert not set(ids) & tok.control_ids and tok.decode(ids) == t
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    allowed = load_tokenizer("SentencePieceTokenizer", small_sp_model(), allow_special_in_text=True)
    assert allowed.encode(spell) == [tok.special["fim_prefix"]]
    assert tok.eod not in allowed.encode("</s>")  # SentencePiece never matches control pieces in text


def _piece(tok, ids, pad=60):
    """One document piece followed by padding (a separate part), so the FIM piece is never cut."""
    doc = SamplePart(document=0, position=5, epoch=0, offset=0, length=len(ids))
    pad_part = SamplePart(document=-1, position=-1, epoch=0, offset=0, length=pad)
    return np.asarray(ids + [tok.special["fim_pad"]] * pad, dtype=np.int64), [doc, pad_part]


@pytest.mark.parametrize("spm_rate", [0.0, 1.0])
def test_fim_reencoding_keeps_the_rule(spm_rate):
    tok = load_tokenizer("SentencePieceTokenizer", small_sp_model())
    spell = tok.decode([tok.special["fim_prefix"]])
    sentinels = {tok.special[n] for n in ("fim_prefix", "fim_middle", "fim_suffix")}
    fim = FIM(tok, seed=3)
    text = f"x = '{spell}' # </s> and {spell} again\n" * 3
    body = tok.encode(text)
    for fkey in range(8):  # different cut points
        ids, parts = _piece(tok, body + [tok.eod])
        out, info = fim.apply(ids, parts, rate=1.0, spm_rate=spm_rate, phase=0, fkey=fkey)
        n = info[0].length
        assert info[0].mode != "none" and info[0].cut == 0
        got = out[:n].tolist()
        assert got[-1] == tok.eod and sorted(set(got[:-1]) & tok.control_ids) == sorted(sentinels)
        assert sum(got.count(s) for s in sentinels) == 3
    # a genuine control id inside a document (data written with --allow-special-in-text) stays one id
    inner = tok.special["filename"]
    ids, parts = _piece(tok, tok.encode("first part ") + [inner] + tok.encode(" second part") + [tok.eod])
    for fkey in range(8):
        out, info = fim.apply(ids, parts, rate=1.0, spm_rate=spm_rate, phase=0, fkey=fkey)
        got = out[: info[0].length].tolist()
        assert got.count(inner) == 1 and got[-1] == tok.eod
        assert sorted(set(got[:-1]) & tok.control_ids) == sorted(sentinels | {inner})
