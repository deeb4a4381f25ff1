"""The files a scan writes, from one row schema: per-packet CSV, Wireshark sidecar, commented pcapng, JSON.

One scored packet is one `PacketRow` (declared once in tool/records.py, a comment per field); every
per-packet output is written from it, and every score is written by `score_text`. A scan's outputs follow a
small life cycle, the same for dnp-scan and for a Python caller:

    >>> outputs = ScanOutputs("suspect.pcap", csv="packets.csv", annotate="suspect.scores.csv")
    >>> try:
    ...     result = scan("suspect.pcap", fingerprints, model, on_packet=outputs.on_packet)
    ...     outputs.commit(result)        # every file written, then all renamed into place together
    ... finally:
    ...     outputs.discard()             # whatever was not committed goes; nothing half-written stays

Each output is a temporary file beside its destination from the start (so an unwritable folder fails
before the scan, not after it); the scored packets wait in a spool file until the hosts' scores are
known, since every row carries its host's score (`host_match`), so memory stays flat however long
the capture. Paths that must not be written (a device, a folder, the capture itself) are refused at once
(`tool.files.check_outputs`).
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING

from tool.files import AtomicFile, check_outputs, commit_all
from tool.hosts import host_of
from tool.pcapng import write_commented_pcapng_to
from tool.records import CSV_HEADER, CSV_HOST_COLUMNS, PacketRow, ScanResult
from tool.sidecar import CaptureIdentity, write_sidecar_to

if TYPE_CHECKING:
    import numpy as np

    from tool.capture import Packet


class PacketCsv:
    """One row per packet: frame, time, addresses, protocol, Info, one p(Target) column per
    fingerprint (named by it), then host_match: the sending host's score for its best fingerprint, and
    router: 1 where the sending host is a router (PacketRow.router)."""

    def __init__(self, handle: IO[str], names: Sequence[str]):
        self.writer = csv.writer(handle, lineterminator="\n")
        self.writer.writerow([*CSV_HEADER, *names, *CSV_HOST_COLUMNS])

    def write(self, row: PacketRow) -> None:
        self.writer.writerow(row.csv())


class _Spool:
    """Scored packets waiting for their hosts' scores, in a temporary file: every digit of each
    probability kept (repr), so the outputs write exactly what the scan computed."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile("w+", encoding="utf-8", newline="")
        self.writer = csv.writer(self.file, lineterminator="\n")

    def write(self, packet: Packet, probs: np.ndarray) -> None:
        self.writer.writerow(
            (packet.frame, repr(packet.time), packet.eth_src, packet.eth_dst, host_of(packet)[0],
             packet.protocol, packet.length, packet.info, *map(repr, probs.tolist()))
        )  # fmt: skip

    def rows(self, names: list[str], host_match: dict[str, float], routers: set[str]) -> Iterator[PacketRow]:
        """The spooled packets, each with its host's score for the host's best fingerprint and whether
        the host is a router."""
        self.file.seek(0)
        for frame, time, src, dst, host, protocol, length, info, *probs in csv.reader(self.file):
            yield PacketRow(
                int(frame), float(time), src, dst, host, protocol, int(length), info,
                [float(p) for p in probs], names, host_match.get(host), host in routers,
            )  # fmt: skip

    def close(self) -> None:
        self.file.close()


class ScanOutputs:
    """The files one scan writes (any of --csv, --annotate, --pcapng, --json); see the module docstring.

    `capture` is the capture being scanned (the sidecar names it, the pcapng copies it); a path left
    None is not written. The JSON report here is a file; dnp-scan prints `--json -` itself.
    """

    def __init__(
        self,
        capture: str | os.PathLike,
        *,
        csv: str | os.PathLike | None = None,
        annotate: str | os.PathLike | None = None,
        pcapng: str | os.PathLike | None = None,
        json: str | os.PathLike | None = None,
    ):
        self.capture = capture
        self.paths = {"csv": csv, "annotate": annotate, "pcapng": pcapng, "json": json}
        self.files: dict[str, AtomicFile] = {}
        self.spool: _Spool | None = None
        # What dnp-scan refuses before any work (a device, the capture itself, a missing folder), a
        # Python caller gets refused too.
        check_outputs(
            {k: None if p is None else str(p) for k, p in self.paths.items()}, {"the capture": [str(capture)]}
        )
        try:
            for key, mode, kw in (
                ("csv", "w", {"newline": ""}),
                ("annotate", "w", {"newline": ""}),
                ("pcapng", "wb", {}),
                ("json", "w", {}),
            ):
                if self.paths[key]:
                    self.files[key] = AtomicFile(self.paths[key], mode, **kw)  # type: ignore[arg-type]
            if csv or annotate or pcapng:
                self.spool = _Spool()
        except BaseException:
            self.discard()
            raise

    def on_packet(self, packet: Packet, probs: np.ndarray) -> None:
        """Hand to `tool.scan.scan(on_packet=...)`: each packet, as it is scored."""
        if self.spool is not None:
            self.spool.write(packet, probs)

    def commit(self, result: ScanResult, cut: bool = False) -> None:
        """Write every output from the finished scan and rename them all into place together.

        `cut`: the capture was cut short inside a packet (tool.capture.CaptureTruncated); the pcapng
        copy then holds the whole frames before the cut, as the scan scored them.
        """
        names = [f["name"] for f in result.fingerprints]
        host_match = {h["host"]: h["score"] for h in result.hosts}
        routers = {h["host"] for h in result.hosts if h.get("router")}
        if self.spool is not None:
            if "csv" in self.files:
                packet_csv = PacketCsv(self.files["csv"].handle, names)
                for row in self.spool.rows(names, host_match, routers):
                    packet_csv.write(row)
            if "annotate" in self.files:
                rows = (r.sidecar() for r in self.spool.rows(names, host_match, routers))
                # The sidecar names its capture, so the plugin shows no scores on another one (a
                # scores file saved as a Wireshark preference applies to every capture opened later).
                identity = CaptureIdentity.of(self.capture)
                write_sidecar_to(self.files["annotate"].handle, rows, identity)
            if "pcapng" in self.files:
                rows = (r.sidecar() for r in self.spool.rows(names, host_match, routers))
                out = self.paths["pcapng"]
                handle = self.files["pcapng"].handle
                write_commented_pcapng_to(self.capture, handle, rows, out_name=out, allow_cut=cut)  # type: ignore[arg-type]
        if "json" in self.files:
            self.files["json"].handle.write(result.to_json())
        commit_all(self.files.values())

    def discard(self) -> None:
        """Remove every output not committed, and the spool; safe to call more than once."""
        for f in self.files.values():
            f.discard()
        if self.spool is not None:
            self.spool.close()

    def __enter__(self) -> ScanOutputs:
        return self

    def __exit__(self, *_: object) -> None:
        self.discard()
