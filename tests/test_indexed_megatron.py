"""Round trip with megatron-core's own reader and writer (a dev-only test dependency)."""

import numpy as np
import pytest

from megacrystal.data.indexed import IndexedDataset, IndexedDatasetWriter, merge

mi = pytest.importorskip("megatron.core.datasets.indexed_dataset")
torch = pytest.importorskip("torch")

DOCS = [[5, 6, 7], [1], list(range(100, 300)), [65000, 2], [9] * 17]


def test_megatron_reads_ours(tmp_path):
    with IndexedDatasetWriter(tmp_path / "ours", dtype=np.uint16) as w:
        w.add_documents(np.concatenate([np.array(d) for d in DOCS[:3]]), [len(d) for d in DOCS[:3]])
        w.add_document(DOCS[3])
        w.add_document(DOCS[4][:10] + DOCS[4][10:], lengths=[10, 7])  # one document, two sequences
    theirs = mi.IndexedDataset(str(tmp_path / "ours"), mmap=True)
    seqs = DOCS[:4] + [DOCS[4][:10], DOCS[4][10:]]
    assert len(theirs) == len(seqs)
    for i, s in enumerate(seqs):
        assert theirs[i].tolist() == s and theirs[i].dtype == np.uint16
    assert theirs.document_indices.tolist() == [0, 1, 2, 3, 4, 6]
    assert theirs.get(2, offset=10, length=5).tolist() == DOCS[2][10:15]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_ours_reads_megatron_builder_output(tmp_path, dtype):
    prefix = str(tmp_path / "theirs")
    b = mi.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for d in DOCS[:4]:
        b.add_item(torch.tensor(d))
        b.end_document()
    b.add_document(torch.tensor(DOCS[4]), [10, 7])
    b.finalize(prefix + ".idx")
    ours = IndexedDataset(prefix)
    assert ours.dtype == np.dtype(dtype)
    assert [ours[i].tolist() for i in range(4)] == DOCS[:4]
    assert ours.num_documents == 5 and ours.document(4).tolist() == DOCS[4]
    # merging Megatron's file with ours gives what Megatron's own merge gives
    with IndexedDatasetWriter(tmp_path / "ours", dtype=dtype) as w:
        for d in DOCS:
            w.add_document(d)
    merge([prefix, str(tmp_path / "ours")], tmp_path / "merged")
    mb = mi.IndexedDatasetBuilder(str(tmp_path / "mmerged.bin"), dtype=dtype)
    mb.add_index(prefix)
    mb.add_index(str(tmp_path / "ours"))
    mb.finalize(str(tmp_path / "mmerged.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"merged{ext}").read_bytes() == (tmp_path / f"mmerged{ext}").read_bytes()
