"""Where weights are read from, one block at a time: a rank reads only the blocks it keeps.

    src.shapes()                     {name: stored shape}   (metadata only: nothing is read)
    src.read(name, start, size)      the block [start, start + size) of tensor `name` (a CPU tensor)

`DictSource` wraps tensors already in memory; `FileSource` reads safetensors files by slices
(`safe_open(...).get_slice`, which copies only the requested elements out of the memory-mapped file)
and `torch.save` files memory-mapped (`torch.load` with `mmap=True`: only the touched pages are read);
hf/sliced.py maps a Hugging Face layout onto our names. `Engine.load_full_model_state` takes any of
them (or a plain dict).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class WeightSource:
    def shapes(self) -> dict[str, tuple]:
        raise NotImplementedError

    def read(self, name: str, start: tuple, size: tuple) -> torch.Tensor:
        raise NotImplementedError

    def read_all(self) -> dict[str, torch.Tensor]:
        """Every tensor, whole (for the tools that need the whole model in one process)."""
        return {n: self.read(n, (0,) * len(s), s) for n, s in self.shapes().items()}


def box(start: tuple, size: tuple) -> tuple:
    return tuple(slice(a, a + n) for a, n in zip(start, size, strict=True))


class DictSource(WeightSource):
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def shapes(self) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in self.tensors.items()}

    def read(self, name: str, start: tuple, size: tuple) -> torch.Tensor:
        return self.tensors[name][box(start, size)]


class FileSource(WeightSource):
    """Tensors spread over safetensors / torch.save files: `files` = {tensor name: path}, or None to
    take every tensor of `paths`. Errors name the file (`error` is the exception class to raise)."""

    def __init__(self, paths: list, error=ValueError):
        self.error = error
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple] = {}
        self._open: dict[Path, object] = {}
        for path in paths:
            path = Path(path)
            try:
                if path.suffix == ".safetensors":
                    import safetensors

                    f = safetensors.safe_open(str(path), framework="pt")
                    names = {k: tuple(f.get_slice(k).get_shape()) for k in list(f.keys())}
                else:
                    f = _torch_load(path)
                    names = {k: tuple(v.shape) for k, v in f.items()}
            except Exception as e:
                raise error(f"{path}: cannot read weights ({_first_line(e)})") from None
            self._open[path] = f
            for k, shape in names.items():
                self._where[k] = path
                self._shapes[k] = shape

    def shapes(self) -> dict[str, tuple]:
        return dict(self._shapes)

    def read(self, name: str, start: tuple, size: tuple) -> torch.Tensor:
        path = self._where[name]
        f = self._open[path]
        if any(n == 0 for n in size):
            return torch.empty(size)  # nothing to copy: the dtype does not matter
        try:
            if isinstance(f, dict):
                return f[name][box(start, size)].clone()
            return f.get_slice(name)[box(start, size)]
        except Exception as e:
            raise self.error(f"{path}: cannot read {name!r} ({_first_line(e)})") from None


def files_of(directory: Path, index_name: str, single: str, error) -> list[Path]:
    """The weight files of a directory: those an index (`{"weight_map": {name: file}}`) names, else
    the single file; raises `error` naming what is missing."""
    d = Path(directory)
    index = d / index_name
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise error(f"{index}: expected {{\"weight_map\": {{name: file}}}} ({e})") from None
        for f in files:
            if not (d / f).is_file():
                raise error(f"{index}: names {f}, which is not in {d}")
        return [d / f for f in files]
    return [d / single] if (d / single).is_file() else []


def _torch_load(path: Path) -> dict:
    """A torch.save file's tensors, memory-mapped where its format allows (the zip format since torch 1.6)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
