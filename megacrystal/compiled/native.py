"""The C++ helpers module, or None (with one log line) when it was not built."""

from __future__ import annotations

from ..log import say_once

try:
    from . import _native as native  # type: ignore[attr-defined]
except ImportError as e:  # no compiler at install time: numpy fallbacks are used
    native = None
    _why = str(e)
else:
    _why = ""


def get():
    if native is None:
        say_once("native-missing", f"megacrystal.compiled._native not available ({_why}); using numpy fallbacks")
    return native
