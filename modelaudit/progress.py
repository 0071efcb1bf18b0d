"""Stage progress: what a long scan is doing, without tying the library to a terminal.

``api.scan`` tells a ``StageReporter`` (``ScanConfig.progress``) when each stage starts and finishes;
inside a stage, ``track`` reports the steps of a loop whose length is known (the trigger search's
candidate batches), so a display can show an estimate of the time left. Two reporters ship: ``LogReporter``
(one line per stage start and finish through the ``modelaudit`` logger: CI logs and pipes) and
``RichReporter`` (one live display per stage on a terminal). Without a reporter nothing is shown, which is
what the Python API gets by default.

While a stage runs, the progress bars of transformers and huggingface_hub are switched off (their
"Loading weights" bars would draw into the display, or as carriage-return frames into a log), also for
callers of the Python API. The active stage is a context variable, so a loop deep inside a stage needs no
reporter argument.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sized
from contextvars import ContextVar
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

T = TypeVar("T")

LOGGER = logging.getLogger("modelaudit")
"""The package's logger: stage lines at INFO, details at DEBUG (the CLI's ``-v``/``-q`` set its level)."""
HUB_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"
"""huggingface_hub's (and, read when transformers is imported, transformers') switch for progress bars."""
TRANSFORMERS_LOGGING = "transformers.utils.logging"
HUB_TQDM = "huggingface_hub.utils.tqdm"


class StageReporter(Protocol):
    """Receives the progress of a scan; every call must be cheap and must not raise."""

    def stage_started(self, stage: str) -> None:
        """A stage begins."""

    def step(self, what: str, completed: int, total: int | None) -> None:
        """Inside the running stage: ``completed`` of ``total`` steps of ``what`` are done (total None: unknown)."""

    def stage_finished(self, stage: str, status: str, seconds: float) -> None:
        """A stage ended with its coverage status (``ran``, ``failed``, ``skipped``, ...)."""


class EstimateReporter(Protocol):
    """A reporter that also shows the cost model's estimate (optional: ``tell_estimate`` checks for it)."""

    def estimate(self, lines: list[str], stages: dict[str, float]) -> None:
        """The scan's estimate, made as its model stages begin: lines to show, and seconds per stage (each
        stage's display then carries its own estimate)."""


def tell_estimate(reporter: StageReporter | None, lines: list[str], stages: dict[str, float]) -> None:
    """Give a reporter the scan's estimate, when it shows one (reporters written before estimates existed
    need not)."""
    show = getattr(reporter, "estimate", None)
    if show is not None:
        show(lines, stages)


def with_estimate(seconds: float, estimated: float | None) -> str:
    """``12.3 s`` or ``12.3 s, estimated 10 s``."""
    return f"{seconds:.1f} s" + ("" if estimated is None else f", estimated {estimated:.0f} s")


_active: ContextVar[StageReporter | None] = ContextVar("modelaudit_stage_reporter", default=None)


class LogReporter:
    """One line per stage start and finish through the ``modelaudit`` logger (INFO); of the steps only the
    first of each kind, at DEBUG (``-v``), so a piped log gets no frames."""

    def __init__(self, logger: logging.Logger = LOGGER) -> None:
        self.logger = logger
        self._what: str | None = None
        self._estimates: dict[str, float] = {}

    def estimate(self, lines: list[str], stages: dict[str, float]) -> None:
        self._estimates = dict(stages)
        for line in lines:
            self.logger.info("%s", line)

    def stage_started(self, stage: str) -> None:
        self._what = None
        est = self._estimates.get(stage)
        self.logger.info("stage %s: started%s", stage, "" if est is None else f" (estimated {est:.0f} s)")

    def step(self, what: str, completed: int, total: int | None) -> None:
        if what != self._what:
            self._what = what
            self.logger.debug("  %s (%s steps)", what, "?" if total is None else total)

    def stage_finished(self, stage: str, status: str, seconds: float) -> None:
        self.logger.info("stage %s: %s in %s", stage, status, with_estimate(seconds, self._estimates.get(stage)))


class RichReporter:
    """One rich progress display per stage on a terminal: a spinner, what is being done, the elapsed time,
    and, when the stage knows its amount of work, a bar with an estimate of the time left. When the stage
    ends its display is replaced by one summary line."""

    def __init__(self, console: Any) -> None:
        self.console = console
        """A ``rich.console.Console`` (usually on stderr, so stdout stays the report's)."""
        self._progress: Any = None
        self._task: Any = None
        self._estimates: dict[str, float] = {}

    def estimate(self, lines: list[str], stages: dict[str, float]) -> None:
        self._estimates = dict(stages)
        for line in lines:
            self.console.print(line, highlight=False)

    def stage_started(self, stage: str) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        from rich.progress import ProgressColumn, Task
        from rich.text import Text

        class WhenCounted(ProgressColumn):
            """A column shown only while the stage knows how much work the current step has."""

            def __init__(self, inner: ProgressColumn) -> None:
                super().__init__()
                self.inner = inner

            def render(self, task: Task) -> Any:
                return self.inner.render(task) if task.total is not None else Text("")

        self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.fields[stage]}[/]"),
                                  TextColumn("{task.description}"), TimeElapsedColumn(),
                                  TextColumn("{task.fields[eta]}"),
                                  *(WhenCounted(c) for c in (BarColumn(), MofNCompleteColumn(), TextColumn("left"),
                                                             TimeRemainingColumn())),
                                  console=self.console, transient=True)
        est = self._estimates.get(stage)
        self._task = self._progress.add_task("running", total=None, stage=stage,
                                             eta="" if est is None else f"(estimated {est:.0f} s)")
        self._progress.start()

    def step(self, what: str, completed: int, total: int | None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=what, completed=completed, total=total)

    def stage_finished(self, stage: str, status: str, seconds: float) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.console.print(f"[bold]{stage}[/]: {status} ({with_estimate(seconds, self._estimates.get(stage))})",
                           highlight=False)


def reporter_for(stream: IO[str], *, quiet: bool = False) -> StageReporter | None:
    """The reporter a command line wants on ``stream``: none when quiet, a live display on a terminal,
    else start/finish lines (the logger's handler decides where they go)."""
    if quiet:
        return None
    if stream.isatty():
        from rich.console import Console

        return RichReporter(Console(file=stream))
    return LogReporter()


@dataclass
class StageRun:
    """The running stage as ``stage_progress`` hands it to the caller, who sets the outcome."""

    stage: str
    status: str = "interrupted"
    """Coverage status to report at the end; left as is when the stage's code raised."""


@contextlib.contextmanager
def stage_progress(reporter: StageReporter | None, stage: str) -> Iterator[StageRun]:
    """Around one stage's run: report its start and finish (with ``StageRun.status``), make it the target
    of ``track``, and silence the libraries' own bars meanwhile."""
    run = StageRun(stage)
    with library_bars_off():
        if reporter is None:
            yield run
            return
        start = time.perf_counter()
        reporter.stage_started(stage)
        token = _active.set(reporter)
        try:
            yield run
        finally:
            _active.reset(token)
            reporter.stage_finished(stage, run.status, time.perf_counter() - start)


def track(items: Iterable[T], *, what: str, total: int | None = None, bar: bool = False) -> Iterator[T]:
    """Iterate ``items``, reporting each step to the running stage's reporter.

    Without one (a library caller, ``-q``), ``bar=True`` draws a tqdm bar when stderr is a terminal,
    as the loops did before reporters existed.
    """
    if total is None and isinstance(items, Sized):
        total = len(items)
    reporter = _active.get()
    if reporter is None:
        if not bar:
            yield from items
            return
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=what, total=total, disable=None, leave=False)  # None: off when not a tty
        return
    reporter.step(what, 0, total)
    for done, item in enumerate(items, 1):
        yield item
        reporter.step(what, done, total)


@contextlib.contextmanager
def library_bars_off() -> Iterator[None]:
    """Switch off the progress bars of huggingface_hub and transformers, and restore them afterwards.

    Both read the environment switch when imported, so it covers an import inside the stage; libraries
    already imported are switched through their own functions (transformers' also switches the hub's).
    """
    before_env = os.environ.get(HUB_BARS_ENV)
    os.environ[HUB_BARS_ENV] = "1"
    hub, tf = sys.modules.get(HUB_TQDM), sys.modules.get(TRANSFORMERS_LOGGING)
    hub_on = hub is not None and not hub.are_progress_bars_disabled()
    tf_on = tf.is_progress_bar_enabled() if tf is not None else before_env is None
    with warnings.catch_warnings():  # the hub warns when its environment switch says otherwise
        warnings.simplefilter("ignore")
        if hub is not None and hub_on:
            hub.disable_progress_bars()
        if tf is not None:
            tf.disable_progress_bar()
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop(HUB_BARS_ENV, None)
        else:
            os.environ[HUB_BARS_ENV] = before_env
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tf = sys.modules.get(TRANSFORMERS_LOGGING)
            if tf is not None and tf_on:
                tf.enable_progress_bar()
            elif hub_on and hub is not None:
                hub.enable_progress_bars()
