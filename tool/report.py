"""Reports of a scan: rich tables for a person, CSV rows for a spreadsheet, atomic output files.

Every output file is written to a temporary file beside its destination and renamed into place
only when the scan has finished, so a failed or interrupted scan never leaves half a file.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

    from tool.capture import Packet
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


class PacketCsv:
    """One row per packet: frame, time, addresses, protocol, Info, then one column per fingerprint."""

    def __init__(self, handle: IO[str], names: Sequence[str]):
        self.writer = csv.writer(handle, lineterminator="\n")
        self.writer.writerow([*CSV_HEADER, *names])

    def write(self, packet: Packet, probs: np.ndarray) -> None:
        self.writer.writerow(
            [
                packet.frame,
                f"{packet.time:.6f}",
                packet.eth_src,
                packet.eth_dst,
                packet.protocol,
                packet.info,
                *(f"{float(p):.6f}" for p in probs),
            ]
        )


def _fmt(score: float) -> str:
    return f"{score:.3f}"


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
    hosts = Table(
        title=f"Hosts in {Path(result.capture).name}: {result.packets} packets, "
        f"host score = {result.host_score}, threshold {result.threshold:.2f}",
        box=style,
        title_justify="left",
    )
    hosts.add_column("MAC")
    hosts.add_column("IPs")
    hosts.add_column("packets", justify="right")
    for name in names:
        hosts.add_column(name, justify="right")
    hosts.add_column("verdict")
    for row in result.hosts[:max_hosts]:
        cells = [_fmt(row["match"][n]) for n in names]
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
