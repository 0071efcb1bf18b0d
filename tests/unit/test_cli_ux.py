"""Issue 20 items 1, 2 and 8: stage progress, verbosity, and one set of options across the commands."""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import pty
import re
import shutil
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from modelaudit.api import ScanConfig
from modelaudit.api import scan as run_scan
from modelaudit.cli import main
from modelaudit.cli.diff import diff
from modelaudit.cli.probe import probe
from modelaudit.cli.scan import scan, triggers
from modelaudit.progress import LogReporter, RichReporter, reporter_for, stage_progress, track
from modelaudit.registry import writers

@pytest.fixture(autouse=True)
def _keep_library_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-v`` changes environment switches and library log levels; every test starts from the same ones."""
    for env in ("TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY"):
        monkeypatch.setenv(env, os.environ.get(env, "error"))
    for name in ("transformers", "huggingface_hub"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


class Recorder:
    """A reporter that writes down what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def stage_started(self, stage: str) -> None:
        self.events.append(("start", stage))

    def step(self, what: str, completed: int, total: int | None) -> None:
        self.events.append(("step", what, str(completed), str(total)))

    def stage_finished(self, stage: str, status: str, seconds: float) -> None:
        self.events.append(("finish", stage, status))


# -- item 1: progress -------------------------------------------------------------------------------------

def test_the_reporter_hears_each_stage_start_and_finish_in_order(clean_model: Path) -> None:
    rec = Recorder()
    run_scan(clean_model, config=ScanConfig(stages=("weights", "static"), progress=rec))
    assert rec.events == [("start", "static"), ("finish", "static", "ran"),
                          ("start", "weights"), ("finish", "weights", "not-applicable")]


def test_track_reports_steps_of_a_known_amount_to_the_running_stage() -> None:
    rec = Recorder()
    with stage_progress(rec, "triggers") as run:
        assert list(track(range(3), what="screening")) == [0, 1, 2]
        run.status = "ran"
    assert rec.events == [("start", "triggers"), ("step", "screening", "0", "3"), ("step", "screening", "1", "3"),
                          ("step", "screening", "2", "3"), ("step", "screening", "3", "3"),
                          ("finish", "triggers", "ran")]
    assert list(track(range(2), what="no stage")) == [0, 1]  # no reporter: nothing to tell, nothing drawn


def test_piped_lines_name_each_loop_once_under_verbose() -> None:
    logger = logging.getLogger("modelaudit.test-ux")
    logger.setLevel(logging.DEBUG)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        with stage_progress(LogReporter(logger), "triggers") as run:
            for what in ("screening", "controls"):
                list(track(range(50), what=what))
            run.status = "ran"
    finally:
        logger.removeHandler(handler)
    assert records[:-1] == ["stage triggers: started", "  screening (50 steps)", "  controls (50 steps)"]
    assert records[-1].startswith("stage triggers: ran in ")


def test_a_terminal_gets_a_live_display_and_a_pipe_gets_lines() -> None:
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        assert isinstance(reporter_for(tty), RichReporter)
    os.close(master)
    assert isinstance(reporter_for(io.StringIO()), LogReporter)
    assert reporter_for(io.StringIO(), quiet=True) is None


def test_the_live_display_shows_the_work_elapsed_and_time_left() -> None:
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=True, width=120))
    with stage_progress(reporter, "triggers") as run:
        for _ in track(range(4), what="screening 512 insertions"):
            reporter._progress.refresh()
        run.status = "ran"
    text = out.getvalue()
    assert "\x1b[" in text and "screening 512 insertions" in text and "4/4" in text
    assert "left" in text and "0:00:00" in text  # elapsed and the estimate of the time left
    last = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text.splitlines()[-1])
    assert last.startswith("triggers: ran (")  # the display gives way to one summary line


def test_piped_scan_writes_only_stage_lines_and_quiet_writes_nothing(clean_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code, _, err = _run("scan", str(clean_model), "--stages", "static", "--format", "json", "-o", str(out))
    lines = err.splitlines()
    assert code == 0 and "\r" not in err
    assert lines[0] == "modelaudit: stage static: started"
    assert lines[1].startswith("modelaudit: stage static: ran in ") and lines[1].endswith(" s")
    assert lines[2:] == [f"modelaudit: pass: report written to {out}"]
    code, stdout, err = _run("-q", "scan", str(clean_model), "--stages", "static", "--format", "json", "-o", str(out))
    assert code == 0 and err == "" and stdout == ""


def test_library_bars_are_off_while_a_stage_runs(clean_model: Path, capfd: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' "Loading weights" bar leaked from the Python API (the CLI only set an environment switch)."""
    from modelaudit.loading import load_model

    tf = importlib.import_module("transformers.utils.logging")
    was = tf.is_progress_bar_enabled()
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    warnings.filterwarnings("ignore", message="Cannot enable progress bars")  # the hub's own switch says no
    try:
        tf.enable_progress_bar()
        load_model(clean_model, device="cpu")
        assert "Loading weights" in capfd.readouterr().err  # what a library caller saw
        with stage_progress(None, "triggers"):
            load_model(clean_model, device="cpu")
        assert "Loading weights" not in capfd.readouterr().err
        assert tf.is_progress_bar_enabled()  # the caller's own setting is back afterwards
    finally:
        (tf.enable_progress_bar if was else tf.disable_progress_bar)()


# -- item 2: verbosity ------------------------------------------------------------------------------------

def test_verbose_shows_the_traceback_above_an_unexpected_error(monkeypatch: pytest.MonkeyPatch,
                                                               clean_model: Path) -> None:
    scan_cli = importlib.import_module("modelaudit.cli.scan")

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(scan_cli, "run_scan", broken)
    code, _, err = _run("-v", "scan", str(clean_model), "--stages", "static")
    assert code == 3 and "Traceback" in err and 'raise TypeError("a bug")' in err
    assert err.rstrip().splitlines()[-1].startswith("modelaudit: error: unexpected TypeError: a bug")
    code, _, err = _run("scan", str(clean_model), "--stages", "static")
    assert code == 3 and "Traceback" not in err


def test_verbose_raises_library_logging() -> None:
    _run("-v", "scan")  # the group's options apply before the command's usage error
    assert logging.getLogger("transformers").level == logging.INFO
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info"
    _run("-vv", "scan")
    assert logging.getLogger("huggingface_hub").level == logging.DEBUG


# -- item 8: one set of options ---------------------------------------------------------------------------

def test_format_and_fail_on_are_choices_and_hub_options_are_everywhere() -> None:
    for command in (scan, triggers, diff):
        params = {p.name: p for p in command.params}
        assert list(params["fmt"].type.choices) == writers.names(), command.name  # type: ignore[attr-defined]
        severities = list(params["fail_on"].type.choices)  # type: ignore[attr-defined]
        assert severities == ["info", "low", "medium", "high", "critical"]
    for command in (scan, triggers, diff, probe):
        assert {"revision", "cache_dir", "offline"} <= {p.name for p in command.params}, command.name
    code, _, err = _run("scan", "x", "--fail-on", "severe")
    assert code == 2 and "'severe' is not one of 'info'" in err


def test_dash_output_is_standard_output(clean_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = _run("scan", str(clean_model), "--stages", "static", "--format", "json", "-o", "-")
    assert code == 0 and json.loads(stdout)["verdict"] == "pass"
    assert not (tmp_path / "-").exists()


def test_several_targets_one_report_each_and_the_worst_exit(clean_model: Path, tampered_model: Path,
                                                            tmp_path: Path) -> None:
    other = tmp_path / "b" / "clean"  # the same name in another folder gets its own file
    shutil.copytree(clean_model, other)
    out = tmp_path / "reports" / "r.json"
    out.parent.mkdir()
    code, _, err = _run("scan", str(clean_model), str(tampered_model), str(other), "--stages", "static",
                        "--format", "json", "-o", str(out))
    assert code == 1, err
    verdicts = {p.name: json.loads(p.read_text())["verdict"] for p in out.parent.iterdir()}
    assert verdicts == {"r-clean.json": "pass", "r-tampered.json": "unsafe-files", "r-clean-2.json": "pass"}
    code, _, err = _run("scan", str(tampered_model), str(tmp_path / "absent"), "--stages", "static",
                        "--format", "json", "-o", str(out))
    assert code == 3  # incomplete (an unreadable target) ranks above findings
    assert "absent" in err and "no such file or folder" in err


def test_diff_renders_every_report_format(clean_model: Path) -> None:
    code, stdout, err = _run("diff", str(clean_model), str(clean_model), "--format", "sarif", "-o", "-")
    assert code == 0, err
    sarif = json.loads(stdout)
    assert sarif["runs"][0]["tool"]["driver"]["name"]
