"""Source files as documents: language from the extension, binary and huge files skipped (counted)."""

from __future__ import annotations

import os
from collections import Counter

# Extension -> language (StarCoderData's language names where they overlap).
LANGUAGES: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".c": "c",
    ".h": "c",
    ".cc": "c++",
    ".cpp": "c++",
    ".cxx": "c++",
    ".hpp": "c++",
    ".hh": "c++",
    ".hxx": "c++",
    ".cu": "cuda",
    ".cuh": "cuda",
    ".java": "java",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".scss": "scss",
    ".go": "go",
    ".rs": "rust",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "c-sharp",
    ".swift": "swift",
    ".kt": "kotlin",
    ".scala": "scala",
    ".sh": "shell",
    ".bash": "shell",
    ".pl": "perl",
    ".pm": "perl",
    ".lua": "lua",
    ".r": "r",
    ".jl": "julia",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".sql": "sql",
    ".f90": "fortran",
    ".f": "fortran",
    ".m": "matlab",
    ".tex": "tex",
    ".md": "markdown",
    ".rst": "restructuredtext",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".json": "json",
    ".xml": "xml",
    ".cmake": "cmake",
    ".proto": "protobuf",
    ".txt": "text",
    ".ipynb": "jupyter",
}
SPECIAL_NAMES = {"makefile": "makefile", "cmakelists.txt": "cmake", "dockerfile": "dockerfile"}

MAX_FILE_BYTES = 1 << 20  # StarCoder-style cap: larger files are skipped as "too_large"
SNIFF_BYTES = 8192


def language_of(path: str) -> str | None:
    name = os.path.basename(path).lower()
    if name in SPECIAL_NAMES:
        return SPECIAL_NAMES[name]
    return LANGUAGES.get(os.path.splitext(name)[1])


def read_text_file(
    path: str, stats: Counter, max_bytes: int = MAX_FILE_BYTES, require_language: bool = False
) -> str | None:
    """The file's text, or None (with the reason counted in `stats`) when it is skipped."""
    if require_language and language_of(path) is None:
        stats["unknown_language"] += 1
        return None
    try:
        size = os.path.getsize(path)
        if max_bytes and size > max_bytes:
            stats["too_large"] += 1
            return None
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        stats["unreadable"] += 1
        return None
    if b"\x00" in data[:SNIFF_BYTES]:
        stats["binary"] += 1
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        stats["not_utf8"] += 1
        return None
    if not text.strip():
        stats["empty"] += 1
        return None
    return text
