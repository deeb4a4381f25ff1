"""Scores handed to Wireshark: the sidecar CSV the Lua plugin reads, and a pcapng copy with comments.

The sidecar (`dnp-scan --annotate PATH`) is the contract between dnp-scan and lua/deepnetprint.lua:
a CSV with the header `frame,score,target,host_match` and one row per scored frame, where `frame` is
the 1-based number Wireshark gives the frame in that capture file, `score` the best fingerprint's
probability in [0, 1], `target` that fingerprint's name, and `host_match` the host score (in [-1, 1])
of the frame's sending host for that host's best fingerprint, so that a filter on it shows every
packet of a matching host. A sidecar of an older dnp-scan has no `host_match` column; it still reads.

The commented copy (`dnp-scan --pcapng OUT`) is for analysts who cannot install a plugin: each scored
packet carries the packet comment `deepnetprint.match=0.9312 target=cam host_match=0.9871`, readable
as `frame.comment`.
It is written here in Python, block by block, because `editcap -a` takes one argument per comment and
fails with "argument list too long" near 60,000 comments.
"""

from __future__ import annotations

import csv
import math
import operator
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from tool.files import OutputError, atomic_output

SIDECAR_HEADER = ("frame", "score", "target", "host_match")
OLD_SIDECAR_HEADER = SIDECAR_HEADER[:3]
# The first line of a sidecar that names its capture: `#deepnetprint frames=401 first=T1,T2,T3
# capture=NAME`. Older sidecars start with the header; they still read, unchecked.
IDENTITY_PREFIX = "#deepnetprint "
IDENTITY_FRAMES = 3  # how many first frames' timestamps the identity records
# Timestamps travel as decimal seconds and the plugin reads them as doubles (about 0.24 µs apart at
# 2016's epoch seconds): a smaller difference is the same instant.
TIME_TOLERANCE = 2e-6
_IDENTITY_RE = re.compile(r"#deepnetprint frames=([0-9]+) first=([0-9.,]*) capture=(.*)")
COMMENT_PREFIX = "deepnetprint.match="

_FRAME_RE = re.compile(r"[0-9]+")

# pcap's magic numbers, as read little-endian: microsecond and nanosecond timestamps.
_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 6),
    b"\xa1\xb2\xc3\xd4": (">", 6),
    b"\x4d\x3c\xb2\xa1": ("<", 9),
    b"\xa1\xb2\x3c\x4d": (">", 9),
}
_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_PB = 0x00000002  # obsolete Packet Block
_SPB = 0x00000003
_EPB = 0x00000006
_SJEB = 0x00000009  # systemd journal export: Wireshark gives it a frame number, but it holds no packet
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_ENDOFOPT = 0
_OPT_COMMENT = 1


class AnnotateError(Exception):
    """The commented copy could not be written: the message is one line for the user."""


def _check_row(
    frame: object, score: object, target: object, host_match: object = None
) -> tuple[int, float, str, float | None]:
    try:
        # operator.index takes numpy integers too, and refuses 2.0 and "2".
        number = operator.index(frame)  # type: ignore[arg-type]
    except TypeError:
        number = 0
    if isinstance(frame, bool) or number < 1:
        raise ValueError(f"frame {frame!r} is not a frame number (an integer from 1)")
    frame = number
    try:
        score = float(score)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"frame {frame}: score {score!r} is not a number") from None
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise ValueError(f"frame {frame}: score {score!r} is not a probability in [0, 1]")
    if not isinstance(target, str):
        raise ValueError(f"frame {frame}: target {target!r} is not a string")
    if host_match is not None:
        try:
            host_match = float(host_match)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"frame {frame}: host_match {host_match!r} is not a number") from None
        if not math.isfinite(host_match) or not -1.0 <= host_match <= 1.0:
            raise ValueError(f"frame {frame}: host_match {host_match!r} is not a score in [-1, 1]")
    return frame, score, target, host_match


@dataclass(frozen=True)
class CaptureIdentity:
    """Which capture a sidecar belongs to: its frame count and its first frames' timestamps.

    A scores-file preference saved in Wireshark applies to every capture opened later; the plugin
    compares this with the capture it dissects and shows nothing from another capture's sidecar.
    """

    frames: int  # frames in the capture (read up to the cut, for a capture cut short)
    first: tuple[float, ...]  # frame.time_epoch of frames 1, 2, ... (up to IDENTITY_FRAMES)
    capture: str = ""  # the capture's file name, for the messages only

    def line(self) -> str:
        # A line break in a file name would end the line early: the name is only for people.
        name = " ".join(self.capture.splitlines())
        first = ",".join(repr(t) for t in self.first)
        return f"{IDENTITY_PREFIX}frames={self.frames} first={first} capture={name}"

    @classmethod
    def parse(cls, line: str) -> CaptureIdentity:
        m = _IDENTITY_RE.fullmatch(line.rstrip("\r\n"))
        if m is None:
            raise ValueError("the identity line is not #deepnetprint frames=N first=T1,... capture=NAME")
        first = tuple(float(t) for t in m.group(2).split(",") if t)
        return cls(int(m.group(1)), first, m.group(3))

    @classmethod
    def of(cls, capture: str | os.PathLike) -> CaptureIdentity:
        """The identity of a capture file as tshark reads it (one pass, no upper-layer dissection)."""
        from tool.capture import CaptureError, tshark_path

        done = subprocess.run(
            [tshark_path(), "-n", "-r", str(capture), "--disable-protocol", "ALL",
             "-T", "fields", "-e", "frame.time_epoch"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        times = done.stdout.split()
        if not times:
            raise CaptureError(f"{capture}: no frame could be read for the sidecar's identity")
        return cls(len(times), tuple(float(t) for t in times[:IDENTITY_FRAMES]), Path(capture).name)

    def mismatch(self, other: CaptureIdentity) -> str | None:
        """Why `other` (the capture at hand) is not the capture this identity names, or None."""
        if other.frames != self.frames:
            return f"it has {other.frames} frames, the scored capture had {self.frames}"
        for n, (mine, theirs) in enumerate(zip(self.first, other.first), 1):
            if abs(mine - theirs) > TIME_TOLERANCE:
                return f"its frame {n} is at {theirs:.6f}, the scored capture's at {mine:.6f}"
        return None


def write_sidecar(
    path: str | os.PathLike, rows: Iterable[tuple], identity: CaptureIdentity | None = None
) -> None:
    """Write the scores sidecar atomically (a temp file in the same folder, then os.replace).

    Rows are (frame, score, target[, host_match]); a bad row raises ValueError and leaves no file.
    With `identity` (`CaptureIdentity.of(capture)`), the plugin shows the scores only on that capture.

    >>> write_sidecar("cap.scores.csv", [(1, 0.9312345, "cam", 0.98), (7, 0.12, "cam", 0.98)])
    """
    with atomic_output(path, "w", encoding="utf-8", newline="") as out:
        write_sidecar_to(out, rows, identity)


def write_sidecar_to(out: IO[str], rows: Iterable[tuple], identity: CaptureIdentity | None = None) -> None:
    """The sidecar's content, into a text file opened with newline=""; ValueError on a bad row."""
    seen: set[int] = set()
    if identity is not None:
        out.write(identity.line() + "\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SIDECAR_HEADER)
    for row in rows:
        frame, score, target, host_match = _check_row(*row)
        if frame in seen:
            raise ValueError(f"frame {frame} is listed twice")
        seen.add(frame)
        # repr keeps every digit of the float, so the plugin shows exactly what dnp-scan computed.
        writer.writerow((frame, repr(score), target, "" if host_match is None else repr(host_match)))


def sidecar_identity(path: str | os.PathLike) -> CaptureIdentity | None:
    """The capture identity a sidecar records, or None for a sidecar without one (older dnp-scan)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = f.readline()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not first.startswith("#"):
        return None
    try:
        return CaptureIdentity.parse(first)
    except ValueError as e:
        raise ValueError(f"{path}: line 1: {e}") from None


def read_sidecar(
    path: str | os.PathLike, capture: CaptureIdentity | None = None
) -> dict[int, tuple[float, str, float | None]]:
    """Read a scores sidecar: {frame: (score, target, host_match or None)}.

    With `capture` (the identity of the capture at hand), a sidecar that records another capture is
    refused, as the plugin refuses it; a sidecar without an identity is read unchecked.
    Raises ValueError (one line, naming the file and line) on bad content; OSError if it cannot be read.
    """
    path = Path(path)
    result: dict[int, tuple[float, str, float | None]] = {}
    identity = sidecar_identity(path)
    if identity is not None and capture is not None:
        why = identity.mismatch(capture)
        if why:
            name = capture.capture or "this capture"
            raise ValueError(
                f"{path}: the scores of {identity.capture or 'another capture'}, not of {name}: {why}"
            )
    with open(path, encoding="utf-8-sig", newline="") as f:
        skipped = 0  # the identity line, which the CSV reader does not count
        if identity is not None:
            f.readline()
            skipped = 1
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file, expected the header {','.join(SIDECAR_HEADER)}")
            if tuple(header) not in (SIDECAR_HEADER, OLD_SIDECAR_HEADER):
                raise ValueError(f"{path}: the header is not {','.join(SIDECAR_HEADER)}")
            width = len(header)
            for row in reader:
                where = f"{path}: line {reader.line_num + skipped}"
                if not row:
                    continue
                if len(row) != width:
                    raise ValueError(f"{where}: {len(row)} fields instead of {width}")
                frame_text, score_text, target = row[:3]
                host_text = row[3] if width == 4 else ""
                if not _FRAME_RE.fullmatch(frame_text) or int(frame_text) < 1:
                    raise ValueError(f"{where}: frame {frame_text!r} is not a frame number")
                frame = int(frame_text)
                try:
                    score = float(score_text)
                except ValueError:
                    raise ValueError(f"{where}: score {score_text!r} is not a number") from None
                if not math.isfinite(score) or not 0.0 <= score <= 1.0:
                    raise ValueError(f"{where}: score {score_text!r} is not a probability in [0, 1]")
                host_match = None
                if host_text:
                    try:
                        host_match = float(host_text)
                    except ValueError:
                        raise ValueError(f"{where}: host_match {host_text!r} is not a number") from None
                    if not math.isfinite(host_match) or not -1.0 <= host_match <= 1.0:
                        raise ValueError(f"{where}: host_match {host_text!r} is not a score in [-1, 1]")
                if frame in result:
                    raise ValueError(f"{where}: frame {frame} is listed twice")
                result[frame] = (score, target, host_match)
        except csv.Error as e:
            raise ValueError(f"{path}: line {reader.line_num + skipped}: not CSV: {e}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
    return result


def comment_text(score: float, target: str, host_match: float | None = None) -> str:
    """The packet comment of a scored packet: `deepnetprint.match=0.9312 target=cam host_match=0.9871`."""
    # One line: Wireshark shows a comment's line breaks, and a filter on it should not need to know.
    target = " ".join(target.splitlines())
    host = "" if host_match is None else f" host_match={host_match:.4f}"
    return f"{COMMENT_PREFIX}{score:.4f} target={target}{host}"


def commented_stream_header(linktype: int, snaplen: int = 262144) -> bytes:
    """The start of a pcapng stream of one interface (little-endian, microsecond timestamps), for
    `commented_packet` blocks to follow: what a live capture writes to Wireshark's extcap FIFO."""
    shb = _block("<", 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    return shb + _block("<", 1, struct.pack("<HHI", linktype, 0, snaplen))


def commented_packet(time_us: int, data: bytes, orig_len: int, comment: str | None) -> bytes:
    """One packet of a `commented_stream_header` stream, its comment (comment_text) as an opt_comment."""
    options = [_option("<", _OPT_COMMENT, comment.encode("utf-8"))] if comment else []
    return _epb("<", 0, time_us, data, orig_len, options)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def _option(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (_pad4(len(value)) - len(value))


def _block(e: str, block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack(e + "II", block_type, length) + body + struct.pack(e + "I", length)


def _epb(e: str, iface: int, ts: int, data: bytes, orig_len: int, options: list[bytes]) -> bytes:
    body = struct.pack(e + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), orig_len)
    body += data + b"\0" * (_pad4(len(data)) - len(data))
    if options:
        body += b"".join(options) + struct.pack(e + "HH", _OPT_ENDOFOPT, 0)
    return _block(e, _EPB, body)


def _parse_options(e: str, raw: bytes) -> list[bytes]:
    """The options of a block, each as its raw bytes (code, length, value, padding), end marker dropped."""
    options = []
    pos = 0
    while pos + 4 <= len(raw):
        code, length = struct.unpack_from(e + "HH", raw, pos)
        if code == _OPT_ENDOFOPT:
            break
        end = pos + 4 + _pad4(length)
        if end > len(raw):
            raise AnnotateError("a pcapng block has an option that runs past its end")
        options.append(raw[pos:end])
        pos = end
    return options


class _CutShort(AnnotateError):
    """The capture ends inside a block; `frames` whole frames came before it."""

    def __init__(self, message: str, frames: int):
        super().__init__(message)
        self.frames = frames


def _read_exact(f: BinaryIO, n: int, what: str, frames: int = 0) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _CutShort(f"the capture is cut short inside {what}", frames)
    return data


def _pcap_blocks(f: BinaryIO, magic: bytes, comments: dict[int, str]) -> Generator[bytes, None, int]:
    """pcap in, pcapng blocks out: one section, one interface, an EPB per packet; returns the frame count."""
    e, resolution = _PCAP_MAGICS[magic]
    header = _read_exact(f, 20, "the pcap header")
    _major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack(e + "HHiIII", header)
    linktype = network & 0xFFFF  # the upper bits carry FCS flags, not the link type
    shb_options = [_option("<", 4, b"deepnetprint")]  # shb_userappl
    shb = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + b"".join(shb_options) + b"\0\0\0\0"
    yield _block("<", _SHB, shb)
    idb_options = [_option("<", 9, bytes([resolution]))] if resolution != 6 else []  # if_tsresol
    idb = struct.pack("<HHI", linktype, 0, snaplen)
    if idb_options:
        idb += b"".join(idb_options) + b"\0\0\0\0"
    yield _block("<", _IDB, idb)
    frame = 0
    scale = 10**resolution
    while True:
        record = f.read(16)
        if not record:
            break
        if len(record) != 16:
            raise _CutShort(f"the capture is cut short after frame {frame}", frame)
        sec, frac, incl_len, orig_len = struct.unpack(e + "IIII", record)
        data = _read_exact(f, incl_len, f"frame {frame + 1}", frame)
        frame += 1
        comment = comments.get(frame)
        options = [_option("<", _OPT_COMMENT, comment.encode("utf-8"))] if comment is not None else []
        yield _epb("<", 0, sec * scale + frac, data, orig_len, options)
    return frame


def _pcapng_blocks(f: BinaryIO, comments: dict[int, str]) -> Generator[bytes, None, int]:
    """pcapng in, pcapng out: every block copied, scored frames' packet blocks given a comment.

    Returns the frame count.
    """
    e = "<"
    frame = 0
    while True:
        head = f.read(8)
        if not head:
            break
        if len(head) != 8:
            raise _CutShort(f"the capture is cut short after frame {frame}", frame)
        block_type = struct.unpack("<I", head[:4])[0]  # the SHB's type reads the same in both byte orders
        if block_type == _SHB:
            bom = _read_exact(f, 4, "a section header", frame)
            e = "<" if struct.unpack("<I", bom)[0] == _BYTE_ORDER_MAGIC else ">"
            if struct.unpack(e + "I", bom)[0] != _BYTE_ORDER_MAGIC:
                raise AnnotateError("not a pcapng file: a section header without its byte-order magic")
            length = struct.unpack(e + "I", head[4:])[0]
            if length < 28 or length % 4:
                raise AnnotateError("a pcapng section header has a bad length")
            rest = _read_exact(f, length - 12, "a section header", frame)
            yield head + bom + rest
            continue
        block_type, length = struct.unpack(e + "II", head)
        if length < 12 or length % 4:
            raise AnnotateError(f"a pcapng block after frame {frame} has a bad length ({length})")
        body = _read_exact(f, length - 12, f"the block after frame {frame}", frame)
        trailer = _read_exact(f, 4, f"the block after frame {frame}", frame)
        if block_type not in (_EPB, _SPB, _PB, _SJEB):
            yield head + body + trailer
            continue
        frame += 1
        comment = comments.get(frame)
        if comment is None:
            yield head + body + trailer
            continue
        option = _option(e, _OPT_COMMENT, comment.encode("utf-8"))
        if block_type == _EPB:
            iface, ts_hi, ts_lo, cap_len, orig_len = struct.unpack_from(e + "IIIII", body)
            data = body[20 : 20 + cap_len]
            options = _parse_options(e, body[20 + _pad4(cap_len) :])
            yield _epb(e, iface, (ts_hi << 32) | ts_lo, data, orig_len, [*options, option])
        elif block_type == _PB:
            iface, _drops, ts_hi, ts_lo, cap_len, orig_len = struct.unpack_from(e + "HHIIII", body)
            data = body[20 : 20 + cap_len]
            # A PB's pack_flags option has the same code and layout as an EPB's epb_flags.
            options = _parse_options(e, body[20 + _pad4(cap_len) :])
            yield _epb(e, iface, (ts_hi << 32) | ts_lo, data, orig_len, [*options, option])
        elif block_type == _SPB:
            # A simple packet block has no timestamp and no options: it becomes an EPB at time 0.
            orig_len = struct.unpack_from(e + "I", body)[0]
            data = body[4 : 4 + min(orig_len, len(body) - 4)]
            yield _epb(e, 0, 0, data, orig_len, [option])
        else:
            raise AnnotateError(f"frame {frame} is a systemd journal entry, not a packet")
    return frame


def _sniff(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def write_commented_pcapng(
    capture: str | os.PathLike,
    out: str | os.PathLike,
    rows: Iterable[tuple],
    allow_cut: bool = False,
) -> None:
    """Write a pcapng copy of `capture` in which every scored packet carries a packet comment.

    The comment reads `deepnetprint.match=0.9312 target=cam` (filter: `frame.comment contains
    "deepnetprint.match"`). pcap and pcapng are read directly, any other format tshark reads is first
    converted with `editcap -F pcapng`. The copy appears at `out` only once complete. Raises
    AnnotateError (one line) on an unreadable capture, a bad row, or a row for a frame the capture lacks.
    With `allow_cut`, a capture cut short in its last packet is copied up to the last whole packet.

    >>> write_commented_pcapng("cap.pcap", "cap.scored.pcapng", [(1, 0.93, "cam")])
    """
    try:
        with atomic_output(out, "wb") as handle:
            write_commented_pcapng_to(capture, handle, rows, out_name=out, allow_cut=allow_cut)
    except OutputError as e:
        raise AnnotateError(str(e)) from None


def write_commented_pcapng_to(
    capture: str | os.PathLike,
    handle: BinaryIO,
    rows: Iterable[tuple[int, float, str]],
    out_name: str | os.PathLike = "the output",
    allow_cut: bool = False,
) -> None:
    """The commented copy's content, into an open binary file; errors writing it name `out_name`."""
    capture = Path(capture)
    comments: dict[int, str] = {}
    try:
        for row in rows:
            frame, score, target, host_match = _check_row(*row)
            if frame in comments:
                raise ValueError(f"frame {frame} is listed twice")
            comments[frame] = comment_text(score, target, host_match)
    except (ValueError, TypeError) as e:
        raise AnnotateError(f"bad score row: {e}") from None
    try:
        magic = _sniff(capture)
    except OSError as e:
        raise AnnotateError(f"{capture}: {e.strerror or e}") from None
    if len(magic) < 4:
        raise AnnotateError(f"{capture}: empty or too short to be a capture")
    writer = _Writer(handle, out_name)
    if magic in _PCAP_MAGICS or struct.unpack("<I", magic)[0] == _SHB:
        _write_from(capture, writer, magic, comments, allow_cut)
        return
    # Other formats (gzip-compressed, snoop, ERF, ...): let editcap turn them into pcapng first; it
    # keeps the frames in order, so the frame numbers still hold.
    editcap = shutil.which("editcap")
    if not editcap:
        raise AnnotateError(f"{capture}: not pcap or pcapng, and editcap (to convert it) is not installed")
    with tempfile.TemporaryDirectory(prefix="dnp-") as tmp:
        converted = Path(tmp) / "converted.pcapng"
        done = subprocess.run(
            [editcap, "-F", "pcapng", str(capture), str(converted)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0 and not (allow_cut and converted.exists()):
            lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
            raise AnnotateError(f"{capture}: {lines[0] if lines else 'editcap could not read it'}")
        _write_from(converted, writer, _sniff(converted), comments, allow_cut)


class _Writer:
    """The output file, whose errors name the output: a full disk is not the capture's fault."""

    def __init__(self, handle: BinaryIO, name: str | os.PathLike):
        self.handle, self.name = handle, name

    def write(self, data: bytes) -> None:
        try:
            self.handle.write(data)
        except OSError as e:
            raise AnnotateError(f"cannot write {self.name}: {e.strerror or e}") from None


def _write_from(capture: Path, w: _Writer, magic: bytes, comments: dict[int, str], allow_cut: bool) -> None:
    try:
        with open(capture, "rb") as f:
            if magic in _PCAP_MAGICS:
                f.read(4)
                blocks = _pcap_blocks(f, magic, comments)
            else:
                blocks = _pcapng_blocks(f, comments)
            while True:
                try:
                    block = next(blocks)
                except StopIteration as done:
                    frames = done.value
                    break
                except _CutShort as e:
                    # A capture copied while still being written ends inside its last packet: the
                    # scan scored the whole frames before it, and the copy holds exactly those.
                    if not (allow_cut and e.frames > 0):
                        raise
                    frames = e.frames
                    break
                w.write(block)
            beyond = [frame for frame in comments if frame > frames]
            if beyond:
                raise AnnotateError(
                    f"{len(beyond)} scored frame(s) beyond the {frames} frames of {capture}, the first "
                    f"{min(beyond)}: are the scores from another capture?"
                )
    except OSError as e:
        raise AnnotateError(f"{capture}: {e.strerror or e}") from None
    except struct.error:
        raise AnnotateError(f"{capture}: a block is too short for its type: not a valid capture") from None
