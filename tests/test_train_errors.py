"""`megacrystal train` reports a damaged checkpoint in one line (no traceback), exit 2, like a
config error, and leaves the checkpoint as it was."""

from __future__ import annotations

from megacrystal.train import exit_codes
from tests.test_train_loop import data_dir, run_config, train_cli  # noqa: F401 (fixture)


def test_a_damaged_checkpoint_is_one_line_and_exit_2(data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "damaged"
    ck = out / "checkpoints" / "step_00000002"
    ck.mkdir(parents=True)
    (ck / "trainer.json").write_text('{"step": 2, "lay')  # cut short
    (out / "checkpoints" / "latest").write_text("step_00000002")
    assert train_cli(["--config", str(run_config(data_dir, out))]) == exit_codes.BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"megacrystal train: {ck / 'trainer.json'}: unreadable"), err[-1]
    assert err[-1].endswith("(exit 2)") and not any("Traceback" in x for x in err)
    assert (ck / "trainer.json").read_text() == '{"step": 2, "lay'
