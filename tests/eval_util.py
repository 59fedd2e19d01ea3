"""Helpers for the evaluation tests: code documents in an indexed file, and reference "models" for the
FIM and completion scorers (they know the documents and answer by looking the missing text up)."""

from __future__ import annotations

CODE_DOCS = [
    "import os\nimport sys\n\ndef main():\n    print(os.getcwd())\n    return 0\n",
    "def add(a, b):\n    total = a + b\n    return total\n\nprint(add(1, 2))\n",
    "for i in range(10):\n    square = i * i\n    print(i, square)\nprint('done')\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
]


class LookupModel:
    """next_token(ids): the next token of the text missing from the prompt, looked up in `docs`.

    FIM prompts: the text between the prompt's prefix (+ what was generated) and its suffix; plain
    prompts: the rest of the current line. Then EOD."""

    def __init__(self, tok, docs: list[str]):
        self.tok, self.docs = tok, docs

    def __call__(self, ids: list[int]) -> int:
        tok, sp = self.tok, self.tok.special
        ids = [i for i in ids if i != tok.eod]
        if sp["fim_middle"] in ids:
            p, s, m = ids.index(sp["fim_prefix"]), ids.index(sp["fim_suffix"]), ids.index(sp["fim_middle"])
            if s == p + 1:  # SPM: <P><S> suffix <M> prefix generated
                suffix, before = tok.decode(ids[s + 1 : m]), tok.decode(ids[m + 1 :])
            else:  # PSM: <P> prefix <S> suffix <M> generated
                suffix, before = tok.decode(ids[s + 1 : m]), tok.decode(ids[p + 1 : s]) + tok.decode(ids[m + 1 :])
            for doc in self.docs:
                j = doc.find(suffix)
                k = doc.rfind(before, 0, j) if j >= 0 else -1
                if k >= 0:
                    rest = doc[k + len(before) : j]
                    return tok.encode(rest)[0] if rest else tok.eod
            return tok.eod
        before = tok.decode(ids)
        for doc in self.docs:
            if doc.startswith(before):
                rest = doc[len(before) :].split("\n", 1)[0] + "\n"
                return tok.encode(rest)[0]
        return tok.eod


class SilentModel:
    """A model that never fills anything in: it ends the document at once."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, ids):
        return self.tok.eod
