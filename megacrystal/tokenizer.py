"""One small tokenizer interface over SentencePiece `.model` files and HF `tokenizer.json` files.

    tok = load_tokenizer("HuggingFaceTokenizer", "tokenizer.json")
    tok.vocab_size, tok.eod, tok.special["fim_prefix"], tok.encode(text), tok.decode(ids)

Pretraining encodes without BOS (`add_special_tokens=False`). Crystal's special tokens are
found by name in either spelling (`<fim_prefix>` or `<|fim_prefix|>`). No torch import.

Text never becomes a control token by default: `encode("a </s> b")` gives the ordinary tokens of
the characters `</s>`, never the EOD id; EOD/BOS/FIM ids are placed by the pipeline only. HF: the
tokenizer's own `encode_special_tokens` switch (what transformers calls `split_special_tokens`)
for every added token marked special. SentencePiece never matches its control pieces (`<s>`,
`</s>`) in text, but does match user-defined symbols: a user-defined symbol spelled `<name>` or
`<|name|>` (Crystal's specials) is encoded as text instead (its first character on its own, then
the rest). `load_tokenizer(..., allow_special_in_text=True)` restores plain library encoding, which
is Megatron's. `tok.control_ids` holds the ids text cannot produce (FIM keeps them as they are).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

# CRYSTAL.md §2, ids 32000.. in Crystal's tokenizer, in this order.
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
    """Interface: vocab_size, eod, special (name -> id), control_ids, encode, encode_batch, decode."""

    kind: str = ""
    path: str = ""
    vocab_size: int
    eod: int
    special: dict[str, int]
    allow_special_in_text: bool = False
    control_ids: frozenset = frozenset()  # ids that encoding text never yields (unless allow_special_in_text)

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

    def __init__(self, path: str, allow_special_in_text: bool = False):
        from tokenizers import Tokenizer as _T

        self.path = path
        try:
            self._tok = _T.from_file(path)
        except Exception as e:
            raise ValueError(f"{path}: not a HF tokenizers JSON file ({e})") from None
        self.allow_special_in_text = bool(allow_special_in_text)
        self._tok.encode_special_tokens = not self.allow_special_in_text  # split_special_tokens
        self.control_ids = frozenset(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)
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

    def __init__(self, path: str, allow_special_in_text: bool = False):
        import sentencepiece as spm

        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except Exception as e:
            raise ValueError(f"{path}: not a SentencePiece model ({e})") from None
        self.allow_special_in_text = bool(allow_special_in_text)
        n = self._sp.get_piece_size()
        symbols = [i for i in _user_defined_ids(self._sp) if _SPECIAL_SPELLING.match(self._sp.id_to_piece(i))]
        self.control_ids = frozenset([i for i in range(n) if self._sp.is_control(i)] + symbols)
        self._protect = None
        if symbols and not self.allow_special_in_text:  # longest first: the regex takes the first alternative
            names = sorted((self._sp.id_to_piece(i) for i in symbols), key=len, reverse=True)
            self._protect = re.compile("|".join(map(re.escape, names)))
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

    def _encode_plain(self, text: str) -> list[int]:
        if self._space_bytes is None or _SP_SPACE not in text:
            return self._sp.encode(text)
        out: list[int] = []
        for i, part in enumerate(text.split(_SP_SPACE)):
            if i:
                out += self._space_bytes
            if part:
                out += self._sp.encode(part)
        return out

    def _needs_care(self, text: str) -> bool:
        return (self._space_bytes is not None and _SP_SPACE in text) or (
            self._protect is not None and "<" in text and self._protect.search(text) is not None
        )

    def encode(self, text: str) -> list[int]:
        if self._protect is None or "<" not in text:
            return self._encode_plain(text)
        out: list[int] = []
        at = 0
        for m in self._protect.finditer(text):
            out += self._encode_plain(text[at : m.start()])
            out += self._encode_plain(m.group()[0])  # a symbol's spelling as text: split so it cannot match
            out += self.encode(m.group()[1:])
            at = m.end()
        return out + self._encode_plain(text[at:])

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        texts = list(texts)
        out = self._sp.encode(texts, num_threads=num_threads)
        if self._space_bytes is not None or self._protect is not None:
            for i, t in enumerate(texts):
                if self._needs_care(t):
                    out[i] = self.encode(t)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode(list(ids))


_SP_SPACE = "\u2581"


def _user_defined_ids(sp) -> list[int]:
    """Ids of USER_DEFINED pieces (matched in text as a whole), from the model proto."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError:  # no protobuf: pieces that encode as themselves (user-defined symbols do)
        return [i for i in range(sp.get_piece_size()) if not sp.is_control(i) and sp.encode(sp.id_to_piece(i)) == [i]]
    m = pb.ModelProto()
    m.ParseFromString(sp.serialized_model_proto())
    return [i for i, p in enumerate(m.pieces) if p.type == pb.ModelProto.SentencePiece.USER_DEFINED]


_SPECIAL_SPELLING = re.compile(r"^<(\|[^|<>\s]+\||[^<>\s]+)>$")  # <name> or <|name|>

TOKENIZER_TYPES = {"HuggingFaceTokenizer": HFTokenizer, "SentencePieceTokenizer": SentencePieceTokenizer}
_DIR_FILES = {"HuggingFaceTokenizer": ("tokenizer.json",), "SentencePieceTokenizer": ("tokenizer.model",)}


def resolve_tokenizer_path(kind: str | None, path: str) -> str:
    """A tokenizer file, or a directory holding one (as Megatron takes a HF tokenizer directory):
    tokenizer.json for HuggingFaceTokenizer, tokenizer.model for SentencePieceTokenizer."""
    if path and os.path.isdir(path):
        names = (
            _DIR_FILES.get(kind) if kind else _DIR_FILES["HuggingFaceTokenizer"] + _DIR_FILES["SentencePieceTokenizer"]
        )
        for name in names or ():
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise ValueError(
            f"{path}: a tokenizer directory without {' or '.join(names or ('a tokenizer file',))} "
            f"(a HF directory needs the fast tokenizer's tokenizer.json; save it with tokenizer.save_pretrained)"
        )
    if not path or not os.path.isfile(path):
        raise ValueError(f"{path}: tokenizer model file or directory not found")
    return path


def load_tokenizer(kind: str | None, path: str, allow_special_in_text: bool = False) -> Tokenizer:
    """`kind` is a Megatron --tokenizer-type; None guesses from the file name (.json vs .model).
    `path` is a file or a directory holding one; see the module docstring for `allow_special_in_text`."""
    if kind is not None and kind not in TOKENIZER_TYPES:
        raise ValueError(f"--tokenizer-type: expected one of {sorted(TOKENIZER_TYPES)}, got {kind!r}")
    path = resolve_tokenizer_path(kind, path)
    if kind is None:
        kind = "HuggingFaceTokenizer" if path.endswith(".json") else "SentencePieceTokenizer"
    return TOKENIZER_TYPES[kind](path, allow_special_in_text)
