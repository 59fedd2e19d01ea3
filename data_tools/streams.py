"""Compressed corpus streams read to their verified end; damage raises `DamagedInput` naming the byte.

    f, raw = open_stream(path, "jsonl.zst")     # f.read(n) -> bytes (b"" only at a verified end)

zstd: every frame is decoded with its own decompressor, so a stream cut inside a frame is an error
(the library's stream reader reports a clean end-of-file there). A frame's checksum is verified by
libzstd when the frame carries one; a declared content size is compared with the bytes decoded;
skippable frames are passed over; bytes after the last frame that are not a frame are an error.
gzip: the stdlib decoder checks every member's CRC-32 and length and raises on a cut stream; its
errors (EOFError, BadGzipFile, zlib.error) become `DamagedInput` with the compressed offset.
"""

from __future__ import annotations

import gzip
import zlib

FEED_BYTES = 1 << 18  # compressed bytes handed to the zstd decoder at a time (bounds the output per step)
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50


class DamagedInput(ValueError):
    """A corpus file is damaged (cut short, bit rot, not the format its name says). Names file and place."""

    def __init__(self, path: str, where: str, what: str):
        self.path, self.where, self.what = path, where, what
        super().__init__(f"{path}: damaged input at {where}: {what}")

    def __reduce__(self):  # crosses process boundaries (worker -> parent) intact
        return DamagedInput, (self.path, self.where, self.what)

    def after_lines(self, lines: int) -> DamagedInput:
        return DamagedInput(self.path, f"{self.where}, after {lines} complete lines", self.what)


class ZstdFrames:
    """`read(n)` over all frames of a .zst file, verifying each frame's end (see the module docstring)."""

    def __init__(self, raw, path: str):
        import zstandard

        self._z = zstandard
        self._dctx = zstandard.ZstdDecompressor()
        self.raw, self.path = raw, path
        self._obj = None  # decompressor of the frame in progress
        self._in = b""  # compressed bytes not yet fed
        self._at = 0  # compressed offset of self._in[0]
        self._frame_at = 0
        self._frame_out = 0
        self._frame_size: int | None = None
        self._buf = bytearray()
        self._eof = False
        self._error: DamagedInput | None = None

    def _fill(self, need: int) -> None:
        while len(self._in) < need:
            more = self.raw.read(FEED_BYTES)
            if not more:
                return
            self._in += more

    def _start_frame(self) -> None:
        self._fill(18)  # the longest frame header
        head = self._in
        magic = int.from_bytes(head[:4], "little") if len(head) >= 4 else -1
        if magic != _ZSTD_MAGIC and (magic & _SKIPPABLE_MASK) != _SKIPPABLE_MAGIC:
            what = "not a zstd frame" + (" (bytes after the last frame)" if self._at else ": not a zstd file")
            if len(head) < 4:
                what = "a zstd frame header cut short"
            raise DamagedInput(self.path, f"byte {self._at}", what)
        self._frame_size = None
        if magic == _ZSTD_MAGIC:
            try:
                size = self._z.get_frame_parameters(head).content_size
            except self._z.ZstdError as e:
                raise DamagedInput(self.path, f"byte {self._at}", f"bad zstd frame header ({e})") from None
            if size != self._z.CONTENTSIZE_UNKNOWN:
                self._frame_size = size
        self._obj = self._dctx.decompressobj()
        self._frame_at, self._frame_out = self._at, 0

    def _step(self) -> None:
        if not self._in:
            self._in = self.raw.read(FEED_BYTES)
        if not self._in:
            if self._obj is not None:
                raise DamagedInput(
                    self.path,
                    f"byte {self._at} (end of file)",
                    f"the zstd frame that starts at byte {self._frame_at} is cut short",
                )
            self._eof = True
            return
        if self._obj is None:
            self._start_frame()
        chunk, self._in = self._in[:FEED_BYTES], self._in[FEED_BYTES:]
        try:
            out = self._obj.decompress(chunk)
        except self._z.ZstdError as e:
            raise DamagedInput(self.path, f"the zstd frame at byte {self._frame_at}", str(e)) from None
        self._buf += out
        self._frame_out += len(out)
        if self._obj.eof:
            rest = self._obj.unused_data
            self._at += len(chunk) - len(rest)
            self._in = rest + self._in
            self._obj = None
            if self._frame_size is not None and self._frame_out != self._frame_size:
                raise DamagedInput(
                    self.path,
                    f"the zstd frame at byte {self._frame_at}",
                    f"decoded {self._frame_out} bytes, the frame header declares {self._frame_size}",
                )
        else:
            self._at += len(chunk)

    def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at the verified end. Bytes decoded before damage come first, the error next."""
        if self._error is not None and not self._buf:
            raise self._error
        while len(self._buf) < n and not self._eof and self._error is None:
            try:
                self._step()
            except DamagedInput as e:
                if not self._buf:
                    raise
                self._error = e
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def close(self) -> None:
        self._buf = bytearray()


class GzipChecked:
    """`read(n)` of a gzip stream whose decoder errors become `DamagedInput` (with the compressed offset)."""

    PIECE = 1 << 16

    def __init__(self, raw, path: str):
        self.raw, self.path = raw, path
        self._f = gzip.GzipFile(fileobj=raw, mode="rb")
        self._error: DamagedInput | None = None

    def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at the verified end. Bytes decoded before damage come first, the error next."""
        if self._error is not None:
            raise self._error
        parts, got = [], 0
        while got < n:
            try:
                piece = self._f.read(min(self.PIECE, n - got))
            except (OSError, EOFError, zlib.error) as e:
                self._error = DamagedInput(self.path, f"compressed byte ~{self.raw.tell()}", f"gzip: {e}")
                if not parts:
                    raise self._error from None
                break
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def close(self) -> None:
        self._f.close()


class _Plain:
    def __init__(self, raw):
        self.read = raw.read

    def close(self) -> None:
        pass


def open_stream(path: str, fmt: str):
    """(stream with a verifying read(n), the raw file under it: raw.tell() is the on-disk position)."""
    raw = open(path, "rb", buffering=0)
    if fmt == "jsonl.gz":
        return GzipChecked(raw, path), raw
    if fmt == "jsonl.zst":
        return ZstdFrames(raw, path), raw
    return _Plain(raw), raw
