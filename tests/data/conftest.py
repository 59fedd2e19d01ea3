import numpy as np
import pytest

from megacrystal.config import from_dict, validate_config

from . import corpus as corpus_mod


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return corpus_mod.build(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="session")
def tokenizer(corpus):
    from megacrystal.tokenizer import load_tokenizer

    return load_tokenizer("HuggingFaceTokenizer", corpus["tokenizer"])


def make_config(corpus, out_dir, phases=None, seq_length=64, mbs=2, gbs=8, **data):
    p = corpus["prefixes"]
    d = {
        "tokenizer_model": corpus["tokenizer"],
        "seq_length": seq_length,
        "cache_dir": f"{out_dir}/cache",
        "sources": {
            "prose": {"prefixes": [p["prose"]]},
            "code": {"prefixes": [p["code_a"], p["code_b"]], "kind": "code", "language": "python", "fim": True},
            "snippets": {"prefixes": [p["snippets"]], "kind": "code", "fim": True},
        },
        "phases": phases
        or [
            {"name": "nl", "steps": 5, "blend": {"prose": 0.9, "code": 0.1}},
            {"name": "code", "steps": 7, "blend": {"prose": 0.3, "code": 0.7}, "fim_rate": 0.9},
        ],
    }
    d.update(data)
    cfg = from_dict(
        {
            "model": {"preset": "tiny"},
            "data": d,
            "train": {"micro_batch_size": mbs, "global_batch_size": gbs, "out_dir": str(out_dir)},
        }
    )
    validate_config(cfg)
    return cfg


def write_random(prefix, n_docs, max_len, seed, min_len=1):
    from megacrystal.data.indexed import IndexedDatasetWriter

    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(prefix) as w:
        for _ in range(n_docs):
            w.add_document(rng.integers(0, 1000, size=int(rng.integers(min_len, max_len + 1))))
    return prefix
