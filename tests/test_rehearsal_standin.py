"""Stand-in data files of the rehearsal (rehearsal/standin.py) in a work directory that two rehearsals
or plans share (the default one, or the planner's cache): a second writer of the same stand-in, while
the first is still writing, must leave both finishing and one whole file pair."""

import numpy as np
import pytest

from megacrystal.data.indexed import IndexedDataset, IndexedDatasetWriter
from megacrystal.rehearsal import standin


def test_a_second_writer_of_the_same_stand_in_mid_write_leaves_both_finishing(tmp_path, monkeypatch):
    prefix = tmp_path / "data" / "web_0_abc"
    ids, eod, args = np.arange(10, 60, dtype=np.int64), 2, dict(tokens=5000, seq_length=64, min_docs=3, seed=7)
    real_finalize = IndexedDatasetWriter.finalize
    nested = []

    def finalize(self, publish=True):
        if not nested:  # the first writer's files are written, not yet renamed: another process starts the same
            nested.append(True)
            standin.write_file(prefix, ids=ids, eod=eod, **args)
            assert not standin.missing(str(prefix))
        return real_finalize(self, publish)

    monkeypatch.setattr(IndexedDatasetWriter, "finalize", finalize)
    standin.write_file(prefix, ids=ids, eod=eod, **args)
    assert nested
    ds = IndexedDataset(str(prefix))
    lengths = np.asarray(ds.sequence_lengths)
    assert len(lengths) >= 3 and lengths.sum() >= 5000
    tokens = np.concatenate([np.asarray(ds[i]) for i in range(len(ds))])
    assert (tokens[np.cumsum(lengths) - 1] == eod).all() and set(np.unique(tokens)) <= set(ids.tolist()) | {eod}
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["web_0_abc.bin", "web_0_abc.idx"]


def test_a_failed_write_leaves_no_files(tmp_path, monkeypatch):
    prefix = tmp_path / "data" / "web_0_abc"

    def full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(IndexedDatasetWriter, "add_documents", full)
    with pytest.raises(OSError, match="No space"):
        standin.write_file(prefix, 5000, 64, 3, np.arange(10, 60), 2, 7)
    assert list(prefix.parent.iterdir()) == []
