"""A capture that never ends: a pcap or pcapng byte stream read through a succession of bounded tshark runs.

tshark keeps state for every packet of a capture it reads (about 0.5 KB each, `-M` does not free it),
so one tshark over a stream of days would grow without bound. Here the stream (stdin, or what dumpcap
writes for a live interface) is cut into segments of SEGMENT packets at packet boundaries; each
segment goes to a tshark of its own, fed the capture's header first, and the next tshark is started
while the current one works, so no packet waits for tshark to start. Packets come out in order, as
`tool.capture` parses them, with frame numbers counted over the whole stream.

Only the record framing is read here (pcap record headers, pcapng block lengths): every byte of a
packet goes to tshark as it came.
"""

from __future__ import annotations

import os
import queue
import re
import select
import struct
import subprocess
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import replace

from tool.capture import (
    CaptureError,
    CaptureTruncated,
    Packet,
    ReadAhead,
    StreamEnd,
    first_error_line,
    parse_line,
    tshark_command,
)

SEGMENT = 100_000  # packets per tshark run: its memory, about 50 MB, against its start, about a second
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",  # nanosecond pcap
    b"\xa1\xb2\x3c\x4d": ">",
}
_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_PACKETS = (2, 3, 6)  # obsolete Packet, Simple Packet and Enhanced Packet blocks
_IDB = 1
# dumpcap at exit: "Packets received/dropped on interface 'eth0': 1888/3 (...)".
_DUMPCAP_DROPPED = re.compile(r"received/dropped on interface .*?: \d+/(\d+)")


class _Records:
    """Cuts a capture byte stream into (is_packet, bytes) records, keeping the header a tshark run needs."""

    def __init__(self, fd: int, label: str, stop: threading.Event):
        self.fd, self.label, self.stop = fd, label, stop
        self.buf = bytearray()
        self.header = b""  # pcap: the file header; pcapng: the section header and interface blocks
        self.cut = False  # the stream ended inside a record
        self.eof = False

    def _fill(self) -> bool:
        # A silent producer must not keep the watch from stopping: wait in short slices.
        while not self.stop.is_set():
            try:
                if select.select([self.fd], [], [], 0.2)[0]:
                    break
            except (OSError, ValueError):
                break
        if self.stop.is_set():
            self.eof = True
            return False
        try:
            data = os.read(self.fd, 1 << 16)
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            if not self._fill():
                return False
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def records(self) -> Iterator[tuple[bool, bytes]]:
        if not self._need(4):
            if self.buf:
                raise CaptureError(f"{self.label}: not a pcap or pcapng capture")
            raise CaptureError(f"{self.label}: empty stream, not a capture")
        magic = bytes(self.buf[:4])
        if magic in _PCAP_MAGICS:
            yield from self._pcap(_PCAP_MAGICS[magic])
        elif magic == _SHB:
            yield from self._pcapng()
        else:
            raise CaptureError(f"{self.label}: not a pcap or pcapng capture")

    def _pcap(self, order: str) -> Iterator[tuple[bool, bytes]]:
        if not self._need(24):
            self.cut = True
            return
        self.header = self._take(24)
        record = struct.Struct(order + "IIII")
        while self._need(16) or self.buf:
            if len(self.buf) < 16:
                self.cut = True
                return
            _, _, incl, _ = record.unpack_from(self.buf)
            if incl > 1 << 28:
                raise CaptureError(f"{self.label}: a packet of {incl} bytes: not a pcap stream, or damaged")
            if not self._need(16 + incl):
                self.cut = True
                return
            yield True, self._take(16 + incl)

    def _pcapng(self) -> Iterator[tuple[bool, bytes]]:
        order = "<"
        while self._need(12) or self.buf:
            if len(self.buf) < 12:
                self.cut = True
                return
            if self.buf[:4] == _SHB:
                order = "<" if self.buf[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
            kind, length = struct.unpack_from(order + "II", self.buf)
            if length < 12 or length % 4 or length > 1 << 28:
                raise CaptureError(f"{self.label}: a pcapng block of {length} bytes: damaged stream")
            if not self._need(length):
                self.cut = True
                return
            block = self._take(length)
            if kind == struct.unpack(order + "I", _SHB)[0]:
                self.header = block  # a new section: its interfaces follow
            elif kind == _IDB:
                self.header += block
            yield kind in _PCAPNG_PACKETS, block


class _Run:
    """One tshark over one segment of the stream."""

    def __init__(self, display_filter: str | None, first_frame: int):
        self.err = tempfile.TemporaryFile()
        cmd = tshark_command(["-l", "-r", "-"], display_filter)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        self.offset = first_frame  # frames before this segment

    def close(self) -> None:
        """Stop tshark if it still runs, and close its pipes and its stderr file."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.err):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")


def stream_segments(
    source: int,
    label: str,
    display_filter: str | None = None,
    *,
    idle: float | None = None,
    end: StreamEnd | None = None,
    segment: int = SEGMENT,
    dumpcap: subprocess.Popen | None = None,
    raw: deque[tuple[bytes, bytes]] | None = None,
) -> Iterator[Packet | None]:
    """The packets of the capture stream on file descriptor `source`, through one tshark per `segment`
    packets; a None every `idle` seconds without any. `dumpcap`, when the stream is its output, is
    stopped at the end and its drop count goes into `end`. `raw`, without a display filter, receives
    (the capture's header, the packet's record) for each packet before the packet is yielded.

    >>> for p in stream_segments(sys.stdin.fileno(), "standard input", idle=0.2):   # doctest: +SKIP
    """
    end = end if end is not None else StreamEnd()
    runs: queue.Queue[_Run | None] = queue.Queue()
    stop = threading.Event()
    failure: list[BaseException] = []
    records = _Records(source, label, stop)
    counted = [0]

    def feed() -> None:
        run: _Run | None = None
        spare: _Run | None = None
        in_run = 0
        try:
            for is_packet, data in records.records():
                if stop.is_set():
                    break
                if run is None or (is_packet and in_run >= segment):
                    if run is not None:
                        run.proc.stdin.close()  # type: ignore[union-attr]
                    run = spare or _Run(display_filter, counted[0])
                    run.offset = counted[0]
                    runs.put(run)
                    run.proc.stdin.write(records.header)  # type: ignore[union-attr]
                    in_run = 0
                    spare = _Run(display_filter, 0)  # started now, so that it is ready when needed
                    if not is_packet:
                        continue  # a run starts at a packet, or at the section header just written
                if is_packet and raw is not None:
                    raw.append((records.header, data))
                run.proc.stdin.write(data)  # type: ignore[union-attr]
                run.proc.stdin.flush()  # type: ignore[union-attr]
                if is_packet:
                    in_run += 1
                    counted[0] += 1
        except (BrokenPipeError, OSError, ValueError) as e:
            # A run closed under the feeder (the watch stopping) is no failure of the stream.
            if not stop.is_set() and isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
                failure.append(e)
        except CaptureError as e:
            failure.append(e)
        finally:
            if run is not None:
                try:
                    run.proc.stdin.close()  # type: ignore[union-attr]
                except OSError:
                    pass
            if spare is not None:
                spare.close()
            runs.put(None)

    feeder = threading.Thread(target=feed, name="capture-feeder", daemon=True)
    feeder.start()
    current: _Run | None = None
    last = None
    try:
        while True:
            try:
                current = runs.get(timeout=idle)
            except queue.Empty:
                yield None
                continue
            if current is None:
                break
            reader = ReadAhead(current.proc.stdout)  # type: ignore[arg-type]
            whole = False
            try:
                for line in reader.lines(idle):
                    if line is None:
                        yield None
                        continue
                    packet = parse_line(line)
                    if current.offset:
                        packet = replace(packet, frame=packet.frame + current.offset)
                    last = packet.frame
                    yield packet
                whole = True
            finally:
                if not whole:  # closed early: the reader thread waits on tshark until it goes
                    current.proc.kill()
                reader.close()
            current.proc.wait()
            if current.proc.returncode != 0 and not stop.is_set():
                stderr = current.stderr()
                # A segment cut at a record boundary is whole; tshark complains only of damage.
                msg = first_error_line(stderr)
                if display_filter and display_filter.strip() in stderr:
                    raise CaptureError(f"invalid display filter {display_filter!r}: {msg}")
                raise CaptureError(f"{label}: {msg}")
            current.close()
            current = None
    finally:
        stop.set()
        if dumpcap is not None and dumpcap.poll() is None:
            dumpcap.terminate()  # dumpcap's SIGTERM handler writes its statistics, drops included
        for run in (current, *_drain(runs)):
            if run is not None:
                run.close()
        if dumpcap is not None:
            try:
                dumpcap.wait(timeout=5)
            except subprocess.TimeoutExpired:
                dumpcap.kill()
                dumpcap.wait()
        feeder.join(timeout=5)
        if dumpcap is not None:
            end.returncode = dumpcap.returncode
            err = _dumpcap_stderr(dumpcap)
            end.dropped = sum(int(n) for n in _DUMPCAP_DROPPED.findall(err))
    if dumpcap is not None and dumpcap.returncode not in (0, None) and last is None:
        raise CaptureError(first_error_line(_dumpcap_stderr(dumpcap)))
    if failure:
        raise failure[0] if isinstance(failure[0], CaptureError) else CaptureError(f"{label}: {failure[0]}")
    if records.cut:
        where = f"after frame {last}; frames 1 to {last} were read" if last else "before its first packet"
        warnings.warn(
            CaptureTruncated(f"{label}: the capture is cut short in the middle of a packet {where}"),
            stacklevel=2,
        )


def _drain(runs: queue.Queue) -> list:
    out = []
    while True:
        try:
            out.append(runs.get_nowait())
        except queue.Empty:
            return out


def _dumpcap_stderr(proc: subprocess.Popen) -> str:
    err = getattr(proc, "err_file", None)
    if err is None:
        return ""
    err.seek(0)
    return err.read().decode("utf-8", "replace")


def start_dumpcap(interface: str, capture_filter: str | None = None) -> subprocess.Popen:
    """dumpcap capturing on `interface` and writing pcap to its stdout (read it with stream_segments)."""
    import shutil

    path = shutil.which("dumpcap")
    if not path:
        raise CaptureError("dumpcap not found: install it (apt-get install -y tshark)")
    cmd = [path, "-q", "-P", "-i", interface, "-w", "-"] + (["-f", capture_filter] if capture_filter else [])
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, preexec_fn=_die_with_parent
    )
    proc.err_file = err  # type: ignore[attr-defined]
    return proc


def _die_with_parent() -> None:
    """In dumpcap's child before exec: SIGTERM when the watch dies. The tsharks end by themselves when
    their stdin closes; dumpcap on a silent link would capture for ever, for no one."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: no such guard
