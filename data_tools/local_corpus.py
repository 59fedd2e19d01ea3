"""The local corpus: real prose and real code that exist on any machine with Python; no download.

    megacrystal local-corpus --output DIR [--max-mb-per-source N | --all]
    build_local_corpus(out_dir, max_mb_per_source=4.0) -> summary dict

Writes one jsonl per source (each line {"text", "source", "path", "language"}), in sorted path
order so the same machine always gives the same bytes, plus DIR/summary.json:
    prose_pydoc.jsonl      pydoc_data.topics (the Python reference's topics), English
    prose_packages.jsonl   installed distributions' descriptions/READMEs, English (mostly)
    prose_sharedoc.jsonl   /usr/share/doc READMEs, changelogs, copyright notes (may be empty)
    code_python.jsonl      the standard library's .py files (no site-packages, no tests)
    code_c.jsonl           /usr/include C headers (may be empty)
    code_web.jsonl         HTML/CSS/JS shipped inside installed packages (minified files skipped)
Each source is capped at `max_mb_per_source` MB of text (0 = no cap); exact duplicates are dropped.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Callable, Iterator

from .code_tree import language_of, read_text_file
from .inputs import walk_files

MAX_FILE_BYTES = 1 << 20
MINIFIED_LINE = 400  # mean characters per line above which web code counts as minified
MIN_PROSE_CHARS = 200
SOURCES = ("prose_pydoc", "prose_packages", "prose_sharedoc", "code_python", "code_c", "code_web")

Doc = tuple[str, str, str]  # (text, path, language)


def _pydoc(stats: Counter) -> Iterator[Doc]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        stats["pydoc_data_missing"] += 1
        return
    for name in sorted(topics):
        text = topics[name]
        if text.strip():
            yield text, f"pydoc_data.topics:{name}", "en"


def _packages(stats: Counter) -> Iterator[Doc]:
    import importlib.metadata as md

    seen = {}
    for dist in md.distributions():
        name = (dist.metadata.get("Name") or "").strip()
        if name and name.lower() not in seen:
            seen[name.lower()] = dist
    for key in sorted(seen):
        dist = seen[key]
        meta = dist.metadata
        text = meta.get_payload() if hasattr(meta, "get_payload") else None
        text = text or meta.get("Description") or ""
        if len(text.strip()) < MIN_PROSE_CHARS:
            stats["too_short"] += 1
            continue
        yield text, f"dist:{meta.get('Name')}=={meta.get('Version')}", "en"


_DOC_NAMES = ("readme", "changelog", "changes", "news", "copyright", "authors", "history", "todo", "faq")


def _sharedoc(stats: Counter, root: str = "/usr/share/doc") -> Iterator[Doc]:
    if not os.path.isdir(root):
        stats["no_usr_share_doc"] += 1
        return
    for path in walk_files(root):
        base = os.path.basename(path).lower()
        stem = base[:-3] if base.endswith(".gz") else base
        if not (stem.startswith(_DOC_NAMES) or stem.endswith((".txt", ".md", ".rst"))):
            stats["not_prose_file"] += 1
            continue
        if base.endswith(".gz"):
            try:
                if os.path.getsize(path) > MAX_FILE_BYTES:
                    stats["too_large"] += 1
                    continue
                with gzip.open(path, "rb") as f:
                    data = f.read(MAX_FILE_BYTES + 1)
            except (OSError, EOFError):
                stats["unreadable"] += 1
                continue
            if len(data) > MAX_FILE_BYTES:
                stats["too_large"] += 1
                continue
            if b"\x00" in data[:8192]:
                stats["binary"] += 1
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                stats["not_utf8"] += 1
                continue
        else:
            text = read_text_file(path, stats, MAX_FILE_BYTES)
        if text and text.strip():
            yield text, path, "en"


def _tree(roots: list[str], accept: Callable[[str], bool], stats: Counter, web: bool = False) -> Iterator[Doc]:
    seen_roots = set()
    for root in roots:
        root = os.path.realpath(root)
        if root in seen_roots or not os.path.isdir(root):
            continue
        seen_roots.add(root)
        for path in walk_files(root):
            if not accept(path):
                continue
            text = read_text_file(path, stats, MAX_FILE_BYTES)
            if text is None:
                continue
            if web and len(text) / (text.count("\n") + 1) > MINIFIED_LINE:
                stats["minified"] += 1
                continue
            yield text, path, language_of(path) or "unknown"


def _site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    dirs = [paths["purelib"], paths["platlib"]] + [
        p for p in sys.path if p.endswith(("site-packages", "dist-packages"))
    ]
    return sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)})


def _stdlib_python(stats: Counter) -> Iterator[Doc]:
    root = sysconfig.get_paths()["stdlib"]
    skip = ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__")

    def accept(p: str) -> bool:
        rel = os.path.relpath(p, root).split(os.sep)
        return p.endswith(".py") and not any(part in skip for part in rel[:-1])

    return _tree([root], accept, stats)


def _headers(stats: Counter) -> Iterator[Doc]:
    return _tree(["/usr/include"], lambda p: p.endswith(".h"), stats)


def _web(stats: Counter) -> Iterator[Doc]:
    def accept(p: str) -> bool:
        return p.lower().endswith((".html", ".htm", ".css", ".js")) and not p.endswith(".min.js")

    return _tree(_site_dirs(), accept, stats, web=True)


GATHERERS: dict[str, Callable[[Counter], Iterator[Doc]]] = {
    "prose_pydoc": _pydoc,
    "prose_packages": _packages,
    "prose_sharedoc": _sharedoc,
    "code_python": _stdlib_python,
    "code_c": _headers,
    "code_web": _web,
}


def _write_source(name: str, out_dir: str, cap_bytes: int) -> dict:
    stats: Counter = Counter()
    path = os.path.join(out_dir, f"{name}.jsonl")
    tmp = path + ".tmp"
    docs = size = 0
    capped = False
    hashes = set()
    with open(tmp, "w", encoding="utf-8") as f:
        for text, src_path, lang in GATHERERS[name](stats):
            h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if h in hashes:
                stats["duplicate"] += 1
                continue
            n = len(text.encode("utf-8", "surrogatepass"))
            if cap_bytes and size + n > cap_bytes and docs:
                capped = True
                break
            hashes.add(h)
            f.write(
                json.dumps({"text": text, "source": name, "path": src_path, "language": lang}, ensure_ascii=False)
                + "\n"
            )
            docs += 1
            size += n
    os.replace(tmp, path)
    return {
        "file": os.path.basename(path),
        "documents": docs,
        "text_bytes": size,
        "capped": capped,
        "skipped": dict(sorted(stats.items())),
        "empty": docs == 0,
    }


def build_local_corpus(out_dir: str, max_mb_per_source: float | None = 4.0, sources: tuple[str, ...] = SOURCES) -> dict:
    """Gather every source into `out_dir` (see module doc); returns (and writes) the summary."""
    unknown = [s for s in sources if s not in GATHERERS]
    if unknown:
        raise ValueError(f"local-corpus: unknown source(s) {unknown}; expected some of {list(SOURCES)}")
    os.makedirs(out_dir, exist_ok=True)
    cap = int((max_mb_per_source or 0) * (1 << 20))
    t0 = time.time()
    summary = {
        "output": os.path.abspath(out_dir),
        "max_mb_per_source": max_mb_per_source or None,
        "python": sys.version.split()[0],
        "sources": {},
    }
    for name in sources:
        summary["sources"][name] = _write_source(name, out_dir, cap)
    summary["seconds"] = round(time.time() - t0, 2)
    summary["documents"] = sum(s["documents"] for s in summary["sources"].values())
    summary["text_bytes"] = sum(s["text_bytes"] for s in summary["sources"].values())
    summary["empty_sources"] = [n for n, s in summary["sources"].items() if s["empty"]]
    tmp = os.path.join(out_dir, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "summary.json"))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal local-corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, help="directory for the per-source jsonl files")
    ap.add_argument("--max-mb-per-source", type=float, default=4.0, help="cap per source in MB of text (default 4)")
    ap.add_argument("--all", action="store_true", help="no cap: take every file found")
    ap.add_argument("--sources", default=",".join(SOURCES), help="comma-separated subset of " + ",".join(SOURCES))
    a = ap.parse_args(argv)
    try:
        s = build_local_corpus(
            a.output, None if a.all else a.max_mb_per_source, tuple(x for x in a.sources.split(",") if x)
        )
    except (ValueError, OSError) as e:
        print(f"megacrystal local-corpus: {e}", file=sys.stderr)
        return 2
    for _name, src in s["sources"].items():
        note = " (capped)" if src["capped"] else (" (EMPTY: nothing found on this machine)" if src["empty"] else "")
        print(f"{src['file']:<24} {src['documents']:>7} docs {src['text_bytes'] / 1e6:8.2f} MB{note}")
    print(f"total {s['documents']} docs, {s['text_bytes'] / 1e6:.2f} MB in {s['seconds']} s -> {s['output']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
