"""Reports of a scan: rich tables for a person, CSV rows for a spreadsheet, atomic output files.

Every output file is written to a temporary file beside its destination and renamed into place
only when the scan has finished, so a failed or interrupted scan never leaves half a file.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from tool.fingerprint import Fingerprint
    from tool.scan import ScanResult

CSV_HEADER = ("frame", "time", "eth_src", "eth_dst", "protocol", "info")


class PendingFile:
    """A file being written next to `path`, renamed into place by `commit`, removed by `discard`."""

    def __init__(self, path: str | os.PathLike, newline: str | None = None):
        self.path = Path(path)
        directory = self.path.parent if str(self.path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=directory)
        self.tmp = Path(tmp)
        self.handle: IO[str] = os.fdopen(fd, "w", encoding="utf-8", newline=newline)

    def commit(self) -> None:
        self.handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        self.tmp.unlink(missing_ok=True)


@dataclass
class PacketRow:
    """One scored packet as the per-packet outputs (CSV, sidecar, pcapng comment) write it."""

    frame: int
    time: float
    eth_src: str
    eth_dst: str
    protocol: str
    info: str
    probabilities: list[float]  # p(Target) for each fingerprint, in the scan's order
    names: list[str]  # the fingerprints' names, in the same order
    host_match: float | None  # the sending host's score for its best fingerprint

    def sidecar(self) -> tuple[int, float, str, float | None]:
        """(frame, best p(Target), that fingerprint's name, host_match): the Wireshark sidecar's row."""
        best = max(range(len(self.probabilities)), key=self.probabilities.__getitem__)
        host = None if self.host_match is None else min(1.0, max(-1.0, self.host_match))
        return self.frame, self.probabilities[best], self.names[best], host


class PacketCsv:
    """One row per packet: frame, time, addresses, protocol, Info, one p(Target) column per
    fingerprint (named by it), then host_match: the sending host's score for its best fingerprint."""

    def __init__(self, handle: IO[str], names: Sequence[str]):
        self.writer = csv.writer(handle, lineterminator="\n")
        self.writer.writerow([*CSV_HEADER, *names, "host_match"])

    def write(self, row: PacketRow) -> None:
        self.writer.writerow(
            [
                row.frame,
                f"{row.time:.6f}",
                row.eth_src,
                row.eth_dst,
                row.protocol,
                row.info,
                *(f"{p:.6f}" for p in row.probabilities),
                "" if row.host_match is None else f"{row.host_match:.6f}",
            ]
        )


def _fmt(score: float) -> str:
    return f"{score:.3f}"


def _rate(rate: float, cohort: int) -> str:
    """A false-match rate as a person reads it: 0 means no cohort host reached it, not 'impossible'."""
    if rate == 0:
        return f"< {1 / max(cohort, 1):.0e}"
    return f"{rate:.4f}" if rate < 0.01 else f"{rate:.3f}"


def _clock(epoch: float) -> str:
    """Time of day in UTC, to the millisecond: what an analyst matches against Wireshark's view."""
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def print_scan(console: Console, result: ScanResult, max_hosts: int = 25) -> None:
    """The two tables of a scan: hosts best match first, then the best-matching packets."""
    from rich import box
    from rich.table import Table

    plain = not console.is_terminal
    style = box.ASCII if plain else box.SIMPLE_HEAVY
    names = [f["name"] for f in result.fingerprints]
    calibrated = any("false_match" in row for row in result.hosts)
    hosts = Table(
        title=f"Hosts in {Path(result.capture).name}: {result.packets} packets, "
        f"host score = {result.host_score}, verdict at {result.rule}",
        box=style,
        title_justify="left",
    )
    hosts.add_column("MAC")
    hosts.add_column("IPs")
    hosts.add_column("packets", justify="right")
    for name in names:
        hosts.add_column(name, justify="right")
    if calibrated:
        hosts.add_column("false-match rate", justify="right")
    hosts.add_column("verdict")
    for row in result.hosts[:max_hosts]:
        cells = [_fmt(row["match"][n]) for n in names]
        if calibrated:
            cells.append(_rate(row["false_match"][row["best"]], result.cohort_hosts))
        verdict = f"[bold green]{row['verdict']}[/]" if row["verdict"] else "-"
        ips = ", ".join(row["ips"][:3]) + (" ..." if len(row["ips"]) > 3 else "")
        hosts.add_row(row["mac"], ips, str(row["packets"]), *cells, verdict)
    if len(result.hosts) > max_hosts:
        hosts.caption = f"{len(result.hosts) - max_hosts} more hosts in --json"
    console.print(hosts)

    packets = Table(title="Best-matching packets", box=style, title_justify="left")
    for col, justify in (
        ("frame", "right"),
        ("time (UTC)", "right"),
        ("source", "left"),
        ("protocol", "left"),
    ):
        packets.add_column(col, justify=justify)
    packets.add_column("Info", overflow="fold", max_width=70)
    packets.add_column("fingerprint")
    packets.add_column("p", justify="right")
    for row in result.top_packets:
        packets.add_row(
            str(row["frame"]),
            _clock(row["time"]),
            row["eth_src"],
            row["protocol"],
            row["info"],
            row["target"],
            _fmt(row["probability"]),
        )
    console.print(packets)


def print_fingerprint(console: Console, fingerprint: Fingerprint, path: str) -> None:
    """What an enrollment made: the fingerprint's name, source and the texts it learnt from."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"Fingerprint {fingerprint.name!r} -> {path}",
        box=box.ASCII if not console.is_terminal else box.SIMPLE_HEAVY,
        title_justify="left",
    )
    table.add_column("frame", justify="right")
    table.add_column("length", justify="right")
    table.add_column("masked text the model reads", overflow="fold")
    for s in fingerprint.support:
        table.add_row(str(s.frame), str(s.length), s.text.replace("\t", "  "))
    console.print(table)
