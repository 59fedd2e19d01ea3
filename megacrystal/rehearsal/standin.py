"""Stand-in data for a rehearsal whose configured files are not on this machine.

Per missing `.bin/.idx` prefix: an indexed file of random documents (lengths from half to twice
the sequence length, printable ASCII bytes as tokens of the stand-in tokenizer, or random ids of the
configured tokenizer) large enough for the rehearsed samples, with enough documents that the
validation split holds some. A missing tokenizer becomes a byte-level BPE with no merges: 256 byte
tokens, `</s>` and Crystal's special tokens (`<fim_prefix>`...), built with the `tokenizers` library
the project already uses. Files are written once per signature and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..atomic_io import atomic_write, own_temp
from ..data.indexed import IndexedDatasetWriter, token_dtype
from ..tokenizer import CRYSTAL_SPECIALS

EOD = "</s>"


def tokenizer_path(workdir: Path) -> str:
    """A stand-in HF tokenizer.json (written once)."""
    path = workdir / "tokenizer" / "tokenizer.json"
    if path.is_file():
        return str(path)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOD] + [f"<{n}>" for n in CRYSTAL_SPECIALS])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, tok.to_str(pretty=True).encode())  # another rehearsal may write it at the same time
    return str(path)


def printable_ids(tokenizer) -> np.ndarray:
    """Token ids of printable ASCII characters (round-trip through decode/encode, as FIM needs)."""
    ids = sorted({i for c in range(32, 127) for i in tokenizer.encode(chr(c))})
    return np.array(ids, dtype=np.int64)


CHUNK_TOKENS = 16 << 20  # stand-in tokens drawn and written at a time: host memory stays ~130 MiB


def write_file(prefix: Path, tokens: int, seq_length: int, min_docs: int, ids: np.ndarray, eod: int, seed: int):
    """An indexed file of at least `tokens` tokens in at least `min_docs` documents, each ending in EOD,
    written a chunk of documents at a time (at 128k tokens a sequence, a validated source's documents
    hold hundreds of millions of tokens: drawn at once they took 12 GiB of host memory).
    Written under this process's own name and renamed into place (.bin, then .idx): two rehearsals or
    plans at once (one shared work directory) may write the same stand-in, whose bytes are the same."""
    idx = Path(str(prefix) + ".idx")
    if idx.is_file() and Path(str(prefix) + ".bin").is_file():
        return
    rng = np.random.default_rng(seed)
    lo, hi = seq_length // 2 + 1, 2 * seq_length + 1
    n = max(min_docs, -(-tokens // ((lo + hi) // 2)) + 1)
    lengths = rng.integers(lo, hi, size=n)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    vocab = int(max(int(ids.max()), eod)) + 1
    tmp = own_temp(prefix, "")
    w = IndexedDatasetWriter(tmp, dtype=token_dtype(vocab))
    per_chunk = max(1, CHUNK_TOKENS // hi)
    try:
        for a in range(0, n, per_chunk):
            part = lengths[a : a + per_chunk]
            flat = ids[rng.integers(0, len(ids), size=int(part.sum()))]
            flat[np.cumsum(part) - 1] = eod
            w.add_documents(flat, part)
        w.finalize()
    except BaseException:
        w.abort()
        raise
    os.replace(str(tmp) + ".bin", str(prefix) + ".bin")
    os.replace(str(tmp) + ".idx", str(prefix) + ".idx")


def signature(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def missing(prefix: str) -> bool:
    return not (os.path.isfile(prefix + ".idx") and os.path.isfile(prefix + ".bin"))


def stand_in_sources(cfg, tokenizer, workdir: Path, samples: int, seed: int = 1234) -> dict[str, list[str]]:
    """{source: prefixes}, each missing prefix replaced by a stand-in file under `workdir` holding
    `samples` samples of the configured sequence length (the files of a source share them by weight);
    a source some phase validates gets enough documents for two held-out ones."""
    d = cfg.data
    ids = printable_ids(tokenizer)
    per_file_tokens = int(samples * (d.seq_length + 1) * (1 + d.surplus) * 1.1) + 4 * d.seq_length
    wanted = [p.valid_sources for p in d.phases]
    validated = None if any(w is None for w in wanted) else {s for w in wanted for s in w}
    out = {}
    for si, (name, src) in enumerate(d.sources.items()):
        checked = d.valid_fraction > 0 and (validated is None or name in validated)
        min_docs = int(np.ceil(2.5 / d.valid_fraction)) if checked else 1
        prefixes = []
        for fi, prefix in enumerate(src.prefixes):
            if not missing(prefix):
                prefixes.append(prefix)
                continue
            sig = signature(
                dict(p=prefix, t=per_file_tokens, s=d.seq_length, m=min_docs, ids=len(ids), e=tokenizer.eod)
            )
            stand = workdir / "data" / f"{name}_{fi}_{sig}"
            write_file(stand, per_file_tokens, d.seq_length, min_docs, ids, tokenizer.eod, seed + 7919 * si + fi)
            prefixes.append(str(stand))
        out[name] = prefixes
    return out
