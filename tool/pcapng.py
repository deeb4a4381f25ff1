"""The commented copy (`dnp-scan --pcapng OUT`): a pcapng copy of the capture whose scored packets carry
their match as a packet comment, for analysts who cannot install the Wireshark plugin.

Each scored packet carries the comment `deepnetprint.match=0.9312345028877258 target=cam host_match=0.987123`,
readable as `frame.comment`, with ` router=1` at its end where the sending host is a router (tool.routers);
the rows are the sidecar's (tool/sidecar.py).
It is written here in Python, block by block, because `editcap -a` takes one argument per comment and
fails with "argument list too long" near 60,000 comments.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import BinaryIO

from tool.files import OutputError, atomic_output
from tool.records import score_text
from tool.sidecar import check_row

COMMENT_PREFIX = "deepnetprint.match="

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


def comment_text(score: float, target: str, host_match: float | None = None, router: bool = False) -> str:
    """The packet comment of a scored packet, every digit as in the sidecar:
    `deepnetprint.match=0.9312345028877258 target=cam host_match=0.987123`, then ` router=1` where the
    sending host is a router."""
    # One line: Wireshark shows a comment's line breaks, and a filter on it should not need to know.
    target = " ".join(target.splitlines())
    # Every digit, as the sidecar: the plugin shows one value for a frame, from either.
    host = "" if host_match is None else f" host_match={score_text(host_match, None)}"
    return f"{COMMENT_PREFIX}{score_text(score, None)} target={target}{host}{' router=1' if router else ''}"


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

    The comment reads `deepnetprint.match=0.9312345028877258 target=cam` (filter: `frame.comment contains
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
            frame, score, target, host_match, router = check_row(*row)
            if frame in comments:
                raise ValueError(f"frame {frame} is listed twice")
            comments[frame] = comment_text(score, target, host_match, router)
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
