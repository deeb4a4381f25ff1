"""The sidecar: the scores file dnp-scan writes (`--annotate PATH`) and the Wireshark plugin reads.

It is the contract between dnp-scan and lua/deepnetprint.lua: a CSV with the header
`frame,score,target,host_match,router` and one row per scored frame, where `frame` is the 1-based
number Wireshark gives the frame in that capture file, `score` the best fingerprint's probability in
[0, 1], `target` that fingerprint's name, `host_match` the host score (in [-1, 1]) of the frame's
sending host for that host's best fingerprint, so that a filter on it shows every packet of a matching
host, and `router` 1 where that host is a router (tool.routers: not judged as a device), else empty.
A sidecar of an older dnp-scan has no `router` column, or neither it nor `host_match`; it still reads.
Its first line names the capture it belongs to (`CaptureIdentity`), so the plugin shows no scores on
another capture.
"""

from __future__ import annotations

import csv
import math
import operator
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tool.files import atomic_output
from tool.records import score_text

SIDECAR_HEADER = ("frame", "score", "target", "host_match", "router")
OLD_SIDECAR_HEADERS = (SIDECAR_HEADER[:3], SIDECAR_HEADER[:4])  # older dnp-scan's: they still read
# The first line of a sidecar that names its capture: `#deepnetprint frames=401 first=T1,T2,T3
# capture=NAME`. Older sidecars start with the header; they still read, unchecked.
IDENTITY_PREFIX = "#deepnetprint "
IDENTITY_FRAMES = 3  # how many first frames' timestamps the identity records
# Timestamps travel as decimal seconds and the plugin reads them as doubles (about 0.24 µs apart at
# 2016's epoch seconds): a smaller difference is the same instant.
TIME_TOLERANCE = 2e-6
_IDENTITY_RE = re.compile(r"#deepnetprint frames=([0-9]+) first=([0-9.,]*) capture=(.*)")

_FRAME_RE = re.compile(r"[0-9]+")


def check_row(
    frame: object, score: object, target: object, host_match: object = None, router: object = False
) -> tuple[int, float, str, float | None, bool]:
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
    if isinstance(router, str) or router not in (False, True):  # a bool, numpy's too
        raise ValueError(f"frame {frame}: router {router!r} is not True or False")
    return frame, score, target, host_match, bool(router)


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

    Rows are (frame, score, target[, host_match[, router]]); a bad row raises ValueError and leaves no file.
    With `identity` (`CaptureIdentity.of(capture)`), the plugin shows the scores only on that capture.

    >>> write_sidecar("cap.scores.csv", [(1, 0.9312345, "cam", 0.98), (7, 0.12, "gw", 0.5, True)])
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
        frame, score, target, host_match, router = check_row(*row)
        if frame in seen:
            raise ValueError(f"frame {frame} is listed twice")
        seen.add(frame)
        # Every digit of the float, so the plugin shows exactly what dnp-scan computed.
        host = "" if host_match is None else score_text(host_match, None)
        writer.writerow((frame, score_text(score, None), target, host, 1 if router else ""))


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
) -> dict[int, tuple[float, str, float | None, bool]]:
    """Read a scores sidecar: {frame: (score, target, host_match or None, router)}.

    With `capture` (the identity of the capture at hand), a sidecar that records another capture is
    refused, as the plugin refuses it; a sidecar without an identity is read unchecked.
    Raises ValueError (one line, naming the file and line) on bad content; OSError if it cannot be read.
    """
    path = Path(path)
    result: dict[int, tuple[float, str, float | None, bool]] = {}
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
            if tuple(header) not in (SIDECAR_HEADER, *OLD_SIDECAR_HEADERS):
                raise ValueError(f"{path}: the header is not {','.join(SIDECAR_HEADER)}")
            width = len(header)
            for row in reader:
                where = f"{path}: line {reader.line_num + skipped}"
                if not row:
                    continue
                if len(row) != width:
                    raise ValueError(f"{where}: {len(row)} fields instead of {width}")
                frame_text, score_text, target = row[:3]
                host_text = row[3] if width >= 4 else ""
                router_text = row[4] if width == 5 else ""
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
                if router_text not in ("", "1"):
                    raise ValueError(f"{where}: router {router_text!r} is not 1 or empty")
                if frame in result:
                    raise ValueError(f"{where}: frame {frame} is listed twice")
                result[frame] = (score, target, host_match, router_text == "1")
        except csv.Error as e:
            raise ValueError(f"{path}: line {reader.line_num + skipped}: not CSV: {e}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
    return result
