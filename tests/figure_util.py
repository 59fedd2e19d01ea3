"""Checks that a figure is a real file matplotlib wrote: a PNG with its signature and a plausible size,
an SVG that parses (its text kept as text, so the titles can be read back)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

SVG = "{http://www.w3.org/2000/svg}"


def png_size(path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND", f"{path}: not a complete PNG"
    w, h = struct.unpack(">II", data[16:24])
    assert w >= 200 and h >= 150 and len(data) > 5000, f"{path}: {w}x{h}, {len(data)} bytes"
    return w, h


def svg_texts(path) -> list[str]:
    root = ET.parse(path).getroot()
    assert root.tag == SVG + "svg", f"{path}: root is {root.tag}"
    assert "Matplotlib" in Path(path).read_text(), f"{path}: not written by matplotlib"
    return ["".join(t.itertext()) for t in root.iter(SVG + "text")]


def axes_count(path) -> int:
    return sum(1 for g in ET.parse(path).getroot().iter(SVG + "g") if g.get("id", "").startswith("axes_"))
