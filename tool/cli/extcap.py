"""The DeepNetPrint extcap: a capture interface in Wireshark's dialog whose packets carry their score.

Wireshark runs external capture programs through its extcap interface (the Wireshark developer's
guide, "Extcap: Capture Interfaces"): it asks this program for its interfaces, link types and options,
then runs it with `--capture --fifo PATH`, and reads pcapng from the FIFO. This one captures on a
network interface with dumpcap, scores every packet as dnp-watch does, and writes each packet with
the comment `deepnetprint.match=0.9312345028877258 target=cam host_match=0.999376` (tool.pcapng.comment_text),
which the Lua plugin shows as deepnetprint.match when no sidecar applies.

`dnp-plugin install --extcap` puts a launcher for it into Wireshark's extcap folder.
"""

from __future__ import annotations

import struct
import sys
from collections import deque
from pathlib import Path

import click

from tool.constants import MAX_FALSE_MATCH

INTERFACE = "deepnetprint"
VERSION = "0.1.0"
FLUSH = 0.1


def _interfaces() -> list[str]:
    try:
        return sorted(p.name for p in Path("/sys/class/net").iterdir())
    except OSError:
        return []


def _print_config() -> None:
    click.echo(
        "arg {number=0}{call=--iface}{display=Capture on}{type=selector}{required=true}"
        "{tooltip=The network interface whose packets are scored}"
    )
    for name in _interfaces():
        click.echo(f"value {{arg=0}}{{value={name}}}{{display={name}}}")
    click.echo(
        "arg {number=1}{call=--fingerprint}{display=Fingerprint}{type=fileselect}{mustexist=true}"
        "{required=true}{tooltip=A fingerprint file from dnp-enroll}"
    )
    click.echo(
        "arg {number=2}{call=--max-false-match}{display=Verdict: false-match rate}{type=double}"
        f"{{default={MAX_FALSE_MATCH:g}}}{{tooltip=As dnp-scan's --max-false-match}}"
    )


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--extcap-interfaces", is_flag=True)
@click.option("--extcap-version", default=None)
@click.option("--extcap-interface", default=None)
@click.option("--extcap-dlts", is_flag=True)
@click.option("--extcap-config", is_flag=True)
@click.option("--extcap-capture-filter", default=None)
@click.option("--capture", is_flag=True)
@click.option("--fifo", default=None)
@click.option("--iface", default=None)
@click.option("--fingerprint", default=None)
@click.option("--max-false-match", type=float, default=None)
@click.option("--extcap-control-in", default=None, hidden=True)
@click.option("--extcap-control-out", default=None, hidden=True)
@click.option("--debug", is_flag=True, hidden=True)
@click.option("--debug-file", default=None, hidden=True)
def command(
    extcap_interfaces: bool,
    extcap_version: str | None,
    extcap_interface: str | None,
    extcap_dlts: bool,
    extcap_config: bool,
    extcap_capture_filter: str | None,
    capture: bool,
    fifo: str | None,
    iface: str | None,
    fingerprint: str | None,
    max_false_match: float | None,
    **_ignored: object,
) -> int:
    """Wireshark's extcap protocol for the DeepNetPrint capture interface (Wireshark runs this)."""
    if extcap_interfaces:
        click.echo(f"extcap {{version={VERSION}}}{{help=https://github.com/deepnetprint/deepnetprint}}")
        click.echo(
            f"interface {{value={INTERFACE}}}{{display=DeepNetPrint: packets scored against a fingerprint}}"
        )
        return 0
    if extcap_interface not in (None, INTERFACE):
        raise click.UsageError(f"no extcap interface {extcap_interface!r}; this program offers {INTERFACE!r}")
    if extcap_dlts:
        click.echo("dlt {number=1}{name=EN10MB}{display=Ethernet}")
        return 0
    if extcap_config:
        _print_config()
        return 0
    if not capture:
        raise click.UsageError("nothing to do: Wireshark runs this with --extcap-interfaces, --capture, ...")
    if not fifo or not iface or not fingerprint:
        raise click.UsageError("--capture needs --fifo, --iface and --fingerprint")
    return _capture(fifo, iface, fingerprint, extcap_capture_filter, max_false_match)


def _capture(fifo: str, iface: str, fingerprint: str, bpf: str | None, max_false_match: float | None) -> int:
    import signal

    from tool.capture import StreamEnd
    from tool.fingerprint import load
    from tool.hosts import host_of
    from tool.model import Model
    from tool.pcapng import comment_text, commented_packet, commented_stream_header
    from tool.stream import start_dumpcap, stream_segments
    from tool.verdict import verdict_rule
    from tool.watch import Watcher

    class _Stopped(Exception):
        pass

    def stopped(_signum: int, _frame: object) -> None:
        raise _Stopped

    # Wireshark ends a capture with SIGTERM (or ^C under tshark): the end of a capture, not an error.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopped)
    model = Model.load()
    fp = load(fingerprint, model)
    watcher = Watcher(model, [fp], verdict_rule(model, "set", None, max_false_match))
    dumpcap = start_dumpcap(iface, bpf)
    assert dumpcap.stdout is not None
    raw: deque[tuple[bytes, bytes]] = deque()
    end = StreamEnd()
    source = stream_segments(dumpcap.stdout.fileno(), iface, idle=FLUSH, end=end, dumpcap=dumpcap, raw=raw)
    out = open(fifo, "wb", buffering=0)  # noqa: SIM115 - Wireshark's FIFO, for as long as the capture runs
    started = False
    batch: list = []

    def flush() -> None:
        nonlocal started
        _, probs = watcher.feed_scored(batch)
        blocks = []
        for packet, row in zip(batch, probs):
            header, record = raw.popleft()
            # dumpcap -P writes pcap in the machine's byte order, microseconds (nanoseconds: 4d3c magic).
            order = "<" if header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
            if not started:
                blocks.append(commented_stream_header(struct.unpack_from(order + "I", header, 20)[0]))
                started = True
            sec, usec, _, orig = struct.unpack_from(order + "IIII", record)
            if header[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
                usec //= 1000
            address = host_of(packet)[0]
            host = watcher.host_score(address) if address else None
            k = int(row.argmax())
            router = bool(address) and watcher.is_router(address)
            comment = comment_text(float(row[k]), watcher.names[k], host, router=router)
            blocks.append(commented_packet(sec * 1_000_000 + usec, record[16:], orig, comment))
        out.write(b"".join(blocks))
        batch.clear()

    try:
        for packet in source:
            if packet is not None:
                batch.append(packet)
            if batch and (packet is None or len(batch) >= 256):
                flush()
        if batch:
            flush()
    except (BrokenPipeError, _Stopped):
        pass  # Wireshark stopped the capture (and closed its end of the FIFO)
    finally:
        source.close()
        try:
            out.close()
        except OSError:
            pass
    return 0


def main() -> None:
    from tool.cli.common import run

    run(command, "deepnetprint-extcap")()


def launcher() -> str:
    """The executable `dnp-plugin install --extcap` puts into Wireshark's extcap folder: this Python,
    with the folder that holds `tool` first on its path, so it runs what is installed now."""
    root = Path(__file__).resolve().parent.parent.parent
    return (
        f"#!{sys.executable}\n"
        "# DeepNetPrint's Wireshark extcap, written by `dnp-plugin install --extcap`.\n"
        "import sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "import tool.cli.extcap as m\n"
        "m.main()\n"
    )
