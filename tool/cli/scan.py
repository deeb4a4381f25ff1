"""dnp-scan: find enrolled devices in a capture, packet by packet and host by host."""

from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
import warnings
from collections.abc import Iterator

import click

from tool.cli.common import require_stdout, run

EXAMPLE = """
Examples:

  dnp-scan suspect.pcap --fingerprint cam.fp

  dnp-scan suspect.pcap -f cam.fp -f plug.fp --json report.json --csv packets.csv

  dnp-scan suspect.pcap -f cam.fp --annotate suspect.scores.csv   # for the Wireshark plugin
"""


def _threshold_help() -> str:
    # Read the calibration file directly: --help must not start onnxruntime.
    try:
        from tool.model import models_dir

        value = json.loads((models_dir() / "calibration.json").read_text())["threshold"]
        return f"{float(value):.2f}, calibrated on the development half"
    except Exception:
        return "0.50"


def _probability(_ctx: click.Context, _param: click.Parameter, value: float | None) -> float | None:
    # FloatRange lets NaN through (every comparison with it is false); the JSON would then hold NaN.
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number in [0, 1]")
    return value


def _filter(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise click.BadParameter("an empty filter; leave the option out to scan every packet")
    return value


@click.command(epilog=EXAMPLE)
@click.argument("capture", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-f",
    "--fingerprint",
    "fingerprints",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A fingerprint file from dnp-enroll; repeat for several.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    callback=_probability,
    help=f"Host score at which a host is reported as a match.  [default: {_threshold_help()}]",
)
@click.option(
    "--host-score",
    type=click.Choice(["first20", "mean"]),
    default="first20",
    show_default=True,
    help="first20: mean p over the host's first 20 packets (what dnp-23 measures); mean: over all.",
)
@click.option(
    "--filter",
    "display_filter",
    metavar="FILTER",
    callback=_filter,
    help="Only scan packets matching this filter.",
)
@click.option("--json", "json_path", metavar="PATH", help="Write the scan as JSON ('-' for stdout).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write one row per packet.")
@click.option(
    "--annotate",
    type=click.Path(dir_okay=False),
    help="Write the frame,score,target sidecar the Wireshark plugin reads.",
)
@click.option(
    "--pcapng",
    type=click.Path(dir_okay=False),
    help="Write a copy of the capture whose packets carry their match as a comment.",
)
@click.option(
    "--models", type=click.Path(exists=True, file_okay=False), help="Model folder (default: shipped)."
)
@click.option("--quiet", is_flag=True, help="No tables; only the exit status and the files asked for.")
def command(
    capture: str,
    fingerprints: tuple[str, ...],
    threshold: float | None,
    host_score: str,
    display_filter: str | None,
    json_path: str | None,
    csv_path: str | None,
    annotate: str | None,
    pcapng: str | None,
    models: str | None,
    quiet: bool,
) -> int:
    """Score every packet of CAPTURE against each fingerprint and rank the hosts.

    Exit status, as grep: 0 when some host scores at or above the threshold, 1 when none
    does, 2 on error, 141 when the reader of stdout stops early (`| head`). Output files
    are written only when the scan completes, all of them together.
    """
    from tool.files import AtomicFile, check_outputs, commit_all

    # Everything that can be refused is refused before the model loads and the capture is read.
    check_outputs(
        {"--json": json_path, "--csv": csv_path, "--annotate": annotate, "--pcapng": pcapng},
        {"the capture": [capture], "a fingerprint": list(fingerprints)},
    )
    if json_path == "-" or not quiet:
        require_stdout()

    from tool.fingerprint import load
    from tool.model import Model
    from tool.report import PacketCsv, console, print_scan
    from tool.scan import scan

    model = Model.load(models)
    fps = [load(path, model) for path in fingerprints]
    names = [f.name for f in fps]
    if len(set(names)) != len(names):
        raise click.UsageError(
            f"two fingerprints share a name ({', '.join(names)}); rename one with dnp-enroll"
        )
    pending: list[AtomicFile] = []
    spool = None
    try:
        # Every output is a temporary file beside its destination from the start, so a folder that
        # turns unwritable fails now, and all of them are renamed into place together at the end.
        outputs = {
            key: AtomicFile(path, mode, **kw)
            for key, path, mode, kw in (
                ("csv", csv_path, "w", {"newline": ""}),
                ("annotate", annotate, "w", {"newline": ""}),
                ("pcapng", pcapng, "wb", {}),
                ("json", json_path if json_path != "-" else None, "w", {}),
            )
            if path
        }
        pending.extend(outputs.values())
        csv_file = outputs.get("csv")
        packet_csv = PacketCsv(csv_file.handle, names) if csv_file else None
        if annotate or pcapng:
            # Per-frame best matches wait in a spool file: memory stays flat however long the capture.
            spool = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")
        spool_writer = csv.writer(spool, lineterminator="\n") if spool else None
        progress = _progress(quiet)

        def on_packet(packet, probs) -> None:  # noqa: ANN001 - called per packet, kept lean
            if packet_csv:
                packet_csv.write(packet, probs)
            if spool_writer:
                best = int(probs.argmax())
                spool_writer.writerow((packet.frame, repr(float(probs[best])), names[best]))
            if progress is not None and packet.frame % 1024 == 0:
                progress.update(packet.frame)

        from tool.capture import CaptureTruncated

        # Held until the progress counter is gone, so the warning is a line of its own.
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always", CaptureTruncated)
            result = scan(
                capture,
                fps,
                model,
                threshold=threshold,
                host_score=host_score,
                display_filter=display_filter,
                fingerprint_files=list(fingerprints),
                on_packet=on_packet,
            )
        if progress is not None:
            progress.stop()
        for w in held:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        cut = any(issubclass(w.category, CaptureTruncated) for w in held)
        if result.packets == 0:
            raise click.ClickException(
                f"no packet matches the filter {display_filter!r} in {capture}"
                if display_filter
                else f"{capture}: the capture holds no packets"
            )
        if spool is not None:
            from tool.annotate import write_commented_pcapng_to, write_sidecar_to

            if annotate:
                write_sidecar_to(outputs["annotate"].handle, _spooled(spool))
            if pcapng:
                write_commented_pcapng_to(
                    capture, outputs["pcapng"].handle, _spooled(spool), out_name=pcapng, allow_cut=cut
                )
        if "json" in outputs:
            outputs["json"].handle.write(result.to_json())
        commit_all(pending)
    finally:
        for f in pending:
            f.discard()
        if spool is not None:
            spool.close()
    if json_path == "-":
        sys.stdout.write(result.to_json())
    elif not quiet:
        # A pipe gets no terminal width: a wide fixed one keeps Info texts on one line for grep.
        print_scan(console(width=None if sys.stdout.isatty() else 200), result)
    return 0 if result.matched else 1


def _spooled(spool) -> Iterator[tuple[int, float, str]]:  # noqa: ANN001 - a text file object
    spool.seek(0)
    for frame, score, name in csv.reader(spool):
        yield int(frame), float(score), name


class _Progress:
    """A packet counter on stderr while a long capture is read, for a person watching."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("scanning: {task.completed:,} packets"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.progress.add_task("scan", total=None)
        self.progress.start()

    def update(self, packets: int) -> None:
        self.progress.update(self.task, completed=packets)

    def stop(self) -> None:
        self.progress.stop()


def _progress(quiet: bool) -> _Progress | None:
    if quiet or not sys.stderr.isatty():
        return None
    return _Progress()


main = run(command, "dnp-scan")
