"""megatron-core 0.16.1 as the test oracle (dev-only dependency): its GPTDataset arrays and
blending indices for the same inputs. Tests skip with a reason when it is not installed."""

from __future__ import annotations

import numpy as np
import pytest


def require():
    try:
        import megatron.core.datasets.gpt_dataset  # noqa: F401
        from megatron.core.datasets import helpers_cpp  # noqa: F401
    except Exception as e:  # pragma: no cover - environment dependent
        pytest.skip(f"megatron-core (the oracle) not importable: {e}")


class _Tok:
    """The few tokenizer attributes GPTDatasetConfig reads."""

    def __init__(self, eod=0, vocab_size=1000):
        self.eod = eod
        self.vocab_size = vocab_size
        self.pad = -1
        self.unique_identifiers = {"class": "oracle-tokenizer"}


def gpt_arrays(prefix: str, documents: np.ndarray, seq_length: int, num_samples, seed: int, cache_dir: str):
    """(document_index, sample_index, shuffle_index) from megatron-core's GPTDataset."""
    require()
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MIndexed
    from megatron.core.datasets.utils import Split

    cfg = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=([prefix], None),
        split="1,0,0",
        path_to_cache=cache_dir,
        tokenizer=_Tok(),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    ds = GPTDataset(MIndexed(prefix), prefix, np.asarray(documents, dtype=np.int32), num_samples, Split.train, cfg)
    return np.asarray(ds.document_index), np.asarray(ds.sample_index), np.asarray(ds.shuffle_index)


def blending(weights, size: int):
    require()
    from megatron.core.datasets import helpers
    from megatron.core.datasets.utils import normalize

    w = np.array(normalize(list(weights)), dtype=np.float64)
    src = np.zeros(size, dtype=np.int16)
    idx = np.zeros(size, dtype=np.int64)
    helpers.build_blending_indices(src, idx, w, len(w), size, False)
    return src, idx


def sizes_per_dataset(weights, total: int, surplus: float = 0.005):
    require()
    from megatron.core.datasets.blended_megatron_dataset_builder import _get_size_per_split_per_dataset
    from megatron.core.datasets.utils import normalize

    return [s[0] for s in _get_size_per_split_per_dataset(normalize(list(weights)), [total], surplus)]
