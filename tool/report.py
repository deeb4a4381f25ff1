"""Reports of a scan for a person: rich tables (the files a scan writes are tool/outputs.py).

Every string in a table comes from a capture or a fingerprint someone else made, so it goes in as
rich Text (see `cell`): shown, never interpreted as markup, emoji codes or terminal commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from tool.fingerprint import Fingerprint
    from tool.records import ScanResult

# The hosts table's first column, by what a scan keyed its hosts on (Packet.host_kind).
HOST_HEADERS = {"mac": "MAC", "sll": "host (SLL source MAC)", "ip": "host (IP source)"}


def printable(text: str) -> str:
    """Control characters (an ESC in a file name, a packet, a fingerprint) written as escapes.

    Raw, they would reach the terminal and be obeyed: clear the screen, set the title, hide text.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else ascii(c)[1:-1] for c in text)


def cell(text: object, style: str = "") -> Text:
    """Text shown as it is: no rich markup, no :emoji: codes (a MAC holds ':cd:'), no control codes."""
    from rich.text import Text

    return Text(printable(str(text)), style=style)


def console(**kwargs: object) -> Console:
    """The console every command prints to: markup and emoji codes off, whatever the data holds."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich would exit 1 here; the command's entry point owns exit statuses (141, as a shell).
            raise BrokenPipeError(32, "Broken pipe")

    return _Console(markup=False, emoji=False, highlight=False, **kwargs)  # type: ignore[arg-type]


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
        title=cell(
            f"Hosts in {Path(result.capture).name}: {result.packets} packets, "
            f"host score = {result.host_score}, verdict at {result.rule}"
        ),
        box=style,
        title_justify="left",
    )
    # The host column says what identifies a host: a capture without Ethernet has no MACs to show.
    kinds = {row.get("host_kind", "mac") for row in result.hosts}
    mixed = len(kinds) > 1
    hosts.add_column(
        HOST_HEADERS.get(kinds.pop() if kinds else "mac", "host") if not mixed else "host (kind: address)"
    )
    hosts.add_column("IPs")
    hosts.add_column("packets", justify="right")
    for name in names:
        hosts.add_column(cell(name), justify="right")
    if calibrated:
        hosts.add_column("false-match rate", justify="right")
    hosts.add_column("verdict")
    for row in result.hosts[:max_hosts]:
        cells = [cell(_fmt(row["match"][n])) for n in names]
        if calibrated:
            cells.append(cell(_rate(row["false_match"][row["best"]], result.cohort_hosts)))
        verdict = cell(row["verdict"], "bold green") if row["verdict"] else cell("-")
        ips = ", ".join(row["ips"][:3]) + (" ..." if len(row["ips"]) > 3 else "")
        address = row.get("host", row["mac"])
        if mixed:
            address = f"{row['host_kind']}: {address}"
        hosts.add_row(cell(address), cell(ips), cell(row["packets"]), *cells, verdict)
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
            cell(row["frame"]),
            cell(_clock(row["time"])),
            cell(row.get("host") or row["eth_src"]),
            cell(row["protocol"]),
            cell(row["info"]),
            cell(row["target"]),
            cell(_fmt(row["probability"])),
        )
    console.print(packets)


def print_fingerprint(console: Console, fingerprint: Fingerprint, path: str) -> None:
    """What an enrollment made: the fingerprint's name, source and the texts it learnt from."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=cell(f"Fingerprint {fingerprint.name!r} -> {path}"),
        box=box.ASCII if not console.is_terminal else box.SIMPLE_HEAVY,
        title_justify="left",
    )
    table.add_column("frame", justify="right")
    table.add_column("length", justify="right")
    table.add_column("masked text the model reads", overflow="fold")
    for s in fingerprint.support:
        table.add_row(cell(s.frame), cell(s.length), cell(s.text.replace("\t", "  ")))
    console.print(table)
