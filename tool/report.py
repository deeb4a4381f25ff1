"""Reports of a scan for a person: rich tables (the files a scan writes are tool/outputs.py).

Every string in a table comes from a capture or a fingerprint someone else made, so it goes in as
rich Text (see `cell`): shown, never interpreted as markup, emoji codes or terminal commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from tool.fingerprint import Fingerprint
    from tool.records import ScanResult

# The hosts table's first column, by what a scan keyed its hosts on (Packet.host_kind).
HOST_HEADERS = {
    "mac": "MAC",
    "wlan": "host (802.11 source MAC)",
    "sll": "host (SLL source MAC)",
    "ip": "host (IP source)",
}


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


def kept_column(
    table: Table,
    header: object,
    values: list[str],
    justify: str = "left",
    narrow: bool = True,
    fold_header: bool = False,
) -> None:
    """A column whose values are never cut or wrapped (a MAC, a score, a rate, a verdict).

    rich takes width from the columns it may wrap first, and only from these when nothing else is
    left; on a `narrow` console the header also wraps at its spaces ("false-match" over "rate"), and
    with `fold_header` (a fingerprint's name over its scores) it folds to the values' width.
    """
    from rich.text import Text

    header = header.copy() if isinstance(header, Text) else cell(header)
    header.no_wrap = False  # the column's no_wrap would cut it; the header wraps instead
    words = max((len(w) for w in header.plain.split()), default=1)
    if fold_header:
        header.overflow, words = "fold", 5
    table.add_column(
        header,
        justify=justify,  # type: ignore[arg-type]
        no_wrap=True,
        min_width=max((len(v) for v in values), default=1),
        max_width=max([words, *(len(v) for v in values)]) if narrow else None,
    )


def yielding_column(table: Table, header: str, justify: str = "left", max_width: int | None = None) -> None:
    """A column that gives way on a narrow terminal (IPs, Info, file names): its cells end in an ellipsis."""
    table.add_column(header, justify=justify, overflow="ellipsis", max_width=max_width)  # type: ignore[arg-type]


def line(text: object, style: str = "") -> Text:
    """A cell of a yielding column: one line, cut with an ellipsis rather than wrapped when narrow."""
    out = cell(text, style)
    out.no_wrap, out.overflow = True, "ellipsis"
    return out


def narrow(console: Console) -> bool:
    """Whether a table should fold its headers: the width of a terminal a person may well have."""
    return console.width < 120


def table_options(console: Console) -> dict[str, object]:
    """The frame of every table: ASCII off a terminal; on a narrow one, one space between columns."""
    from rich import box

    tight = narrow(console)
    return {
        "box": box.SIMPLE_HEAVY if console.is_terminal else box.ASCII,
        "title_justify": "left",
        "collapse_padding": tight,
        "pad_edge": not tight,
    }


def verdict_text(verdict: str | None, alternatives: list[str] | None = None, router: bool = False) -> str:
    """A host's verdict as the tables word it: the fingerprint, "A or B" where the host reaches several
    (same-vendor siblings send the same traffic), "router" for a router not judged, else "-".

    >>> verdict_text("HS100", ["HS110"]), verdict_text(None, router=True)
    ('HS100 or HS110', 'router')
    """
    if verdict is None:
        return "router" if router else "-"
    return " or ".join([verdict, *(alternatives or [])])


def _fmt(score: float) -> str:
    return f"{score:.3f}"


def _rate(rate: float, cohort: int) -> str:
    """A false-match rate as a person reads it: 0 means none of the `cohort` hosts (or calibration
    trials) it is counted over reached it, not 'impossible'."""
    if rate == 0:
        return f"< {1 / max(cohort, 1):.0e}"
    return f"{rate:.4f}" if rate < 0.01 else f"{rate:.3f}"


def _clock(epoch: float) -> str:
    """Time of day in UTC, to the millisecond: what an analyst matches against Wireshark's view."""
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def print_scan(console: Console, result: ScanResult, max_hosts: int = 25) -> None:
    """The two tables of a scan: hosts best match first, then the best-matching packets."""
    from rich.table import Table

    names = [f["name"] for f in result.fingerprints]
    calibrated = any("false_match" in row for row in result.hosts)
    hosts = Table(
        title=cell(
            f"Hosts in {Path(result.capture).name}: {result.packets} packets, "
            f"host score = {result.host_score}, verdict at {result.rule}"
        ),
        # A table with no host row still keeps its title on a line or two, not in a narrow column.
        min_width=min(console.width, 80),
        **table_options(console),  # type: ignore[arg-type]
    )
    # The host column says what identifies a host: a capture without Ethernet has no MACs to show.
    kinds = {row.get("host_kind", "mac") for row in result.hosts}
    mixed = len(kinds) > 1
    shown = result.hosts[:max_hosts]
    rows = []
    for row in shown:
        address = row.get("host", row["mac"])
        rows.append(
            {
                "host": f"{row['host_kind']}: {address}" if mixed else str(address),
                "ips": ", ".join(row["ips"][:3]) + (" ..." if len(row["ips"]) > 3 else ""),
                "packets": str(row["packets"]),
                "scores": [_fmt(row["match"][n]) for n in names],
                "rate": _rate(row["false_match"][row["best"]], result.cohort_hosts) if calibrated else "",
                "verdict": verdict_text(row["verdict"], row.get("alternatives"), row.get("router", False)),
            }
        )
    tight = narrow(console)
    # At 80 columns the MAC, the scores, the rate and the verdict stay whole; the IPs give way.
    kept_column(
        hosts,
        HOST_HEADERS.get(kinds.pop() if kinds else "mac", "host") if not mixed else "host (kind: address)",
        [printable(r["host"]) for r in rows],
        narrow=tight,
    )
    yielding_column(hosts, "IPs")
    kept_column(hosts, "packets", [r["packets"] for r in rows], "right", tight)
    for k, name in enumerate(names):
        kept_column(hosts, cell(name), [r["scores"][k] for r in rows], "right", tight, fold_header=True)
    if calibrated:
        kept_column(hosts, "false-match rate", [r["rate"] for r in rows], "right", tight)
    kept_column(hosts, "verdict", [printable(r["verdict"]) for r in rows], narrow=tight)
    for row, r in zip(shown, rows):
        cells = [cell(v) for v in r["scores"]] + ([cell(r["rate"])] if calibrated else [])
        verdict = cell(
            r["verdict"],
            ("bold yellow" if row.get("alternatives") else "bold green") if row["verdict"] else "",
        )
        hosts.add_row(cell(r["host"]), line(r["ips"]), cell(r["packets"]), *cells, verdict)
    if len(result.hosts) > max_hosts:
        hosts.caption = f"{len(result.hosts) - max_hosts} more hosts in --json"
    console.print(hosts)

    packets = Table(title="Best-matching packets", **table_options(console))  # type: ignore[arg-type]
    top = result.top_packets
    # Below 100 columns the time goes (the frame number finds the packet; --csv has both), so Info
    # keeps some room; the source MAC, the target and p are never cut.
    timed = console.width >= 100
    kept_column(packets, "frame", [str(r["frame"]) for r in top], "right", tight)
    if timed:
        kept_column(packets, "time (UTC)", [_clock(r["time"]) for r in top], "right", tight)
    kept_column(packets, "source", [printable(str(r.get("host") or r["eth_src"])) for r in top], narrow=tight)
    yielding_column(packets, "protocol")
    yielding_column(packets, "Info", max_width=70)
    kept_column(packets, "target", [printable(str(r["target"])) for r in top], narrow=tight)
    kept_column(packets, "p", [_fmt(r["probability"]) for r in top], "right", tight)
    for row in top:
        packets.add_row(
            cell(row["frame"]),
            *([cell(_clock(row["time"]))] if timed else []),
            cell(row.get("host") or row["eth_src"]),
            line(row["protocol"]),
            line(row["info"]),
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
