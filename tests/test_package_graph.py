"""The house rules a reviewer checks by hand, checked here: the package diagram of docs/architecture.md is
the code's real import graph, no package-level import cycle, no import of another module's private name,
every file under megacrystal/ at most 400 lines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def _graph():
    spec = importlib.util.spec_from_file_location("package_graph", ROOT / "tools" / "package_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_diagram_in_architecture_doc_is_regenerated_from_the_imports():
    g = _graph()
    edges, _ = g.scan()
    doc = g.DOC.read_text()
    assert g.embed(doc, g.render(edges)) == doc, "docs/architecture.md: run python tools/package_graph.py --write"
    assert {"model", "parallel", "optim", "engine", "train", "checkpoint", "hf"} <= set(edges)


def test_no_package_level_import_cycle_and_no_private_import():
    g = _graph()
    edges, bad = g.scan()
    assert g.cycles(edges) == []
    assert bad == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_checks_fail_on_a_cycle_and_on_a_private_import(tmp_path):
    g = _graph()
    root = _tree(
        tmp_path,
        {
            "megacrystal/__init__.py": "",
            "megacrystal/a/__init__.py": "",
            "megacrystal/a/x.py": "from ..b.y import f\n\ndef _helper():\n    pass\n",
            "megacrystal/b/__init__.py": "",
            "megacrystal/b/y.py": "def f():\n    from ..a import x\n",  # lazy imports count too
            "megacrystal/b/z.py": "from ..a.x import _helper\n",
            "megacrystal/compiled/__init__.py": "",
            "megacrystal/compiled/native.py": "from . import _native\n",  # the one allowed case
            "megacrystal/log.py": "import megacrystal.a._secret\n",
        },
    )
    edges, bad = g.scan(root)
    assert edges["a"] == {"b"} and edges["b"] == {"a"}
    assert g.cycles(edges) == [["a", "b"]]
    assert bad == [
        "megacrystal/b/z.py:1: imports private megacrystal.a.x._helper",
        "megacrystal/log.py:1: imports private megacrystal.a._secret",
    ]


def test_render_leaves_out_edges_implied_by_a_longer_path():
    g = _graph()
    edges = {"train": {"engine", "model"}, "engine": {"model"}, "model": set()}
    assert g.render(edges).splitlines()[2:4] == ["  engine --> model", "  train --> engine"]


def test_every_file_under_megacrystal_is_at_most_400_lines():
    long = []
    for p in sorted((ROOT / "megacrystal").rglob("*")):
        if not p.is_file() or "__pycache__" in p.parts or p.suffix in (".so", ".pyd", ".pyc"):
            continue
        n = len(p.read_text().splitlines())
        if n > MAX_LINES:
            long.append(f"{p.relative_to(ROOT)}: {n} lines")
    assert long == [], f"files over {MAX_LINES} lines: {long}"
