"""The extras table in docs/kernels.md matches setup.py's extras_require, and no extra names a
package other than the one meant (the registry's `apex` is an unrelated web toolkit; flash-attn 2 is a
source build that fails inside pip's isolated build)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_extras() -> dict[str, list[str]]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def docs_table() -> dict[str, list[str]]:
    rows = {}
    for line in (ROOT / "docs" / "kernels.md").read_text().splitlines():
        m = re.match(r"\| `([a-z0-9]+)` \| (.+?) \|", line)
        if m:
            rows[m.group(1)] = re.findall(r"`([^`]+)`", m.group(2))
    return rows


def test_extras_table_matches_setup():
    assert docs_table() == setup_extras()


def test_no_extra_installs_an_unrelated_or_unbuildable_package():
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for reqs in setup_extras().values() for r in reqs}
    assert "apex" not in names  # PyPI's apex is not NVIDIA apex
    assert "flash-attn" not in names  # a source build needing a CUDA torch: a recipe, not an extra
    assert {"flash-attn-4", "nvidia-dali-cuda130", "triton"} <= names
