"""Reading packets out of capture files through one tshark process.

Every packet the tool looks at comes from here: one streaming `tshark -T fields` run per
capture (or per set of captures merged with `mergecap`), never the whole capture in memory.

Stateful analyses that depend on what else is in the file (TCP sequence analysis, ARP
duplicate-address detection) are switched off, so that a packet's Info text is the same whether
its capture is read alone or merged with others.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, NamedTuple

# The order of the fields tshark prints; Info goes last so a stray tab inside it stays in it.
FIELDS = (
    "frame.interface_id",
    "frame.number",
    "frame.time_epoch",
    "eth.src",
    "eth.dst",
    "sll.src.eth",  # Linux cooked capture (SLL, SLL2): the sender's MAC, where eth.src is absent
    "wlan.sa",  # 802.11 (with or without radiotap): the source address, the sender's MAC on Wi-Fi
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "frame.len",
    "_ws.col.Protocol",
    # Fields Wireshark dissects but the Info column does not show, what Fingerbank and JA3 identify a
    # client by (tool.text.field_tag; a model reads them only where its manifest sets config.fields):
    "_ws.col.prl",  # the DHCP parameter request list, every item (the custom column of TSHARK_PREFS)
    "dhcp.option.vendor_class_id",  # the DHCP vendor class (option 60)
    "tls.handshake.ja3",  # the MD5 of a TLS Client Hello's JA3 string
    "http.user_agent",  # an HTTP request's User-Agent
    "_ws.col.Info",
)

# Dissector state that would make a packet's text depend on its neighbours in the file.
TSHARK_PREFS = (
    "tcp.analyze_sequence_numbers:FALSE",
    "arp.detect_duplicate_ips:FALSE",
    # The columns tshark computes: Protocol, Info, and "prl", a custom column of every DHCP parameter
    # request list item comma-separated (occurrence 0: all), which `-E occurrence=f` would cut to the
    # first item had it been a plain -e field.
    'gui.column.format:"Protocol","%p","Info","%i","prl","%Cus:dhcp.option.request_list_item:0:R"',
)


class CaptureError(Exception):
    """A capture could not be read: the message is one line for the user."""


class CaptureTruncated(UserWarning):
    """A capture ends in the middle of a packet; the packets before the cut were read."""


# What tshark says of a file that ends inside a packet (pcap and pcapng alike).
_CUT_SHORT = "cut short in the middle of a packet"


# Source addresses that name no host: a DHCP client before it has an address (and no address at all).
_UNSPECIFIED = ("", "0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet as the tool sees it: addresses, length and Wireshark's summary columns."""

    frame: int
    time: float
    eth_src: str
    eth_dst: str
    ip_src: str
    ip_dst: str
    length: int
    protocol: str
    info: str
    source: int = 0  # index of the input file, when several were read in one tshark run
    sll_src: str = ""  # the sender's MAC in a Linux cooked capture (no Ethernet header there)
    wlan_src: str = ""  # the source address of an 802.11 frame (no Ethernet header there either)
    # Dissected fields the Info column does not show (FIELDS; tool.text.field_tag), "" where absent:
    dhcp_prl: str = ""  # the DHCP parameter request list, comma-separated option numbers
    dhcp_vendor: str = ""  # the DHCP vendor class identifier
    ja3: str = ""  # the JA3 hash of a TLS Client Hello
    user_agent: str = ""  # the User-Agent of an HTTP request

    @property
    def host(self) -> str:
        """The sending host's address: the best the link layer offers (see `host_kind`); "" if none."""
        return source_host(self.eth_src, self.sll_src, self.ip_src, self.wlan_src)[0]

    @property
    def host_kind(self) -> str:
        """What `host` is: "mac" (Ethernet source), "wlan" (802.11 source address), "sll" (cooked-capture
        source MAC), "ip", or "".

        Captures without Ethernet (Wi-Fi, `tcpdump -i any`, raw IP from tunnels and VPNs) have no
        eth.src; keyed by it, all their packets would make one host.
        """
        return source_host(self.eth_src, self.sll_src, self.ip_src, self.wlan_src)[1]


def source_host(eth_src: str, sll_src: str, ip_src: str, wlan_src: str = "") -> tuple[str, str]:
    """(address, kind) of a packet's sender, the best its link layer offers: the Ethernet source
    ("mac"), the 802.11 source address ("wlan"), the cooked-capture source MAC ("sll"), the IP source
    ("ip"), or ("", "") for none (Bluetooth, USB, ... with no IP: no host)."""
    if eth_src:
        return eth_src, "mac"
    if wlan_src:
        # The frame's source address, not the transmitter's: what the AP forwards from a wired host is
        # that host's, as on Ethernet. Keyed by IP instead, a device's packets before DHCP are lost.
        return wlan_src, "wlan"
    if sll_src:
        return sll_src, "sll"
    # 0.0.0.0 is what a DHCP client says before it has an address: every device's, not one host's.
    if ip_src in _UNSPECIFIED:
        return "", ""
    return ip_src, "ip"


class Sender(NamedTuple):
    """Who sent a packet and when: what counting hosts needs, without the rest of a Packet."""

    host: str
    host_kind: str
    ip_src: str
    time: float
    protocol: str  # Wireshark's Protocol and Info columns: whether a router's packet is an answer
    info: str
    ip_dst: str = ""  # where it goes: a packet from the internet to a private address was forwarded


def tshark_path() -> str:
    """The tshark executable, or a CaptureError saying how to install it."""
    path = os.environ.get("DNP_TSHARK") or shutil.which("tshark")
    if not path:
        raise CaptureError("tshark not found: install it (apt-get install -y tshark) or set DNP_TSHARK")
    return path


def split_line(line: str) -> list[str]:
    """One line of `tshark_command`'s output as its FIELDS' texts, in FIELDS' order."""
    parts = line.split("\t", len(FIELDS) - 1)
    if len(parts) < len(FIELDS):
        parts += [""] * (len(FIELDS) - len(parts))
    return parts


def packet_of(parts: Sequence[str]) -> Packet:
    """The Packet of a line's fields (`split_line`)."""
    iface, frame, when, esrc, edst, sll, wsa, ip4s, ip4d, ip6s, ip6d = parts[:11]
    length, proto, prl, vc, ja3, ua, info = parts[11:]
    return Packet(
        frame=int(frame),
        time=float(when or 0.0),
        eth_src=esrc.lower(),
        eth_dst=edst.lower(),
        ip_src=ip4s or ip6s,
        ip_dst=ip4d or ip6d,
        length=int(length or 0),
        protocol=proto,
        info=info,
        source=int(iface or 0),
        sll_src=sll.lower(),
        wlan_src=wsa.lower(),
        dhcp_prl=prl,
        dhcp_vendor=vc,
        ja3=ja3,
        user_agent=ua,
    )


def sender_of(parts: Sequence[str]) -> Sender:
    """The Sender of a line's fields (`split_line`): a fraction of `packet_of`'s cost, for the many
    packets whose host is counted but whose text is never read."""
    _, _, when, esrc, _, sll, wsa, ip4s, ip4d, ip6s, ip6d, _, protocol, _, _, _, _, info = parts
    ip = ip4s or ip6s
    host, kind = source_host(esrc.lower(), sll.lower(), ip, wsa.lower())
    return Sender(host, kind, ip, float(when or 0.0), protocol, info, ip4d or ip6d)


def parse_line(line: str) -> Packet:
    """One line of `tshark_command`'s output as a Packet."""
    return packet_of(split_line(line))


class ReadAhead:
    """tshark's output, read by a thread into a bounded queue while the caller works on earlier lines.

    A pipe holds 64 KiB: without a reader that keeps draining it, tshark stops whenever the caller
    is busy scoring a chunk, and the two take turns instead of running side by side.
    """

    BLOCK = 1 << 16
    AHEAD = 256  # blocks queued at most: 16 MiB, memory stays bounded whatever the capture

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.queue: queue.Queue[bytes | None] = queue.Queue(self.AHEAD)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="tshark-reader", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            while not self.stop.is_set():
                block = self.stream.read1(self.BLOCK)  # type: ignore[attr-defined]
                if not block:
                    break
                self._put(block)
        except (OSError, ValueError):  # the pipe was closed under us: the reader is being stopped
            pass
        finally:
            self._put(None)

    def _put(self, item: bytes | None) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def lines(self, idle: float | None = None) -> Iterator[str | None]:
        """The output's lines, without their newline; bytes that are not UTF-8 become U+FFFD.

        With `idle`, a None whenever that many seconds pass without output: a live capture may be
        silent for hours, and its reader still has a screen to refresh and a clock to watch.
        """
        rest = b""
        while True:
            try:
                block = self.queue.get(timeout=idle)
            except queue.Empty:
                yield None
                continue
            if block is None:
                break
            data = rest + block
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                yield from data[: cut - 1].decode("utf-8", "replace").split("\n")
        if rest:
            yield rest.decode("utf-8", "replace")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.stream.close()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CaptureError(f"{path}: no such file")
    if not path.is_file():
        raise CaptureError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise CaptureError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise CaptureError(f"{path}: empty file, not a capture")


def first_error_line(stderr: str) -> str:
    """What went wrong, from tshark's (or dumpcap's) stderr: its first line that is not a note."""
    for line in stderr.splitlines():
        line = line.strip()
        # tshark's notes on who it runs as and where it captures are not what went wrong.
        if line and not line.startswith(("Running as user", "Capturing on")):
            return line
    return "tshark failed"


def tshark_command(input_args: Sequence[str], display_filter: str | None = None) -> list[str]:
    """The tshark run that prints FIELDS for each packet of the input that `input_args` name.

    >>> tshark_command(["-r", "cam.pcap"])              # a file
    >>> tshark_command(["-l", "-i", "eth0", "-f", "not port 22"])   # live, a line per packet at once
    """
    cmd = [tshark_path(), "-n", *input_args]
    cmd += ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=f", "-E", "quote=n"]
    for pref in TSHARK_PREFS:
        cmd += ["-o", pref]
    for field in FIELDS:
        cmd += ["-e", field]
    if display_filter:
        cmd += ["-Y", display_filter]
    return cmd


def read_packets(path: str | os.PathLike, display_filter: str | None = None) -> Iterator[Packet]:
    """Stream the packets of one capture (pcap or pcapng), optionally through a display filter.

    >>> for p in read_packets("cam.pcap", "eth.src == b0:c5:54:25:5b:0e"):
    ...     print(p.frame, p.protocol, p.info)
    """
    with closing(read_fields(path, display_filter)) as lines:
        for parts in lines:
            yield packet_of(parts)


def read_fields(path: str | os.PathLike, display_filter: str | None = None) -> Iterator[list[str]]:
    """`read_packets`, each packet as its line's fields (`split_line`), not yet a Packet."""
    path = Path(path)
    _check_readable(path)
    with closing(stream_fields(["-r", str(path)], str(path), display_filter)) as lines:
        for parts in lines:
            assert parts is not None  # no `idle`, no None
            yield parts


# What tshark prints at exit for packets the kernel or dumpcap dropped because nobody read them.
_DROPPED_RE = re.compile(r"^(\d+) packets? dropped\b", re.MULTILINE)


@dataclass
class StreamEnd:
    """How a `stream_packets` run ended: tshark's exit status and the packets it says were dropped."""

    returncode: int | None = None
    dropped: int = 0


def stream_packets(
    input_args: Sequence[str],
    label: str,
    display_filter: str | None = None,
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    idle: float | None = None,
    end: StreamEnd | None = None,
) -> Iterator[Packet | None]:
    """The packets of one tshark run over `input_args` (`tshark_command`), a None every `idle` seconds
    without any; `label` names the input in errors. Closing the generator early stops tshark as ^C
    does, so that it still reports what it dropped (in `end`).

    >>> for p in stream_packets(["-l", "-i", "eth0"], "eth0", idle=0.2):   # doctest: +SKIP
    ...     if p is None: refresh_screen()
    """
    # closing(): a caller that stops early stops tshark at once, not when the collector comes by.
    with closing(stream_fields(input_args, label, display_filter, stdin=stdin, idle=idle, end=end)) as lines:
        for parts in lines:
            yield None if parts is None else packet_of(parts)


def stream_fields(
    input_args: Sequence[str],
    label: str,
    display_filter: str | None = None,
    *,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    idle: float | None = None,
    end: StreamEnd | None = None,
) -> Iterator[list[str] | None]:
    """`stream_packets`, each packet as its line's fields (`split_line`)."""
    cmd = tshark_command(input_args, display_filter)
    end = end if end is not None else StreamEnd()
    with tempfile.TemporaryFile() as err:
        # stderr goes to a file, not a pipe: a chatty tshark must never block on a full pipe.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=stdin)
        assert proc.stdout is not None
        reader = ReadAhead(proc.stdout)
        last = None
        try:
            for line in reader.lines(idle):
                if line is None:
                    yield None
                    continue
                parts = split_line(line)
                last = parts[1]
                yield parts
        finally:
            if proc.poll() is None:
                proc.terminate()  # tshark's SIGTERM handler prints its counts, drops included
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
            reader.close()
            proc.wait()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
            end.returncode = proc.returncode
            end.dropped = sum(int(n) for n in _DROPPED_RE.findall(stderr))
    # tshark exits 2 on a capture cut short after printing what it could read. A capture copied
    # while it was being written ends that way, and its packets are evidence: they are kept, and the
    # caller is warned (a CaptureTruncated warning) where reading stopped. Nothing read is an error.
    if proc.returncode != 0 and _CUT_SHORT in stderr and last is not None:
        where = (
            f"the packets before the cut were read (the last matching the filter is frame {last})"
            if display_filter
            else f"after frame {last}; frames 1 to {last} were read"
        )
        warnings.warn(CaptureTruncated(f"{label}: the capture is {_CUT_SHORT} {where}"), stacklevel=4)
        return
    if proc.returncode != 0:
        msg = first_error_line(stderr)
        # tshark echoes a filter it cannot compile under its complaint.
        if display_filter and display_filter.strip() in stderr:
            raise CaptureError(f"invalid display filter {display_filter!r}: {msg}")
        raise CaptureError(f"{label}: {msg}")


def concatenate(paths: Sequence[str | os.PathLike], out: Path) -> None:
    """Write the captures one after the other into one pcapng, one interface per input file.

    `mergecap -a` keeps each file's packets in order; `-I none` keeps their interfaces apart, so a
    packet's frame.interface_id is the index of the file it came from.
    """
    mergecap = shutil.which("mergecap")
    if not mergecap:
        raise CaptureError("mergecap not found: install tshark's tools (apt-get install -y tshark)")
    done = subprocess.run(
        [mergecap, "-a", "-I", "none", "-F", "pcapng", "-w", str(out), *map(str, paths)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise CaptureError(f"mergecap: {first_error_line(done.stderr)}")


def read_many(paths: Sequence[str | os.PathLike], display_filter: str | None = None) -> Iterator[Packet]:
    """Stream the packets of several captures through one tshark run.

    The files are concatenated (not interleaved by time) with `mergecap -a -I none`, which
    keeps one interface per input file, so `Packet.source` says which file a packet came from
    and `Packet.frame` counts from 1 within that file.
    """
    with closing(read_many_fields(paths, display_filter)) as lines:
        for _, first, parts in lines:
            packet = packet_of(parts)
            yield replace(packet, frame=packet.frame - first) if first else packet


def read_many_fields(
    paths: Sequence[str | os.PathLike], display_filter: str | None = None
) -> Iterator[tuple[int, int, list[str]]]:
    """`read_many`, each packet as (source, first, fields): the index of its file, how many frames of
    the concatenation come before that file (its frame number in its own file is the fields' frame
    number minus `first`), and its line's fields (`split_line`)."""
    paths = [Path(p) for p in paths]
    for p in paths:
        _check_readable(p)
    if len(paths) == 1:
        with closing(read_fields(paths[0], display_filter)) as lines:
            for parts in lines:
                yield 0, 0, parts
        return
    with tempfile.TemporaryDirectory(prefix="dnp-") as tmp:
        merged = Path(tmp) / "merged.pcapng"
        concatenate(paths, merged)
        offsets: dict[int, int] = {}
        iface, source, first, previous = None, 0, 0, "0"
        with closing(read_fields(merged, display_filter)) as lines:
            for parts in lines:
                if parts[0] != iface:  # the next file (packets of one file are consecutive)
                    iface = parts[0]
                    source = int(iface or 0)
                    # Interface ids stand for input files only while every input had one interface;
                    # a file whose ids come back (its interfaces' packets interleave) or run past the
                    # inputs would be misattributed, so refuse instead.
                    if source >= len(paths) or source in offsets:
                        raise CaptureError("an input capture has several interfaces; read it on its own")
                    first = offsets[source] = int(previous)
                previous = parts[1]
                yield source, first, parts
