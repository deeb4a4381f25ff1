"""Fingerprints: a device's behaviour learnt from a few of its packets, stored as validated JSON.

A fingerprint is something an investigator receives from someone else, so it is plain JSON (never
pickle) and everything in it is checked on load: its schema and version, its digest (any edited
value is refused), the model it was made with (a fingerprint of another model means nothing to
this one), and its prototype, which must be what this model computes from the support packets
the file lists.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tool import __version__
from tool.capture import Packet
from tool.constants import MIN_PACKETS, PACKETS
from tool.text import text_of

if TYPE_CHECKING:
    import numpy as np

    from tool.model import Model

FORMAT = "deepnetprint-fingerprint"
VERSION = 1
MAX_FILE_BYTES = 4 << 20  # a fingerprint is a few KB; refuse to parse anything huge
PROTOTYPE_TOLERANCE = 1e-4


class FingerprintError(Exception):
    """A fingerprint file is unreadable, damaged, or made for another model: one line for the user."""


@dataclass(frozen=True)
class SupportPacket:
    """One packet the fingerprint was learnt from, as the model read it."""

    frame: int
    text: str
    length: int


@dataclass
class Fingerprint:
    """A device's fingerprint: the Target prototype and what it was made from."""

    name: str
    prototype: list[float]
    support: list[SupportPacket]
    encoder_sha256: str
    head_sha256: str
    source: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    tool_version: str = __version__
    # The support packets' embeddings under the model the fingerprint was checked against: the set
    # vector is made from them, and no scan should have to encode the support packets twice.
    embeddings: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def packets(self) -> np.ndarray:
        """The support packets' embeddings [S, E], each of length 1: the set the set score reads."""
        from tool.model import unit

        if self.embeddings is None:
            raise FingerprintError(f"fingerprint {self.name!r} has not been checked against a model")
        return unit(self.embeddings)

    @property
    def vector(self) -> np.ndarray:
        """The fingerprint's set vector [E] (tool.model.set_vector of its support packets)."""
        from tool.model import set_vector

        if self.embeddings is None:
            raise FingerprintError(f"fingerprint {self.name!r} has not been checked against a model")
        return set_vector(self.embeddings)

    @classmethod
    def from_packets(
        cls,
        model: Model,
        packets: Sequence[Packet],
        name: str,
        source: dict[str, Any] | None = None,
    ) -> Fingerprint:
        """Learn a fingerprint from a device's packets, in capture order (the first 20 by default)."""
        if len(packets) < MIN_PACKETS:
            raise FingerprintError(f"a fingerprint needs at least {MIN_PACKETS} packets, got {len(packets)}")
        support = [SupportPacket(p.frame, text_of(p, model.fields), p.length) for p in packets]
        embeddings = _embed(model, support)
        prototype = model.prototype(embeddings)
        return cls(
            name=name,
            prototype=[float(x) for x in prototype],
            support=support,
            encoder_sha256=model.encoder_sha256,
            head_sha256=model.head_sha256,
            source=dict(source or {}),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            embeddings=embeddings,
        )

    def payload(self) -> dict[str, Any]:
        """The JSON object, without its digest."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "created": self.created,
            "tool_version": self.tool_version,
            "model": {"encoder_sha256": self.encoder_sha256, "head_sha256": self.head_sha256},
            "source": self.source,
            "support": [{"frame": s.frame, "text": s.text, "length": s.length} for s in self.support],
            "prototype": self.prototype,
        }

    def to_json(self) -> str:
        data = self.payload()
        data["digest"] = _digest(data)
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        """Write the fingerprint atomically: a reader never sees half a file."""
        from tool.files import write_text_atomic

        write_text_atomic(path, self.to_json())

    def check_model(self, model: Model) -> None:
        """Refuse a fingerprint made with another model, or whose prototype the model disowns."""
        if self.encoder_sha256 != model.encoder_sha256 or self.head_sha256 != model.head_sha256:
            raise FingerprintError(
                f"fingerprint {self.name!r} was made with encoder {self.encoder_sha256[:12]} / head "
                f"{self.head_sha256[:12]}, the installed model is encoder {model.encoder_sha256[:12]} / head "
                f"{model.head_sha256[:12]}: enroll it again with this model"
            )
        if len(self.prototype) != model.embedding_dim:
            raise FingerprintError(
                f"fingerprint {self.name!r} has a prototype of {len(self.prototype)} values, "
                f"the model needs {model.embedding_dim}"
            )
        import numpy as np

        embeddings = _embed(model, self.support)
        expected = model.prototype(embeddings)
        if not np.allclose(expected, np.asarray(self.prototype), atol=PROTOTYPE_TOLERANCE, rtol=0):
            raise FingerprintError(
                f"fingerprint {self.name!r}: its prototype is not what its support packets give; "
                "the file was altered"
            )
        self.embeddings = embeddings


def _embed(model: Model, support: Sequence[SupportPacket]) -> np.ndarray:
    return model.embed([s.text for s in support], [s.length for s in support])


def _digest(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise FingerprintError(what)


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def parse(text: str, origin: str = "fingerprint") -> Fingerprint:
    """Validate a fingerprint's JSON text and build it; any defect is a one-line FingerprintError."""
    try:
        data = json.loads(text, parse_constant=lambda c: math.nan)
    except json.JSONDecodeError as e:
        raise FingerprintError(f"{origin}: not a fingerprint (invalid JSON: {e.msg})") from None
    except RecursionError:
        raise FingerprintError(f"{origin}: not a fingerprint (JSON nested too deeply)") from None
    except ValueError:  # what json raises besides JSONDecodeError: an integer of thousands of digits
        raise FingerprintError(f"{origin}: not a fingerprint (a number too long to read)") from None
    _require(isinstance(data, dict), f"{origin}: not a fingerprint (a JSON object is expected)")
    _require(data.get("format") == FORMAT, f"{origin}: not a fingerprint (format is not {FORMAT!r})")
    _require(
        data.get("version") == VERSION,
        f"{origin}: fingerprint version {data.get('version')!r} is not supported (this tool reads {VERSION})",
    )
    digest = data.pop("digest", None)
    _require(isinstance(digest, str), f"{origin}: damaged fingerprint (no digest)")
    try:
        expected = _digest(data)
    except UnicodeEncodeError:  # a JSON escape of a lone surrogate: no text a fingerprint holds
        raise FingerprintError(f"{origin}: damaged fingerprint (text that is not valid Unicode)") from None
    _require(digest == expected, f"{origin}: damaged fingerprint (its digest does not match its content)")

    name, model, support, prototype = (data.get(k) for k in ("name", "model", "support", "prototype"))
    _require(isinstance(name, str) and 0 < len(name) <= 200, f"{origin}: damaged fingerprint (bad name)")
    _require(
        isinstance(model, dict)
        and _is_hex64(model.get("encoder_sha256"))
        and _is_hex64(model.get("head_sha256")),
        f"{origin}: damaged fingerprint (bad model hashes)",
    )
    _require(
        isinstance(support, list) and len(support) >= MIN_PACKETS,
        f"{origin}: damaged fingerprint (needs at least {MIN_PACKETS} support packets)",
    )
    packets = []
    for s in support:
        ok = (
            isinstance(s, dict)
            and isinstance(s.get("text"), str)
            and type(s.get("frame")) is int
            and type(s.get("length")) is int
            and s["length"] >= 0
        )
        _require(ok, f"{origin}: damaged fingerprint (bad support packet)")
        packets.append(SupportPacket(s["frame"], s["text"], s["length"]))
    _require(
        isinstance(prototype, list)
        and len(prototype) > 0
        and all(type(x) in (int, float) and math.isfinite(x) for x in prototype),
        f"{origin}: damaged fingerprint (the prototype must be a list of finite numbers)",
    )
    source = data.get("source", {})
    _require(isinstance(source, dict), f"{origin}: damaged fingerprint (bad source)")
    _require(
        isinstance(data.get("created", ""), str) and isinstance(data.get("tool_version", ""), str),
        f"{origin}: damaged fingerprint (bad created or tool_version)",
    )
    return Fingerprint(
        name=name,
        prototype=[float(x) for x in prototype],
        support=packets,
        encoder_sha256=model["encoder_sha256"],
        head_sha256=model["head_sha256"],
        source=source,
        created=str(data.get("created", "")),
        tool_version=str(data.get("tool_version", "")),
    )


def load(path: str | os.PathLike, model: Model | None = None) -> Fingerprint:
    """Read and validate a fingerprint file; with a model, also check it belongs to that model."""
    path = Path(path)
    raw = read_bounded(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FingerprintError(f"{path}: not a fingerprint (not UTF-8 text)") from None
    fingerprint = parse(text, str(path))
    if model is not None:
        try:
            fingerprint.check_model(model)
        except FingerprintError as e:
            raise FingerprintError(f"{path}: {e}") from None
    return fingerprint


def load_all(paths: Sequence[str | os.PathLike], model: Model) -> list[Fingerprint]:
    """Load the fingerprints of one scan (or hunt, or watch), checked against `model`. Their names
    must differ: every output names a fingerprint's column, verdict and Wireshark target by it."""
    fingerprints = [load(p, model) for p in paths]
    names = [f.name for f in fingerprints]
    if len(set(names)) != len(names):
        raise FingerprintError(
            f"two fingerprints share a name ({', '.join(names)}); rename one with dnp-enroll"
        )
    return fingerprints


def read_bounded(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; FingerprintError otherwise.

    /dev/zero would fill memory and a FIFO would block in open(): both are refused from their type,
    the file is opened without blocking, and the read stops one byte past the limit.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise FingerprintError(f"{path}: not a fingerprint (not a regular file)")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise FingerprintError(f"{path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            # Swapped for something else between the stat and the open: look again at what is open.
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise FingerprintError(f"{path}: not a fingerprint (not a regular file)")
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise FingerprintError(f"{path}: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise FingerprintError(f"{path}: not a fingerprint (larger than {MAX_FILE_BYTES >> 20} MB)")
    return raw


def enroll(
    capture: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    mac: str | None = None,
    display_filter: str | None = None,
    count: int = PACKETS,
    name: str | None = None,
    model: Model | None = None,
) -> Fingerprint:
    """Learn a device's fingerprint from its first `count` packets in one capture, or in several read
    one after the other (an investigator often holds more than one capture of the device).

    The device is picked by its MAC (the packets it sent) or by any Wireshark display filter.

    >>> fp = enroll("cam.pcap", mac="b0:c5:54:25:5b:0e", name="cam")   # doctest: +SKIP
    >>> fp = enroll(["cam-mon.pcap", "cam-tue.pcap"], mac="b0:c5:54:25:5b:0e", count=100)  # doctest: +SKIP
    >>> fp.save("cam.fp")                                              # doctest: +SKIP
    """
    from tool.capture import read_packets
    from tool.files import sha256_file
    from tool.model import Model

    captures = [capture] if isinstance(capture, (str, os.PathLike)) else list(capture)
    if not captures:
        raise FingerprintError("enroll needs at least one capture")
    if (mac is None) == (display_filter is None):
        raise FingerprintError("select the device with exactly one of a MAC or a display filter")
    if count < MIN_PACKETS:
        raise FingerprintError(f"--count must be at least {MIN_PACKETS}")
    if display_filter is not None and not display_filter.strip():
        raise FingerprintError("the display filter is empty: it would select every host's packets")
    name = check_name(name) if name is not None else default_name(captures[0])
    if mac is not None:
        mac = normalise_mac(mac)
        # The sender's MAC wherever the link layer carries it: Ethernet, 802.11, Linux cooked capture.
        display_filter = f"eth.src == {mac} || wlan.sa == {mac} || sll.src.eth == {mac}"
    model = model or Model.load()
    packets: list[Packet] = []
    used: list[dict[str, Any]] = []
    for path in captures:
        if len(packets) == count:
            break
        taken: list[Packet] = []
        for packet in read_packets(path, display_filter):
            taken.append(packet)
            if len(packets) + len(taken) == count:
                break
        if taken:
            used.append(
                {
                    "capture": Path(path).name,
                    "sha256": sha256_file(path),
                    "frames": [taken[0].frame, taken[-1].frame],
                    "packets": len(taken),
                }
            )
        packets.extend(taken)
    if len(packets) < count:
        who = f"MAC {mac}" if mac else f"filter {display_filter!r}"
        where = captures[0] if len(captures) == 1 else f"{len(captures)} captures"
        raise FingerprintError(
            f"{where}: only {len(packets)} packets match {who}, {count} needed"
            + (f" (lower --count, at least {MIN_PACKETS})" if len(packets) >= MIN_PACKETS else "")
        )
    source = {
        # The first capture's name, digest and frames, as one-capture fingerprints always had them;
        # `captures` lists every capture the support packets came from.
        "capture": used[0]["capture"],
        "sha256": used[0]["sha256"],
        "selector": {"mac": mac} if mac else {"filter": display_filter},
        "frames": used[0]["frames"],
        "captures": used,
    }
    fingerprint = Fingerprint.from_packets(model, packets, name, source)
    size = len(fingerprint.to_json().encode("utf-8"))
    if size > MAX_FILE_BYTES:
        # dnp-scan refuses to read a file this large: better to say so now than to write it.
        raise FingerprintError(
            f"{count} packets make a fingerprint of {size >> 10} KB, over the {MAX_FILE_BYTES >> 10} KB "
            "dnp-scan reads: lower --count"
        )
    return fingerprint


def normalise_mac(mac: str) -> str:
    """aa:bb:cc:dd:ee:ff in lower case, from the usual spellings; FingerprintError otherwise."""
    digits = mac.strip().lower().replace("-", ":").replace(".", "")
    if ":" not in digits and len(digits) == 12:
        digits = ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    parts = digits.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise FingerprintError(f"{mac!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return digits


# What --name accepts: a name that shows the same in a terminal, a CSV cell, a Wireshark column and a
# file name, and that dnp-scan will read back (it refuses names over 200 characters).
NAME_MAX = 64
_NAME_RE = re.compile(r"[A-Za-z0-9._+@ -]+")


def check_name(name: str) -> str:
    """The name if it is in the safe set (letters, digits, `._-+@` and spaces, 1 to 64), else an error."""
    if not (0 < len(name) <= NAME_MAX and _NAME_RE.fullmatch(name) and name.strip() == name):
        raise FingerprintError(
            f"--name {name!r}: use 1 to {NAME_MAX} letters, digits, spaces or ._-+@ "
            "(no leading or trailing space)"
        )
    return name


def default_name(capture: str | os.PathLike) -> str:
    """The capture's file name without its extension, unsafe characters replaced by '_'."""
    stem = re.sub(r"[^A-Za-z0-9._+@ -]", "_", Path(capture).stem).strip()[:NAME_MAX].strip()
    return stem or "device"
