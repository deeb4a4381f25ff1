"""What every command shares: one-line errors, exit codes, and interrupt handling.

Bad input (a file that is not a capture, a damaged fingerprint, a missing tshark, a model that
does not match a fingerprint) ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import NoReturn

import click

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; outputs in progress are discarded."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def fail(prog: str, message: str, code: int = EXIT_ERROR) -> NoReturn:
    first = " ".join(str(message).split()) or "failed"
    click.echo(f"{prog}: error: {first}", err=True)
    sys.exit(code)


def run(command: click.Command, prog: str) -> Callable[[], None]:
    """A console-script entry point that turns every expected failure into one line."""

    def main() -> None:
        from tool.capture import CaptureError
        from tool.fingerprint import FingerprintError

        errors: tuple[type[BaseException], ...] = (CaptureError, FingerprintError, OSError, ValueError)
        from tool.annotate import AnnotateError
        from tool.model import ModelError

        errors += (AnnotateError, ModelError)
        signal.signal(signal.SIGTERM, _raise_interrupted)
        signal.signal(signal.SIGINT, _raise_interrupted)
        try:
            code = command.main(prog_name=prog, standalone_mode=False)
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.ClickException as e:
            fail(prog, e.format_message())
        except click.exceptions.Abort:
            fail(prog, "aborted", EXIT_INTERRUPTED)
        except Interrupted as e:
            # 128 + the signal, as a shell reports a process the signal ended.
            fail(prog, f"interrupted by {e}; no output written", 128 + e.signum)
        except errors as e:
            fail(prog, str(e))
        except BrokenPipeError:
            sys.exit(EXIT_ERROR)
        sys.exit(code or 0)

    return main
