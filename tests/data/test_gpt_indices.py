"""GPT document/sample/shuffle indices equal megatron-core 0.16.1's, native and numpy paths."""

import numpy as np
import pytest

from megacrystal.compiled import native
from megacrystal.data import gpt_dataset as G
from megacrystal.data.indexed import IndexedDataset

from . import megatron_oracle as oracle
from .conftest import write_random

# (documents, max doc length, seq_length, samples, seed, split subset)
MATRIX = [
    (50, 40, 16, 100, 1, False),  # 2 epochs, final epoch separated
    (50, 40, 16, 1000, 2, True),  # many epochs
    (200, 100, 64, 57, 3, False),  # less than one epoch
    (7, 12, 8, 500, 4, True),  # tiny corpus, 38 epochs
    (1000, 300, 128, 20000, 5, False),
    (30, 60, 32, 33, 6, True),
    (40, 30, 16, 140, 7, False),  # final epoch large enough: not separated
    (300, 5, 2, 999, 8, False),  # seq_length 2, short documents
]


@pytest.mark.parametrize("n_docs,max_len,seq,samples,seed,subset", MATRIX)
def test_arrays_equal_megatron_core(tmp_path, n_docs, max_len, seq, samples, seed, subset):
    prefix = write_random(str(tmp_path / "d"), n_docs, max_len, seed)
    ds = IndexedDataset(prefix)
    docs = np.arange(n_docs, dtype=np.int32)
    if subset:
        docs = docs[np.random.default_rng(seed).random(n_docs) < 0.7]
    ref = oracle.gpt_arrays(prefix, docs, seq, samples, seed, str(tmp_path / "mcore"))
    ours = G.build_indices(ds.sequence_lengths, docs, seq, samples, seed)
    for name, a, b in zip(("document", "sample", "shuffle"), ref, ours, strict=True):
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_matrix_covers_both_final_epoch_cases(tmp_path):
    seen = set()
    for n_docs, max_len, seq, samples, seed, subset in MATRIX:
        sizes = IndexedDataset(write_random(str(tmp_path / f"d{seed}"), n_docs, max_len, seed)).sequence_lengths
        docs = np.arange(n_docs)
        if subset:
            docs = docs[np.random.default_rng(seed).random(n_docs) < 0.7]
        tokens = int(sizes[docs].sum())
        if G.num_epochs(tokens, samples, seq) > 1:
            seen.add(G.separate_final_epoch(tokens, samples, seq))
    assert seen == {True, False}


def test_numpy_fallback_gives_the_same_arrays(tmp_path, monkeypatch):
    prefix = write_random(str(tmp_path / "d"), 120, 50, 11)
    sizes = IndexedDataset(prefix).sequence_lengths
    docs = np.arange(120, dtype=np.int32)
    fast = G.build_indices(sizes, docs, 24, 700, 9)
    monkeypatch.setattr(native, "get", lambda: None)
    slow = G.build_indices(sizes, docs, 24, 700, 9)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.uint32, np.int64])
@pytest.mark.parametrize("n", [1, 2, 3, 64, 65, 1000, 100_003])
def test_native_shuffle_is_numpy_legacy_shuffle(dtype, n):
    if native.get() is None:
        pytest.skip("native helpers not built")
    seed = n % 97
    a = (np.arange(n) % 120).astype(dtype)
    b = a.copy()
    rs_np, rs_ours = np.random.RandomState(seed), np.random.RandomState(seed)
    rs_np.randint(5)  # a state mid-stream
    rs_ours.randint(5)
    rs_np.shuffle(a)
    G.shuffle_(b, rs_ours)
    np.testing.assert_array_equal(a, b)
    assert rs_np.randint(1 << 30, size=4).tolist() == rs_ours.randint(1 << 30, size=4).tolist()


def test_sample_reads_consecutive_overlapping_windows(tmp_path):
    prefix = write_random(str(tmp_path / "d"), 20, 30, 3)
    ds = IndexedDataset(prefix)
    ix = G.GPTIndex(ds, np.arange(20), 16, 30, seed=5)
    flat = np.concatenate([ds[int(d)] for d in ix.document_index]).astype(np.int64)
    order = np.argsort(ix.shuffle_index)
    for k in range(len(ix)):
        tokens, parts = ix.sample(int(order[k]))  # unshuffled sample k
        assert len(tokens) == 17 and sum(p.length for p in parts) == 17
        np.testing.assert_array_equal(tokens, flat[16 * k : 16 * k + 17])


def test_sample_index_options_and_empty_documents_vs_megatron_core():
    """build_sample_idx with drop_last_partial and extra token on/off, zero-length documents included,
    native and numpy paths (cases where megatron-core's own assertion fails are skipped)."""
    oracle.require()
    from megatron.core.datasets import helpers

    rng = np.random.default_rng(0)
    compared = 0
    for trial in range(120):
        n = int(rng.integers(1, 40))
        sizes = rng.integers(1, 40, n).astype(np.int32)
        if trial % 3 == 0:
            sizes[rng.integers(n)] = 0
        epochs = int(rng.integers(1, 4))
        doc_idx = np.tile(np.arange(n, dtype=np.int32), epochs)
        rng.shuffle(doc_idx)
        seq, tokens = int(rng.integers(2, 30)), int(sizes.sum())
        if tokens < 2:
            continue
        for drop in (True, False):
            for extra in (1, 0):
                try:
                    ref = helpers.build_sample_idx(sizes, doc_idx, seq, epochs, tokens, drop, bool(extra))
                except AssertionError:
                    continue
                got = G.build_sample_index(sizes, doc_idx, seq, epochs, tokens, drop, extra)
                npy = G._sample_index_numpy(sizes, doc_idx, seq, epochs, tokens, drop, extra, ref.dtype)
                np.testing.assert_array_equal(ref, got)
                np.testing.assert_array_equal(ref, npy)
                compared += 1
    assert compared > 300
