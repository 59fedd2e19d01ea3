"""`megacrystal merge --inputs P1 P2 ... --output-prefix OUT`: concatenate indexed-file shards.

Each input is a prefix (P.bin/P.idx), a glob of .idx files, or a directory (every *.idx in it,
sorted). Same dtype required; the output is written as *.tmp and renamed when complete.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

from megacrystal.data.indexed import IndexedFileError, merge


def resolve_prefixes(specs: list[str]) -> list[str]:
    out: list[str] = []
    for s in specs:
        if os.path.isdir(s):
            found = sorted(glob.glob(os.path.join(s, "*.idx")))
        elif glob.has_magic(s):
            found = sorted(glob.glob(s))
        else:
            found = [s]
        if not found:
            raise ValueError(f"--inputs {s}: no .idx files found")
        out += [f[:-4] if f.endswith((".idx", ".bin")) else f for f in found]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="megacrystal merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", nargs="+", required=True, help="prefixes, globs of .idx, or directories")
    ap.add_argument("--output-prefix", required=True, help="writes PREFIX.bin/.idx (not one of the inputs)")
    a = ap.parse_args(argv)
    try:
        prefixes = resolve_prefixes(a.inputs)
        if os.path.abspath(a.output_prefix) in {os.path.abspath(p) for p in prefixes}:
            raise ValueError(f"--output-prefix {a.output_prefix}: is also an input")
        ds = merge(prefixes, a.output_prefix)
    except (ValueError, OSError, IndexedFileError) as e:
        print(f"megacrystal merge: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {a.output_prefix}.bin/.idx: {len(prefixes)} inputs, {ds.num_documents} documents, "
        f"{ds.num_tokens} tokens"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
