"""dnp-watch: find enrolled devices in a live stream of packets, and say so the moment one speaks."""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from tool.cli.common import (
    check_verdict,
    fingerprint_option,
    host_packets_option,
    nonempty_filter,
    require_stdout,
    run,
    verdict_options,
)
from tool.constants import PACKETS

EXAMPLE = """
Examples:

  dnp-watch -i eth0 --fingerprint cam.fp --capture-filter 'not port 22'

  tcpdump -i eth0 -w - | dnp-watch -r - -f cam.fp -f plug.fp --jsonl alerts.jsonl

  ssh sensor tcpdump -i br0 -U -w - 'not port 22' | dnp-watch -r - -f cam.fp --jsonl - | jq .

  dumpcap -i eth0 -b filesize:100000 -w /var/ring/cap.pcapng &  dnp-watch --follow /var/ring -f cam.fp
"""

FLUSH = 0.1  # seconds a packet may wait for its chunk to fill before it is scored anyway
REFRESH = 1.0  # seconds between two refreshes of the live table
POLL = 0.5  # seconds between two looks into a --follow folder
CHUNK = 1024  # packets scored at once: large enough for numpy, small enough for a prompt alert
TABLE_HOSTS = 15


class _Stop:
    """Set by SIGINT, SIGTERM, SIGHUP, --duration or --packets; a second signal ends at once."""

    def __init__(self) -> None:
        self.why: str | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.why is not None and self.why.startswith("SIG"):
            from tool.cli.common import Interrupted

            raise Interrupted(signum)
        self.why = signal.Signals(signum).name

    def set(self, why: str) -> None:
        if self.why is None:
            self.why = why


def _capture_error(message: str, interface: str | None) -> str:
    """tshark's complaint about an interface, with the fix named."""
    low = message.lower()
    if interface and ("permission" in low or "not permitted" in low):
        return (
            f"no permission to capture on {interface}: run as root, or add yourself to the wireshark "
            "group (sudo usermod -aG wireshark $USER, then log in again)"
        )
    if interface and ("no device named" in low or "no such device" in low or "doesn't exist" in low):
        return f"there is no interface {interface!r}: `ip link` lists them (or `tshark -D`)"
    return message


def _follow(folder: Path, display_filter: str | None, stop: _Stop, end: Any) -> Iterator[Any]:
    """The packets of each capture file that appears in `folder`, in name order, once it is closed (a
    newer file exists, as dumpcap -b rotates); None while waiting. At stop, the newest file is read
    as far as it was written."""
    from tool.capture import CaptureTruncated, stream_packets

    done: set[str] = set()

    def pending(final: bool) -> list[Path]:
        files = sorted(
            (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
            key=lambda p: (p.stat().st_mtime, p.name),
        )
        closed = files if final else files[:-1]
        return [p for p in closed if p.name not in done and p.stat().st_size > 0]

    while stop.why is None:
        for path in pending(final=False):
            done.add(path.name)
            yield from stream_packets(["-r", str(path)], str(path), display_filter, idle=FLUSH, end=end)
            if stop.why is not None:
                return
        yield None
        time.sleep(POLL)
    # The file being written when the watch stopped: read what it holds, a cut at its end is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptureTruncated)
        for path in pending(final=True):
            done.add(path.name)
            yield from stream_packets(["-r", str(path)], str(path), display_filter, end=end)


def _pass_on(held: list) -> None:
    """Show the warnings held so far, keeping only a cut capture's for the end: held for days, the
    list would grow with every warning."""
    from tool.capture import CaptureTruncated
    from tool.cli.common import one_line

    for w in held:
        if not issubclass(w.category, CaptureTruncated):
            click.echo(f"dnp-watch: warning: {one_line(w.message)}", err=True)
    held[:] = [w for w in held if issubclass(w.category, CaptureTruncated)]


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


class _Screen:
    """What a person sees: a live table on a terminal, one line per alert otherwise, nothing if quiet."""

    def __init__(self, out: IO[str] | None, live: bool, title: str, names: list[str], cohort: int):
        self.out, self.title, self.names, self.cohort = out, title, names, cohort
        self.live = None
        self.started = time.monotonic()
        self.rate, self._last = 0.0, (time.monotonic(), 0)
        self.recent: list[str] = []
        if out is not None and live:
            from rich.live import Live

            from tool.report import console

            self.console = console(file=out)
            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()

    def alert(self, alert: Any) -> None:
        line = _alert_line(alert, self.cohort)
        if self.live is not None:
            from tool.report import cell

            self.live.console.print(cell(line, "bold green"))
        elif self.out is not None:
            self.out.write(line + "\n")
            self.out.flush()

    def refresh(self, watcher: Any, lag: float | None, dropped: int, final: bool = False) -> None:
        now = time.monotonic()
        then, count = self._last
        if final:
            # The last table gives the whole run's rate: a run shorter than one measuring interval
            # would otherwise say 0 packets/s, or whatever its last half second did.
            self.rate = watcher.packets / max(now - self.started, 1e-3)
        elif now - then >= 0.5:
            self.rate = (watcher.packets - count) / (now - then)
            self._last = (now, watcher.packets)
        if self.live is not None:
            self.live.update(self._table(watcher, lag, dropped, final), refresh=True)

    def _table(self, watcher: Any, lag: float | None, dropped: int, final: bool) -> Any:
        from rich.table import Table

        from tool.report import _rate, cell, kept_column, line, narrow, table_options, yielding_column

        behind = f", {lag:.1f} s behind" if lag is not None and lag >= 2 else ""
        hosts = len(watcher.hosts) + watcher.evicted
        table = Table(
            title=cell(
                f"{self.title}: {watcher.packets:,} packets, {self.rate:,.0f} packets/s{behind}, "
                f"{hosts:,} host{'s' * (hosts != 1)}, {watcher.alerts} alert{'s' * (watcher.alerts != 1)}, "
                f"{dropped} dropped, "
                f"{time.monotonic() - self.started:.0f} s"
            ),
            caption=None if final else "^C stops and writes the report",
            caption_justify="left",
            **table_options(self.console),  # type: ignore[arg-type]
        )
        calibrated = watcher.rule.cohort is not None
        rows = []
        for s in watcher.scored()[:TABLE_HOSTS]:
            k = s.best
            rate = _rate(float(s.false_match[k]), watcher.rule.rate_over) if calibrated else ""
            rows.append((s, k, f"{s.host.packets:,}", f"{s.scores[k]:.3f}", rate))
        # At 80 columns the MAC, the score, the rate and the verdict stay whole; the IPs give way.
        tight = narrow(self.console)
        kept_column(table, "host", [r[0].host.address for r in rows], narrow=tight)
        yielding_column(table, "IPs")
        kept_column(table, "packets", [r[2] for r in rows], "right", tight)
        kept_column(table, "best match", [self.names[r[1]] for r in rows], narrow=tight)
        kept_column(table, "score", [r[3] for r in rows], "right", tight)
        if calibrated:
            kept_column(table, "false-match rate", [r[4] for r in rows], "right", tight)
        verdicts = [self._verdict(r[0]) for r in rows]
        kept_column(table, "verdict", verdicts, narrow=tight)
        for (s, k, packets, score, rate), verdict in zip(rows, verdicts):
            row = [cell(s.host.address), line(", ".join(s.host.ips[:2])), cell(packets)]
            row += [cell(self.names[k]), cell(score)] + ([cell(rate)] if calibrated else [])
            row.append(cell(verdict, ("bold yellow" if s.also else "bold green") if s.matched else ""))
            table.add_row(*row)
        return table

    def _verdict(self, s: Any) -> str:
        from tool.report import verdict_text

        names = self.names
        return verdict_text(names[s.best] if s.matched else None, [names[j] for j in s.also], s.host.router)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


def _alert_line(alert: Any, cohort: int) -> str:
    import datetime as dt

    from tool.report import _rate, printable, verdict_text

    when = dt.datetime.fromtimestamp(alert.time, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    rate = (
        "" if alert.false_match_rate is None else f" false-match rate {_rate(alert.false_match_rate, cohort)}"
    )
    ips = ",".join(alert.ips) or "-"
    return printable(
        f"{when} ALERT {verdict_text(alert.fingerprint, alert.alternatives)} host {alert.mac} ips {ips} "
        f"score {alert.score:.3f}{rate} "
        f"after {alert.packets} packets"
    )


@click.command(epilog=EXAMPLE)
@click.option("-i", "--interface", metavar="IFACE", help="Capture live on this interface (tshark / dumpcap).")
@click.option(
    "-r", "--read", "read", metavar="FILE|-", help="Read a pcap or pcapng file, or a stream on stdin."
)
@click.option(
    "--follow",
    type=click.Path(exists=True, file_okay=False),
    help="Read each capture file that appears in this folder once it is closed (dumpcap -b ring buffer).",
)
@fingerprint_option
@click.option(
    "--capture-filter",
    metavar="BPF",
    callback=nonempty_filter,
    help="With -i: a capture filter (tcpdump syntax) passed to dumpcap, e.g. 'not port 22' to leave out "
    "the sensor's own session.",
)
@click.option(
    "--filter", "display_filter", metavar="FILTER", callback=nonempty_filter, help="A display filter."
)
@verdict_options("The verdict, as dnp-scan's.", "A raw-score verdict instead.")
@host_packets_option("How many of a host's first packets its set score reads.")
@click.option(
    "--min-packets",
    type=click.IntRange(1),
    default=PACKETS,
    show_default=True,
    help="Alert no earlier than a host's this-many-th packet (fewer: sooner, less certain; a host that "
    "goes idle or is still there at the end is scored with what it sent, as dnp-scan does).",
)
@click.option(
    "--idle",
    type=click.FloatRange(1),
    default=600,
    show_default=True,
    help="Seconds without a packet after which a host is forgotten; when it comes back it is scored "
    "anew, and alerts again.",
)
@click.option("--jsonl", metavar="PATH|-", help="Append one JSON object per alert, flushed at once.")
@click.option("--json", "json_path", metavar="PATH", help="At exit, write dnp-scan's --json report.")
@click.option("--duration", type=click.FloatRange(0, min_open=True), help="Stop after this many seconds.")
@click.option("--packets", "max_packets", type=click.IntRange(1), help="Stop after this many packets.")
@click.option(
    "--models", type=click.Path(exists=True, file_okay=False), help="Model folder (default: shipped)."
)
@click.option(
    "--quiet", is_flag=True, help="No table or alert lines; only --jsonl, --json and the exit status."
)
def command(
    interface: str | None,
    read: str | None,
    follow: str | None,
    fingerprints: tuple[str, ...],
    capture_filter: str | None,
    display_filter: str | None,
    max_false_match: float | None,
    threshold: float | None,
    judge_routers: bool,
    host_packets: int,
    min_packets: int,
    idle: float,
    jsonl: str | None,
    json_path: str | None,
    duration: float | None,
    max_packets: int | None,
    models: str | None,
    quiet: bool,
) -> int:
    """Watch a live interface, a stream on stdin, or a ring-buffer folder for enrolled devices.

    Every packet is scored as dnp-scan scores it; a host is scored by its first --host-packets packets
    with dnp-scan's verdict. An alert is printed (and appended to --jsonl) when a host first matches,
    when its match changes materially, and when it comes back after --idle. It runs until ^C (SIGINT),
    SIGTERM, --duration or --packets, or the end of the input, then writes --json. Exit status as
    dnp-scan: 0 when some host matched, 1 when none did, 2 on error.
    """
    from tool.files import AtomicFile, check_outputs, commit_all

    sources = [x for x in (interface, read, follow) if x is not None]
    if len(sources) != 1:
        raise click.UsageError("give one of -i IFACE, -r FILE|- or --follow DIR")
    if capture_filter and not interface:
        raise click.UsageError("--capture-filter applies to a live capture (-i); use --filter otherwise")
    check_verdict(threshold, max_false_match)
    if read == "-" and sys.stdin is not None and sys.stdin.isatty():
        raise click.UsageError("-r -: standard input is a terminal; pipe a capture into it (tcpdump -w -)")
    if read not in (None, "-") and not Path(read).is_file():
        raise click.UsageError(f"-r {read}: no such file")
    # --jsonl may be a FIFO that a SIEM reads; any other kind of path is checked as an output.
    log_path = jsonl if jsonl not in (None, "-") and not stat.S_ISFIFO(_mode(jsonl)) else None
    check_outputs({"--json": json_path, "--jsonl": log_path},
                  {"the capture": [read] if read not in (None, "-") else [],
                   "a fingerprint": list(fingerprints)})  # fmt: skip
    if jsonl == "-" or not quiet:
        require_stdout()

    from tool.capture import CaptureError, CaptureTruncated, StreamEnd
    from tool.fingerprint import load_all
    from tool.model import Model
    from tool.verdict import verdict_rule
    from tool.watch import Watcher

    model = Model.load(models)
    fps = load_all(fingerprints, model)
    names = [f.name for f in fps]
    rule = verdict_rule(model, "set", threshold, max_false_match, judge_routers)
    watcher = Watcher(model, fps, rule, host_packets=host_packets, min_packets=min_packets, idle=idle)
    report = AtomicFile(json_path) if json_path else None  # a folder that cannot be written fails now
    log: IO[str] | None = None
    stop = _Stop()
    end = StreamEnd()
    from tool.stream import start_dumpcap, stream_segments

    if interface:
        label = interface
        dumpcap = start_dumpcap(interface, capture_filter)
        assert dumpcap.stdout is not None
        source = stream_segments(
            dumpcap.stdout.fileno(), interface, display_filter, idle=FLUSH, end=end, dumpcap=dumpcap
        )
    elif read == "-":
        label = "standard input"
        source = stream_segments(sys.stdin.fileno(), label, display_filter, idle=FLUSH, end=end)
    elif read:
        label = read
        opened = open(read, "rb")  # closed with the process; a file read once
        source = stream_segments(opened.fileno(), read, display_filter, idle=FLUSH, end=end)
    else:
        assert follow is not None
        label = follow
        source = _follow(Path(follow), display_filter, stop, end)

    screen_out = None if quiet else (sys.stderr if jsonl == "-" else sys.stdout)
    on_terminal = screen_out is not None and screen_out.isatty()
    screen = _Screen(
        screen_out,
        on_terminal,
        f"dnp-watch {label}",
        names,
        rule.rate_over,
    )
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    error: str | None = None
    try:
        if jsonl == "-":
            log = sys.stdout
        elif jsonl:
            log = open(jsonl, "a", encoding="utf-8")  # a log: appended to, never replaced

        def emit(alerts: list) -> None:
            for alert in alerts:
                screen.alert(alert)
                if log is not None:
                    log.write(json.dumps(alert.to_dict(), ensure_ascii=False) + "\n")
                    log.flush()

        started = time.monotonic()
        last_refresh = 0.0
        batch: list = []
        batch_start = 0.0
        lag = 0.0
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always", CaptureTruncated)
            try:
                for packet in source:
                    now = time.monotonic()
                    if packet is not None:
                        if not batch:
                            batch_start = now
                        batch.append(packet)
                        if max_packets is not None and watcher.packets + len(batch) >= max_packets:
                            stop.set("--packets")
                    if batch and (packet is None or len(batch) >= CHUNK or now - batch_start >= FLUSH):
                        if interface:  # how old the newest packet is when scored: the backlog
                            lag = time.time() - batch[-1].time
                        emit(watcher.feed(batch))
                        batch = []
                    elif packet is None:
                        lag = 0.0  # tshark had nothing more: caught up
                    if duration is not None and now - started >= duration:
                        stop.set("--duration")
                    if now - last_refresh >= REFRESH:
                        last_refresh = now
                        screen.refresh(watcher, lag if interface else None, end.dropped)
                        _pass_on(held)
                    # --follow reads on after a stop, to the end of the file being written.
                    if stop.why is not None and (follow is None or stop.why == "--packets"):
                        break
            except CaptureError as e:
                # A stream whose tshark ends badly (the sender stopped mid-packet, an interface that went
                # away): what was read is kept and reported, and the exit status says it was not clean.
                if stop.why is None:
                    error = _capture_error(str(e), interface)
            finally:
                source.close()  # stops tshark as ^C does, so that it reports its drops
        emit(watcher.feed(batch))
        emit(watcher.finish())
        screen.refresh(watcher, None, end.dropped, final=True)
        screen.stop()
        for w in held:
            if issubclass(w.category, CaptureTruncated) and error is None:
                error = str(w.message)
        if error is not None and watcher.packets == 0:
            raise click.ClickException(error)
        if log is not None:
            for row in watcher.summaries():
                log.write(json.dumps(row, ensure_ascii=False) + "\n")
            stats = {"event": "stats", "time": time.time(), "packets": watcher.packets,
                     "hosts": len(watcher.hosts) + watcher.evicted, "alerts": watcher.alerts,
                     "dropped": end.dropped, "stopped_by": stop.why or "end of input"}  # fmt: skip
            log.write(json.dumps(stats) + "\n")
            log.flush()
        if report is not None:
            report.handle.write(watcher.result(label, list(fingerprints)).to_json())
            commit_all([report])
    finally:
        if report is not None:
            report.discard()
        if log is not None and log is not sys.stdout:
            log.close()
    if not quiet:
        summary = (
            f"dnp-watch: {watcher.packets:,} packets, {len(watcher.hosts) + watcher.evicted:,} hosts, "
            f"{watcher.alerts} alert{'s' * (watcher.alerts != 1)}, {end.dropped} dropped by the capture"
        )
        stopped = f"; stopped by {stop.why}" if stop.why else ""
        click.echo(summary + stopped + (f"; report in {json_path}" if json_path else ""), err=True)
    if error is not None:
        raise click.ClickException(f"{error}; the alerts and the report cover the packets before it")
    return 0 if watcher.alerts else 1


main = run(command, "dnp-watch")
