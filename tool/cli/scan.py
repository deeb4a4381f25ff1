"""dnp-scan: find enrolled devices in a capture, packet by packet and host by host."""

from __future__ import annotations

import sys
import warnings

import click

from tool.cli.common import (
    check_verdict,
    fingerprint_option,
    host_packets_option,
    host_score_option,
    nonempty_filter,
    one_capture,
    require_stdout,
    run,
    verdict_help,
    verdict_options,
)
from tool.constants import SET_SCORES

EXAMPLE = """
Examples:

  dnp-scan suspect.pcap --fingerprint cam.fp

  dnp-scan suspect.pcap -f cam.fp -f plug.fp --json report.json --csv packets.csv

  dnp-scan suspect.pcap -f cam.fp --annotate suspect.scores.csv   # for the Wireshark plugin
"""


@click.command(epilog=EXAMPLE)
@click.argument("capture", type=click.Path(exists=True), callback=one_capture)
@fingerprint_option
@verdict_options(
    "The verdict: a host matches when at most this share of other vendors' hosts reach its score "
    f"({verdict_help()}). A same-vendor sibling of the device sends its traffic and is not counted: "
    "it matches as the device does. Stated against measured (README): on the labs held out, 0.01 -> "
    "0.6x and 1.0x, 0.001 -> 0x and 0.8x; on the test halves of the labs the model learnt from, "
    "no other vendor's host reached a verdict at 0.001-0.01. "
    "A host that reaches several fingerprints is named with all of them (A or B).",
    "The verdict on the raw host score instead (for set, half Chamfer similarity and half cosine of"
    " the mean embeddings; for set-all, that cosine; for first20 / mean, p(Target)).",
)
@host_score_option(
    "set: the host's first --host-packets packets compared with the fingerprint as a set; set-all: "
    "all its packets; first20 / mean: the paper's mean p(Target) over the first ones / all of them."
)
@host_packets_option("How many of a host's first packets the set and first20 scores read.")
@click.option(
    "--filter",
    "display_filter",
    metavar="FILTER",
    callback=nonempty_filter,
    help="Only scan packets matching this filter.",
)
@click.option("--json", "json_path", metavar="PATH", help="Write the scan as JSON ('-' for stdout).")
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False),
    help="Write one row per packet: its p(Target) per fingerprint and its host's score.",
)
@click.option(
    "--annotate",
    type=click.Path(dir_okay=False),
    help="Write the frame,score,target,host_match,router sidecar the Wireshark plugin reads.",
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
    max_false_match: float | None,
    threshold: float | None,
    judge_routers: bool,
    host_score: str,
    host_packets: int,
    display_filter: str | None,
    json_path: str | None,
    csv_path: str | None,
    annotate: str | None,
    pcapng: str | None,
    models: str | None,
    quiet: bool,
) -> int:
    """Score every packet of CAPTURE against each fingerprint and rank the hosts.

    Every packet gets p(Target), the paper's per-packet probability; every host a score (by default
    its first 20 packets compared with the fingerprint's, as sets) and, from the cohort of
    other devices shipped with the model, a false-match rate. Exit status, as grep: 0 when some
    host gets a verdict, 1 when none does, 2 on error, 141 when the reader of stdout stops early
    (`| head`). Output files are written only when the scan completes, all of them together.
    """
    from tool.files import check_outputs

    check_verdict(threshold, max_false_match)
    if max_false_match is not None and host_score not in SET_SCORES:
        raise click.UsageError("--max-false-match needs a set host score (set, set-all)")

    # Everything that can be refused is refused before the model loads and the capture is read.
    check_outputs(
        {"--json": json_path, "--csv": csv_path, "--annotate": annotate, "--pcapng": pcapng},
        {"the capture": [capture], "a fingerprint": list(fingerprints)},
    )
    if json_path == "-" or not quiet:
        require_stdout()

    from tool.fingerprint import load_all
    from tool.model import Model
    from tool.outputs import ScanOutputs
    from tool.report import console, print_scan
    from tool.scan import scan

    model = Model.load(models)
    fps = load_all(fingerprints, model)
    # Every output is a temporary file beside its destination from the start, so a folder that turns
    # unwritable fails now, and all of them are renamed into place together at the end.
    outputs = ScanOutputs(
        capture,
        csv=csv_path,
        annotate=annotate,
        pcapng=pcapng,
        json=json_path if json_path != "-" else None,
    )
    try:
        progress = _progress(quiet)

        def on_packet(packet, probs) -> None:  # noqa: ANN001 - called per packet, kept lean
            outputs.on_packet(packet, probs)
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
                max_false_match=max_false_match,
                judge_routers=judge_routers,
                host_score=host_score,
                host_packets=host_packets,
                display_filter=display_filter,
                fingerprint_files=list(fingerprints),
                on_packet=on_packet,
            )
        if progress is not None:
            progress.stop()
        for w in held:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if result.packets == 0:
            raise click.ClickException(
                f"no packet matches the filter {display_filter!r} in {capture}"
                if display_filter
                else f"{capture}: the capture holds no packets"
            )
        outputs.commit(result, cut=any(issubclass(w.category, CaptureTruncated) for w in held))
    finally:
        outputs.discard()
    if not result.hosts:
        # Bluetooth, USB, ...: packets are scored, but none names its sender, so no host can match.
        warnings.warn(
            f"{capture}: no host: none of its {result.packets} packets has a sender address read here "
            "(Ethernet, 802.11, Linux cooked capture or IP source): see the README's link types",
            stacklevel=1,
        )
    if json_path == "-":
        sys.stdout.write(result.to_json())
    elif not quiet:
        # A pipe gets no terminal width: a wide fixed one keeps Info texts on one line for grep.
        print_scan(console(width=None if sys.stdout.isatty() else 200), result)
    return 0 if result.matched else 1


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
