"""Per-phase checkpoint interval and validation sources: the rules, and one short real run."""

from megacrystal.config import PhaseConfig
from megacrystal.train.lr_schedule import Schedule
from megacrystal.train.phase_policy import phase_validation, save_due
from tests.test_train_loop import data_dir, read_metrics, run_config, train_cli  # noqa: F401 (fixture)


def test_save_steps_count_from_each_phase_start_and_include_its_end():
    phases = [PhaseConfig(name="a"), PhaseConfig(name="b", save_interval=4), PhaseConfig(name="c", save_interval=0)]
    sched = Schedule(phases, [7, 10, 5])
    saved = [s for s in range(1, 23) if save_due(s, sched.span(s - 1), phases[sched.span(s - 1).index], 3)]
    # a: every 3 of the run's default + its end (7); b: 4 and 8 steps into it + its end (17); c: none
    assert saved == [3, 6, 7, 11, 15, 17]
    # train.keep_every counts the run's steps, whatever the phase: a checkpoint at every multiple of 5 too
    saved = [s for s in range(1, 23) if save_due(s, sched.span(s - 1), phases[sched.span(s - 1).index], 3, 5)]
    assert saved == [3, 5, 6, 7, 10, 11, 15, 17, 20]


def test_validation_sources_per_phase():
    valid = {"prose": 1, "code": 2}
    assert phase_validation(valid, PhaseConfig()) == valid
    assert phase_validation(valid, PhaseConfig(valid_sources=["code", "absent"])) == {"code": 2}


def test_run_saves_and_validates_per_phase(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    overrides = ["data.phases.0.valid_sources=[prose]", "data.phases.1.save_interval=3", "train.save_interval=0"]
    assert train_cli(["--config", str(run_config(data_dir, out)), *overrides]) == 0
    rows = read_metrics(out)
    assert set(rows[3]["valid_loss"]) == {"prose"} and set(rows[7]["valid_loss"]) == {"prose", "code"}
    saved = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert saved == ["step_00000007", "step_00000008"]  # 3 steps into phase 2, and the run's end
