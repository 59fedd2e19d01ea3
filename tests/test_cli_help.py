"""Every `megacrystal <command> --help` (cli.py COMMANDS), rendered in-process: the right program name,
a help text for every option, no text that stops mid-sentence; errors go to stderr."""

from __future__ import annotations

import argparse
import importlib

import pytest

from megacrystal.cli import COMMANDS
from megacrystal.cli import main as cli_main

# a text ending in one of these words (or a comma/colon/...) was cut off
DANGLING = {"also", "and", "or", "but", "the", "a", "an", "of", "e.g.", "i.e."}


def _cut_off(text: str) -> bool:
    t = " ".join(text.split())
    return t.endswith((",", ";", ":", "(", "-", "/", "->")) or t.rsplit(" ", 1)[-1].lower() in DANGLING


def _render(name: str, monkeypatch, capsys) -> tuple[argparse.ArgumentParser, str]:
    module, func, _ = COMMANDS[name]
    fn = getattr(importlib.import_module(module), func)
    shown = []
    original = argparse.ArgumentParser.print_help

    def record(self, file=None):
        shown.append(self)
        return original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    with pytest.raises(SystemExit) as e:
        fn(["--help"])
    assert e.value.code == 0
    assert len(shown) == 1
    return shown[0], capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_names_the_command_and_documents_every_option(name, monkeypatch, capsys):
    parser, out = _render(name, monkeypatch, capsys)
    assert out.startswith(f"usage: megacrystal {name} ")
    assert parser.description and not _cut_off(parser.description), parser.description
    if parser.epilog:
        assert not _cut_off(parser.epilog), parser.epilog
    for action in parser._actions:
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"megacrystal {name}: {label} has no help"
        assert not _cut_off(action.help), f"megacrystal {name} {label}: {action.help!r}"


def test_the_cut_off_check_catches_what_it_should():
    assert _cut_off("`megacrystal train --config C.yaml [dotted.key=value ...]`, also")
    assert _cut_off("per phase:") and _cut_off("a run config, or")
    assert not _cut_off("HF directory -> model directory") and not _cut_off("stop after preprocessing")


def test_top_level_help_lists_every_command(capsys):
    assert cli_main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, _, help_) in COMMANDS.items():
        assert f"  {name}" in out and help_ in out
        assert not _cut_off(help_)


@pytest.mark.parametrize("name", ["export-hf", "import-hf"])
def test_hf_commands_describe_themselves_alike_in_both_helps(name, monkeypatch, capsys):
    parser, _ = _render(name, monkeypatch, capsys)
    assert parser.description == COMMANDS[name][2]


def test_plot_errors_go_to_stderr(tmp_path, capsys):
    assert cli_main(["plot", "--run", str(tmp_path / "no-such-run")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("megacrystal plot: ") and "no-such-run" in err
