"""dnp-hunt: find enrolled devices across many captures, on every core of this machine or a Dask cluster."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import click

from tool.cli.common import (
    Interrupted,
    check_verdict,
    fingerprint_option,
    require_stdout,
    run,
    verdict_help,
    verdict_options,
)

if TYPE_CHECKING:
    from rich.console import Console

    from tool.hunt import HuntResult

EXAMPLE = """
Examples:

  dnp-hunt /cases/site-a/ --fingerprint cam.fp --out hunt-a

  dnp-hunt 'sensor/*.pcap.gz' -f cam.fp -f plug.fp --workers 8 --json hunt.json

  dnp-hunt /shared/pcaps/ -f cam.fp --scheduler tcp://10.0.0.5:8786 --out /shared/hunt-a
"""


@click.command(epilog=EXAMPLE)
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@fingerprint_option
@click.option(
    "--workers",
    type=click.IntRange(1),
    help="Worker processes of the local Dask cluster.  [default: one per core]",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Run on an existing Dask cluster (tcp://HOST:8786) instead; its workers must see the paths.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="The hunt's folder: captures.jsonl (a line per capture, kept as each is done) and hunt.json. "
    "Run the same hunt again with it to scan only what is new or was left.",
)
@click.option("--json", "json_path", metavar="PATH", help="Write the merged table as JSON ('-' for stdout).")
@click.option("--all-hosts", is_flag=True, help="List every host, not only those that reached the verdict.")
@verdict_options(
    f"The verdict, as dnp-scan's; {verdict_help()}.", "The verdict on the raw set score instead."
)
@click.option(
    "--batch-mb",
    type=click.FloatRange(0),
    default=4.0,
    show_default=True,
    help="Small captures go to a worker together up to this size: one tshark run per batch.",
)
@click.option(
    "--chunk-mb",
    type=click.FloatRange(0, min_open=True),
    default=32.0,
    show_default=True,
    help="A capture larger than this is cut into chunks (editcap -c) scored in parallel.",
)
@click.option(
    "--models", type=click.Path(exists=True, file_okay=False), help="Model folder (default: shipped)."
)
@click.option("--quiet", is_flag=True, help="No tables or progress; only the exit status and the files.")
def command(
    paths: tuple[str, ...],
    fingerprints: tuple[str, ...],
    workers: int | None,
    scheduler: str | None,
    out: str | None,
    json_path: str | None,
    all_hosts: bool,
    max_false_match: float | None,
    threshold: float | None,
    judge_routers: bool,
    batch_mb: float,
    chunk_mb: float,
    models: str | None,
    quiet: bool,
) -> int:
    """Scan every capture under PATH (files, folders, globs; pcap, pcapng, gzipped) for the
    fingerprints, with dnp-scan's host score and verdict, and merge the matching hosts into one
    table: fingerprint, best score and false-match rate, how many captures, first and last seen, and
    the capture of the best match. A capture that cannot be read is listed with its reason at the end
    and the hunt goes on. Exit status, as dnp-scan: 0 when some host gets a verdict, 1 when none does,
    2 when a capture failed or on error.
    """
    from pathlib import Path

    from tool.files import AtomicFile, OutputError, check_outputs, commit_all

    check_verdict(threshold, max_false_match)
    if workers is not None and scheduler:
        raise click.UsageError("give --workers or --scheduler, not both: a cluster has its own workers")
    if out is not None:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"--out {out}: not a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"--out {out}: {e.strerror or e}") from None
    summary = str(Path(out) / "hunt.json") if out is not None else None
    check_outputs({"--json": json_path, "--out": summary}, {"a fingerprint": list(fingerprints)})
    if json_path == "-" or not quiet:
        require_stdout()

    from tool.hunt import hunt

    progress = _Progress() if not quiet and sys.stderr.isatty() else None
    try:
        result = hunt(
            paths,
            fingerprints,
            workers=workers,
            scheduler=scheduler,
            out=out,
            threshold=threshold,
            max_false_match=max_false_match,
            judge_routers=judge_routers,
            models=models,
            all_hosts=all_hosts,
            batch_bytes=int(batch_mb * (1 << 20)),
            chunk_bytes=int(chunk_mb * (1 << 20)),
            on_start=progress.start if progress else None,
            on_progress=progress.update if progress else None,
        )
    except Interrupted:
        if progress is not None:
            progress.stop()
        if out is not None:
            click.echo(f"dnp-hunt: the captures done are kept in {out}; run it again to go on", err=True)
        raise
    if progress is not None:
        progress.stop()
    pending = [AtomicFile(p) for p in (summary, json_path) if p is not None and p != "-"]
    try:
        for f in pending:
            f.handle.write(result.to_json())
        commit_all(pending)
    finally:
        for f in pending:
            f.discard()
    if json_path == "-":
        sys.stdout.write(result.to_json())
    elif not quiet:
        from tool.report import console

        print_hunt(console(width=None if sys.stdout.isatty() else 200), result)
    if result.failed:
        return 2
    return 0 if result.matched else 1


def _when(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def print_hunt(console: Console, result: HuntResult, max_hosts: int = 50) -> None:
    """The merged hosts table, best first, then the captures that failed and those cut short.

    The MAC, the fingerprint, the score and the rate are never cut; below 120 columns the IPs go
    under the MAC and the captures' times and best file under their count, and those give way.
    """
    import os

    from rich.table import Table
    from rich.text import Text

    from tool.report import HOST_HEADERS, _fmt, _rate, cell, kept_column, line, narrow, table_options

    options = table_options(console)
    tight = narrow(console)
    # Captures are named from the folder they all lie under: rotated files share their names.
    paths = [os.path.abspath(r["capture"]) for r in result.records]
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
    failed = f", {len(result.failed)} failed" if result.failed else ""
    table = Table(
        title=cell(
            f"Hunt: {result.captures} captures{failed} ({result.scanned} scanned now, {result.reused} "
            f"from before), {result.packets:,} packets, verdict at {result.rule}"
        ),
        **options,  # type: ignore[arg-type]
    )
    shown = result.hosts[:max_hosts]
    kinds = {h["host_kind"] for h in result.hosts} or {"mac"}
    # The same columns with matches or without: the rule, not the rows, says whether rates are shown.
    calibrated = result.rule.startswith("false-match")
    # An unmatched row shows its best fingerprint in brackets; a router says so (it is never named).
    names = [
        cell(h["fingerprint"]) if h["verdict"] else cell(f"({h['fingerprint']})" + ", router" * h["router"])
        for h in shown
    ]
    scores = [_fmt(h["score"]) for h in shown]
    rates = [_rate(h["false_match_rate"], result.cohort_hosts) if calibrated else "" for h in shown]
    ips = [
        (h["ips"][0] if h["ips"] else "") + (f" +{len(h['ips']) - 1}" if len(h["ips"]) > 1 else "")
        for h in shown
    ]
    newline = Text("\n")
    seen = [newline.join([cell(_when(h["first_seen"])), cell(_when(h["last_seen"]))]) for h in shown]
    best = [os.path.relpath(os.path.abspath(h["best_capture"]), root) for h in shown]
    host_header = HOST_HEADERS.get(kinds.pop(), "host") if len(kinds) == 1 else "host"
    kept_column(table, host_header, [h["host"] for h in shown], narrow=tight)
    if not tight:
        table.add_column("IPs", overflow="ellipsis")
    kept_column(table, "fingerprint", [n.plain for n in names], narrow=tight)
    kept_column(table, "score", scores, "right", tight)
    if calibrated:
        kept_column(table, "false-match rate", rates, "right", tight)
    if tight:
        table.add_column("captures: first / last seen (UTC), best", overflow="fold")
    else:
        kept_column(table, "captures", [str(h["captures"]) for h in shown], "right", tight)
        table.add_column("first / last seen (UTC)", no_wrap=True)
        table.add_column("best capture", overflow="fold")
    for k, h in enumerate(shown):
        name = cell(h["fingerprint"], "bold green") if h["verdict"] else names[k]
        if tight:
            host = newline.join([cell(h["host"]), line(ips[k], "dim")])
            host.no_wrap, host.overflow = True, "ellipsis"
            count = cell(f"{h['captures']} capture{'s' * (h['captures'] != 1)}")
            where = newline.join([count, seen[k], cell(best[k])])
            cells = [host, name, cell(scores[k])] + ([cell(rates[k])] if calibrated else []) + [where]
        else:
            cells = [cell(h["host"]), line(ips[k]), name, cell(scores[k])]
            cells += [cell(rates[k])] if calibrated else []
            cells += [cell(h["captures"]), seen[k], cell(best[k])]
        table.add_row(*cells)
    if not result.hosts:
        table.caption = "no host reached the verdict (--all-hosts lists every host)"
    elif len(result.hosts) > max_hosts:
        table.caption = f"{len(result.hosts) - max_hosts} more hosts in --json"
    console.print(table)
    for what, rows, key in (("failed", result.failed, "error"), ("cut short", result.warnings, "warning")):
        if not rows:
            continue
        listed = Table(title=f"Captures {what}: {len(rows)}", **options)  # type: ignore[arg-type]
        listed.add_column("capture", overflow="fold")
        listed.add_column("reason", overflow="fold")
        for row in rows:
            listed.add_row(cell(row["capture"]), cell(row[key]))
        console.print(listed)


class _Progress:
    """Captures and packets done, packets/s and time left (by bytes), on stderr, for a person watching."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("hunting"),
            BarColumn(),
            TextColumn("{task.fields[captures]}"),
            TextColumn("{task.fields[packets]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = None
        self.total = 0

    def start(self, captures: int, size: int) -> None:
        if not captures:  # everything was done before: nothing to watch
            return
        self.total = captures
        self.task = self.progress.add_task("hunt", total=max(size, 1), captures="", packets="")
        self.update(0, 0, 0)
        self.progress.start()

    def update(self, captures: int, size: int, packets: int) -> None:
        if self.task is None:
            return
        elapsed = self.progress.tasks[0].elapsed if self.progress.tasks else None
        rate = packets / elapsed if elapsed else math.nan
        self.progress.update(
            self.task,
            completed=size,
            captures=f"{captures:,}/{self.total:,} captures",
            packets=f"{packets:,} packets ({rate:,.0f}/s)" if rate == rate else f"{packets:,} packets",
        )

    def stop(self) -> None:
        self.progress.stop()


main = run(command, "dnp-hunt")

if __name__ == "__main__":
    main()
