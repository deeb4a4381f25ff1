"""What every command shares: one-line errors, exit codes, interrupt handling, and shared options.

Bad input (a file that is not a capture, a damaged fingerprint, a missing tshark, a model that
does not match a fingerprint) ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn

import click

from tool.constants import HOST_SCORES, MAX_FALSE_MATCH, PACKETS

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE: what a shell reports for `cmd | head` when cmd is killed by the broken pipe.
EXIT_BROKEN_PIPE = 141


# -f / --fingerprint, as every command that scores takes it.
fingerprint_option = click.option(
    "-f",
    "--fingerprint",
    "fingerprints",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A fingerprint file from dnp-enroll; repeat for several.",
)


def verdict_options(max_false_match_help: str, threshold_help: str) -> Callable:
    """--max-false-match and --threshold, the verdict's two rules, and --judge-routers, as every
    command that scores takes them (NaN refused); `check_verdict` refuses both rules at once."""

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--judge-routers",
            is_flag=True,
            help="Give routers (hosts that forward the internet's packets) a verdict too, on their own "
            "packets less their answers to clients: to find a router that is itself the rogue device. "
            "By default a router is shown as one and never named as a device.",
        )(command)
        command = click.option(
            "--threshold", type=click.FloatRange(-1, 1), callback=finite, help=threshold_help
        )(command)
        return click.option(
            "--max-false-match",
            type=click.FloatRange(0, 1, min_open=True),
            callback=finite,
            help=f"{max_false_match_help}  [default: {MAX_FALSE_MATCH:g}]",
        )(command)

    return decorate


def check_verdict(threshold: float | None, max_false_match: float | None) -> None:
    """One verdict rule: a raw --threshold or a --max-false-match, not both."""
    if threshold is not None and max_false_match is not None:
        raise click.UsageError("give --threshold or --max-false-match, not both")


def host_score_option(help: str) -> Callable:
    """--host-score, as dnp-scan and dnp-eval both take it (one of HOST_SCORES, default set)."""
    return click.option(
        "--host-score", type=click.Choice(list(HOST_SCORES)), default="set", show_default=True, help=help
    )


def host_packets_option(help: str) -> Callable:
    """--host-packets, as dnp-scan and dnp-watch both take it (at least 1, default PACKETS)."""
    return click.option(
        "--host-packets", type=click.IntRange(1), default=PACKETS, show_default=True, help=help
    )


def verdict_help() -> str:
    """The --max-false-match help's note on the cohort and calibration shipped with the model.

    Read from the cohort's file as bytes, not parsed: --help must start fast, and the file holds
    every cohort window's embeddings (parsing it took 0.2 s); nor does it start onnxruntime.
    """
    try:
        from tool.cohort import COHORT
        from tool.model import models_dir

        data = (models_dir() / COHORT).read_bytes()
    except OSError:
        return "no cohort ships with this model: the verdict falls back to --threshold 0.5"
    at = data.rfind(b'"calibration"')
    pairs = re.compile(rb'"pairs":\s*(\d+)').search(data, at) if at >= 0 else None
    if pairs is None:
        return "the shipped cohort's hosts set the scale for each fingerprint"
    return (
        f"measured on {int(pairs.group(1))} trials on labs the model never trained on, on the scale the "
        "shipped cohort's hosts set for each fingerprint"
    )


def finite(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    """A click callback for a float option: NaN and infinities are refused."""
    # FloatRange lets NaN through (every comparison with it is false); the JSON would then hold NaN.
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number")
    return value


def one_capture(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A capture file; a folder is refused with the command that reads one."""
    if os.path.isdir(value):
        raise click.BadParameter(
            f"{value!r} is a folder: dnp-scan reads one capture; `dnp-hunt {value} -f FP` reads every "
            "capture in a folder"
        )
    return value


def nonempty_filter(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A click callback for --filter: an empty or blank display filter is refused."""
    if value is not None and not value.strip():
        raise click.BadParameter("an empty filter; leave the option out to scan every packet")
    return value


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived; outputs in progress are discarded."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def one_line(message: object) -> str:
    """The message on one line, control characters (a file name's ESC) written as escapes."""
    from tool.report import printable

    return printable(" ".join(str(message).split()))


def fail(prog: str, message: object, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"{prog}: error: {one_line(message) or 'failed'}", err=True)
    sys.exit(code)


def require_stdout() -> None:
    """Refuse to start work whose result goes to a standard output that was closed (`>&-`)."""
    closed = sys.stdout is None or isinstance(sys.stdout, _ClosedStdout)
    if not closed:
        try:
            os.fstat(sys.stdout.fileno())
        except OSError:
            closed = True
        except (AttributeError, ValueError):  # not a file (a test's StringIO): it can be written
            pass
    if closed:
        raise OSError("standard output is closed; redirect it (>/dev/null) or use --quiet")


class _ClosedStdout:
    """Stands in for a closed stdout: any write is one clear error, not an AttributeError on None."""

    def write(self, _text: str) -> int:
        require_stdout()
        return 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _show_warning(prog: str) -> Callable[..., None]:
    def show(message: Warning | str, *_args: object, **_kwargs: object) -> None:
        click.echo(f"{prog}: warning: {one_line(message)}", err=True)

    return show


def _broken_pipe() -> NoReturn:
    # Python would flush stdout again at exit and print "Exception ignored": point it at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.__stdout__.fileno())  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        pass
    sys.exit(EXIT_BROKEN_PIPE)


def _no_such_option(error: click.NoSuchOption) -> str:
    """click's message, with the options a shorthand abbreviates first: click's own guess goes by
    spelling, so `--fp` drew `--help` rather than `--fingerprint`."""
    command = error.ctx.command if error.ctx is not None else None
    given = error.option_name.lstrip("-")
    if command is None or not given:
        return error.format_message()
    names = [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]

    def abbreviates(name: str) -> bool:
        # The letters of the shorthand, in order, starting with the option's first: fp -> fingerprint.
        letters = iter(name.lstrip("-"))
        return name.lstrip("-")[:1] == given[:1] and all(c in letters for c in given)

    matches = sorted({n for n in names if abbreviates(n)})
    if not matches:
        return error.format_message()
    return f"No such option '{error.option_name}'. Did you mean {' or '.join(repr(m) for m in matches)}?"


def run(command: click.Command, prog: str) -> Callable[[], None]:
    """A console-script entry point that turns every expected failure into one line."""

    def main() -> None:
        from tool.capture import CaptureError
        from tool.fingerprint import FingerprintError

        errors: tuple[type[BaseException], ...] = (CaptureError, FingerprintError, OSError, ValueError)
        from tool.files import OutputError
        from tool.model import ModelError
        from tool.pcapng import AnnotateError

        errors += (AnnotateError, ModelError, OutputError)
        signal.signal(signal.SIGTERM, _raise_interrupted)
        signal.signal(signal.SIGINT, _raise_interrupted)
        # A closed terminal (or ssh session) hangs up: its temporary files go too.
        signal.signal(signal.SIGHUP, _raise_interrupted)
        if sys.stdout is None:
            sys.stdout = _ClosedStdout()  # type: ignore[assignment]
        warnings.showwarning = _show_warning(prog)
        try:
            try:
                code = command.main(prog_name=prog, standalone_mode=False)
                sys.stdout.flush()  # a broken pipe shows here, while it can still be handled
            except SystemExit:
                # click turns a broken pipe into exit 1 after wrapping stdout; a reader that
                # stopped early (`| head`) is not a failure of this command, so say it as a shell does.
                if isinstance(sys.stdout, click.utils.PacifyFlushWrapper):
                    _broken_pipe()
                raise
        except BrokenPipeError:
            _broken_pipe()
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.NoSuchOption as e:
            fail(prog, _no_such_option(e))
        except click.ClickException as e:
            fail(prog, e.format_message())
        except click.exceptions.Abort:
            fail(prog, "aborted", EXIT_INTERRUPTED)
        except Interrupted as e:
            # 128 + the signal, as a shell reports a process the signal ended.
            from tool.files import committed

            done = "the outputs were written before it" if committed else "no output written"
            fail(prog, f"interrupted by {e}; {done}", 128 + e.signum)
        except errors as e:
            fail(prog, str(e))
        sys.exit(code or 0)

    return main
