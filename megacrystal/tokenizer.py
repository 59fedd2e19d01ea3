"""One small tokenizer interface over SentencePiece `.model` files and HF `tokenizer.json` files.

    tok = load_tokenizer("HuggingFaceTokenizer", "tokenizer.json")
    tok.vocab_size, tok.eod, tok.special["fim_prefix"], tok.encode(text), tok.decode(ids)

Pretraining encodes without BOS (`add_special_tokens=False`). Crystal's special tokens are
found by name in either spelling (`<fim_prefix>` or `<|fim_prefix|>`). No torch import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# docs/recipe.md (Tokenizer and special tokens), ids 32000.. in Crystal's tokenizer, in this order.
CRYSTAL_SPECIALS = [
    "fim_prefix",
    "fim_middle",
    "fim_suffix",
    "fim_pad",
    "filename",
    "gh_stars",
    "issue_start",
    "issue_comment",
    "issue_closed",
    "jupyter_start",
    "jupyter_text",
    "jupyter_code",
    "jupyter_output",
    "empty_output",
    "commit_before",
    "commit_msg",
    "commit_after",
    "reponame",
]


def special_spellings(name: str) -> tuple[str, str]:
    return f"<{name}>", f"<|{name}|>"


class Tokenizer:
    """Interface: vocab_size, eod, special (name -> id), encode, encode_batch, decode."""

    kind: str = ""
    path: str = ""
    vocab_size: int
    eod: int
    special: dict[str, int]

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def _find_specials(self, lookup) -> dict[str, int]:
        out = {}
        for name in CRYSTAL_SPECIALS:
            for s in special_spellings(name):
                i = lookup(s)
                if i is not None:
                    out[name] = i
                    break
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size}, eod={self.eod})"


class HFTokenizer(Tokenizer):
    kind = "HuggingFaceTokenizer"

    def __init__(self, path: str):
        from tokenizers import Tokenizer as _T

        self.path = path
        try:
            self._tok = _T.from_file(path)
        except Exception as e:
            raise ValueError(f"{path}: not a HF tokenizers JSON file ({e})") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eod = None
        for s in ("</s>", "<|endoftext|>", "<eos>", "<|end_of_text|>"):
            eod = self._tok.token_to_id(s)
            if eod is not None:
                break
        if eod is None:
            raise ValueError(f"{path}: no end-of-document token (looked for </s>, <|endoftext|>, <eos>)")
        self.eod = eod
        self.special = self._find_specials(self._tok.token_to_id)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    @property
    def backend(self):
        return self._tok


class SentencePieceTokenizer(Tokenizer):
    kind = "SentencePieceTokenizer"

    def __init__(self, path: str):
        import sentencepiece as spm

        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except Exception as e:
            raise ValueError(f"{path}: not a SentencePiece model ({e})") from None
        self.vocab_size = self._sp.get_piece_size()
        self.eod = self._sp.eos_id()
        if self.eod < 0:
            raise ValueError(f"{path}: the SentencePiece model has no EOS piece (needed as end-of-document)")
        unk = self._sp.unk_id()

        def lookup(s):
            i = self._sp.piece_to_id(s)
            return None if i == unk and s != self._sp.id_to_piece(unk) else i

        self.special = self._find_specials(lookup)
        self._space_bytes = self._literal_space_bytes()

    def _literal_space_bytes(self) -> list[int] | None:
        """SentencePiece writes spaces as U+2581 and decodes every U+2581 back to a space, so a literal
        U+2581 in the text would not round-trip. For models without a dummy prefix that have byte
        pieces (ours), encode it as its three UTF-8 byte pieces instead, which decode to U+2581."""
        ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SP_SPACE.encode()]
        if not all(self._sp.is_byte(i) for i in ids):
            return None
        probe = self._sp.encode("a")
        if not probe or self._sp.id_to_piece(probe[0]).startswith(_SP_SPACE):
            return None  # dummy-prefix model: segments cannot be encoded separately
        return ids

    def encode(self, text: str) -> list[int]:
        if self._space_bytes is None or _SP_SPACE not in text:
            return self._sp.encode(text)
        out: list[int] = []
        for i, part in enumerate(text.split(_SP_SPACE)):
            if i:
                out += self._space_bytes
            if part:
                out += self._sp.encode(part)
        return out

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        texts = list(texts)
        out = self._sp.encode(texts, num_threads=num_threads)
        if self._space_bytes is not None:
            for i, t in enumerate(texts):
                if _SP_SPACE in t:
                    out[i] = self.encode(t)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids))


_SP_SPACE = "\u2581"

TOKENIZER_TYPES = {"HuggingFaceTokenizer": HFTokenizer, "SentencePieceTokenizer": SentencePieceTokenizer}


def load_tokenizer(kind: str | None, path: str) -> Tokenizer:
    """`kind` is a Megatron --tokenizer-type; None guesses from the file name (.json vs .model)."""
    if not path or not os.path.isfile(path):
        raise ValueError(f"{path}: tokenizer model file not found")
    if kind is None:
        kind = "HuggingFaceTokenizer" if path.endswith(".json") else "SentencePieceTokenizer"
    if kind not in TOKENIZER_TYPES:
        raise ValueError(f"--tokenizer-type: expected one of {sorted(TOKENIZER_TYPES)}, got {kind!r}")
    return TOKENIZER_TYPES[kind](path)
