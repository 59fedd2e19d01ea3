"""Training checkpoints: sharded DCP files any layout can resume, verified, written without stopping training.

    format.py   the on-disk layout and the errors every module here raises
    layout.py   which pieces of which serial tensor each rank holds (tp shards, ZeRO slices)
    dcp.py      torch.distributed.checkpoint glue: piece planners, a weights-only reader, a watched writer
    files.py    manifests and checksums, atomic writes, finding the newest intact checkpoint, retention
    writer.py   `Checkpointer`: save (async), commit, load into an engine
    load.py     an engine's state from a checkpoint (any layout; collective)
    reader.py   the serial model out of a checkpoint or consolidated directory (offline, no process group)

The names below are the package's interface; the modules are its implementation.
"""

from .files import find_resume_point
from .format import CheckpointError, CheckpointSpaceError
from .load import load_engine_state
from .reader import checkpoint_tokenizer, load_model_state, read_checkpoint, resolve_checkpoint, save_consolidated
from .writer import Checkpointer, finish_pending

__all__ = [
    "CheckpointError",
    "CheckpointSpaceError",
    "Checkpointer",
    "checkpoint_tokenizer",
    "find_resume_point",
    "finish_pending",
    "load_engine_state",
    "load_model_state",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_consolidated",
]
