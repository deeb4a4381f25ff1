"""The two labs' data sets as the protocols see them (../shared/EVALUATION.md): dnp-23 and lab2.

A data folder holds one folder per device, each with its captures and `_iotdevice-mac.txt`. A `Lab`
knows what differs between the labs: its device list and split (seen / unseen devices), how its
captures are ordered, the brands, the router's MAC and the protocol's name; everything else
(development / test halves, enrollment) is one rule for both. This module also reads every
device's own packets with as few tshark starts as possible: the extraction of each capture is
cached under its sha256, and the captures not yet cached are read in one tshark run over their
concatenation.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from tool.capture import FIELDS, TSHARK_PREFS, CaptureError, Packet, read_many, tshark_path
from tool.constants import PACKETS
from tool.files import atomic_output, sha256_file

SEEN = (
    "Aria",
    "D-LinkCam",
    "D-LinkDoorSensor",
    "D-LinkSiren",
    "D-LinkWaterSensor",
    "EdimaxPlug1101W",
    "EdnetGateway",
    "HueBridge",
    "Lightify",
    "SmarterCoffee",
    "TP-LinkPlugHS100",
    "WeMoLink",
)
UNSEEN = (
    "D-LinkDayCam",
    "D-LinkHomeHub",
    "D-LinkSensor",
    "D-LinkSwitch",
    "EdimaxPlug2101W",
    "HomeMaticPlug",
    "HueSwitch",
    "iKettle2",
    "MAXGateway",
    "TP-LinkPlugHS110",
    "Withings",
)
BRANDS = {
    "Aria": "Fitbit",
    "EdnetGateway": "Ednet",
    "HomeMaticPlug": "eQ-3",
    "MAXGateway": "eQ-3",
    "HueBridge": "Philips Hue",
    "HueSwitch": "Philips Hue",
    "iKettle2": "Smarter",
    "SmarterCoffee": "Smarter",
    "Lightify": "Osram",
    "WeMoLink": "Belkin",
    "Withings": "Withings",
}
BRAND_PREFIXES = {"D-Link": "D-Link", "EdimaxPlug": "Edimax", "TP-Link": "TP-Link"}

DEV_CAPTURES = 10  # captures 1-10 of each device are the development half, 11-20 the test half
# Relative to the working folder, not to this file: after `pip install .` this file lives in
# site-packages, where no data set is.
DATA_ROOT = Path("..") / "shared" / "data"
DEFAULT_DATA = DATA_ROOT / "iot-sentinel"

_CAPTURE_RE = re.compile(r"Setup-([A-Za-z]+)-(\d+)-")
_BOOT_RE = re.compile(r"boot-(\d+)\.")
T = TypeVar("T")


@dataclass(frozen=True)
class Lab:
    """One lab's data set: what its protocol needs to know beyond the common rules."""

    name: str  # its folder under ../shared/data
    protocol: str  # the protocol's name in EVALUATION.md and in dnp-eval's report
    devices: tuple[str, ...]  # every device of the lab, as its folders are named
    seen: tuple[str, ...]  # the devices the paper's 12-device model may train on; the rest are unseen
    brands: dict[str, str]  # device -> brand, where not the device's own name ...
    brand_prefixes: dict[str, str]  # ... or given by a prefix of its name
    router: str  # the router's MAC: its answers and the internet's packets come from it
    other_hosts: dict[str, str] = field(default_factory=dict)  # MAC -> what it is (phones, laptops)

    def brand(self, device: str) -> str:
        """The vendor of a device, as brand_top1 counts it."""
        if device in self.brands:
            return self.brands[device]
        for prefix, name in self.brand_prefixes.items():
            if device.startswith(prefix):
                return name
        return device

    def split(self, device: str) -> str:
        return "seen" if device in self.seen else "unseen"


IOT_SENTINEL = Lab(
    name="iot-sentinel",
    protocol="dnp-23",
    devices=tuple(sorted(SEEN + UNSEEN)),
    seen=SEEN,
    brands=BRANDS,
    brand_prefixes=BRAND_PREFIXES,
    router="00:b5:6d:06:08:ba",
    other_hosts={"38:0b:40:ef:85:41": "Samsung (the setup phone)", "24:77:03:7c:ea:dc": "Intel"},
)
UCLOUVAIN_BOOT = Lab(
    name="uclouvain-boot",
    protocol="lab2",
    devices=(
        "DLinkCamera",
        "HueLight",
        "SmartThingsOutlet",
        "TapoCamera",
        "TapoLight",
        "TapoPlug",
        "TpLinkPlug",
        "TuyaLight",
        "TuyaPlug",
        "XiaomiCamera",
    ),
    seen=(),  # the paper's model never reads this lab: every device is unseen to it
    brands={
        "TapoCamera": "TP-Link",
        "TapoLight": "TP-Link",
        "TapoPlug": "TP-Link",
        "TpLinkPlug": "TP-Link",
        "TuyaLight": "Tuya",
        "TuyaPlug": "Tuya",
    },
    brand_prefixes={},
    router="c0:56:27:38:8f:8c",
)
LABS = {lab.name: lab for lab in (IOT_SENTINEL, UCLOUVAIN_BOOT)}
PROTOCOLS = {lab.protocol: lab for lab in LABS.values()}


def lab_named(name: str) -> Lab:
    """A lab by its folder name or its protocol's name (iot-sentinel / dnp-23, uclouvain-boot / lab2)."""
    lab = LABS.get(name) or PROTOCOLS.get(name)
    if lab is None:
        known = ", ".join(f"{lab.protocol} ({lab.name})" for lab in LABS.values())
        raise CaptureError(f"no lab or protocol named {name!r}: {known}")
    return lab


def lab_of(root: str | os.PathLike | None) -> Lab:
    """The lab a data folder holds: by the folder's name, else by its captures' names (boot-NN is
    lab2's); a folder of neither kind is read the dnp-23 way."""
    if root is None:
        return IOT_SENTINEL
    root = Path(root)
    if root.name in LABS:
        return LABS[root.name]
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir() and any(_BOOT_RE.match(p.name) for p in folder.iterdir()):
                return UCLOUVAIN_BOOT
    return IOT_SENTINEL


def brand(device: str, lab: Lab | None = None) -> str:
    """The vendor of a device type, as brand_top1 counts it (the labs' device names do not collide)."""
    if lab is not None:
        return lab.brand(device)
    for candidate in LABS.values():
        if device in candidate.devices:
            return candidate.brand(device)
    return IOT_SENTINEL.brand(device)


def capture_order(path: Path) -> tuple[str, int, str]:
    """Sort key: dnp-23's setup person, then sequence number as an integer (A-1, A-2, ..., A-10,
    B-1); lab2's boot number (boot-01 ... boot-20)."""
    m = _CAPTURE_RE.search(path.name)
    if m:
        return (m.group(1), int(m.group(2)), path.name)
    m = _BOOT_RE.match(path.name)
    if m:
        return ("", int(m.group(1)), path.name)
    return ("~", 0, path.name)


@dataclass
class Device:
    """One device type: its MAC, its captures in protocol order, and its side of the split."""

    name: str
    mac: str
    captures: list[Path]
    split: str  # "seen" or "unseen"
    lab: Lab = IOT_SENTINEL

    @property
    def dev_captures(self) -> list[Path]:
        return self.captures[:DEV_CAPTURES]

    @property
    def test_captures(self) -> list[Path]:
        return self.captures[DEV_CAPTURES:]


def default_data_dir(lab: Lab | str | None = None) -> Path:
    """A lab's data folder (default dnp-23's): ../shared/data/<lab> from the working folder; for
    iot-sentinel $DNP_DATA first, and for another lab the folder beside $DNP_DATA where that is set."""
    lab = lab_named(lab) if isinstance(lab, str) else (lab or IOT_SENTINEL)
    env = os.environ.get("DNP_DATA")
    if env and lab is IOT_SENTINEL:
        return Path(env)
    local = (Path.cwd() / DATA_ROOT / lab.name).resolve()
    if env and not local.is_dir() and (Path(env).parent / lab.name).is_dir():
        return Path(env).parent / lab.name
    return local


def load_devices(root: str | os.PathLike | None = None, lab: Lab | str | None = None) -> list[Device]:
    """Every device folder under `root` (default: the lab's folder), sorted by name, with the lab's
    split (a device outside its seen list counts as unseen). `lab` defaults to lab_of(root)."""
    lab = lab_named(lab) if isinstance(lab, str) else lab
    if lab is None:
        lab = lab_of(root)
    root = Path(root) if root else default_data_dir(lab)
    if not root.is_dir():
        raise CaptureError(f"{root}: no such data folder")
    devices = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        mac_file = folder / "_iotdevice-mac.txt"
        if not mac_file.exists():
            continue
        captures = sorted(
            (p for p in folder.iterdir() if p.suffix in (".pcap", ".pcapng")), key=capture_order
        )
        mac = mac_file.read_text().strip().lower()
        devices.append(Device(folder.name, mac, captures, lab.split(folder.name), lab))
    if not devices:
        raise CaptureError(f"{root}: no device folders with _iotdevice-mac.txt")
    return devices


def cache_dir(kind: str, extracted: Sequence[str]) -> Path:
    """Where extractions of one kind are cached: keyed by the tshark version and what is extracted.

    The key changes when tshark or the extracted fields change, so a cache never outlives them.
    """
    base = os.environ.get("DNP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deepnetprint"
    )
    out = subprocess.run(
        [tshark_path(), "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    ).stdout.splitlines()
    version = out[0] if out else "unknown"
    key = hashlib.sha256("|".join([version, *extracted]).encode()).hexdigest()[:16]
    return Path(base) / kind / key


def cached_extraction(
    kind: str,
    extracted: Sequence[str],
    paths: Sequence[Path],
    extract: Callable[[list[Path]], list[list[T]]],
    to_row: Callable[[T], Sequence[object]],
    from_row: Callable[[list[str]], T],
    use_cache: bool = True,
) -> dict[Path, list[T]]:
    """What `extract` gives for each capture, cached as tab-separated rows under the capture's sha256.

    `extract(paths)` reads the captures the cache lacks, all in one go (one tshark run), and returns
    each one's items in order; `to_row` / `from_row` turn an item into a cache row and back.
    """
    paths = list(dict.fromkeys(Path(p) for p in paths))
    result: dict[Path, list[T]] = {}
    missing: list[tuple[Path, Path]] = []
    cache = cache_dir(kind, extracted)
    if use_cache:
        cache.mkdir(parents=True, exist_ok=True)
    for path in paths:
        entry = cache / f"{sha256_file(path)}.tsv"
        if use_cache and entry.exists():
            with open(entry, newline="", encoding="utf-8") as f:
                result[path] = [from_row(r) for r in csv.reader(f, delimiter="\t")]
        else:
            missing.append((path, entry))
    if missing:
        for (path, entry), items in zip(missing, extract([p for p, _ in missing])):
            result[path] = items
            if use_cache:
                with atomic_output(entry, newline="") as f:
                    csv.writer(f, delimiter="\t", lineterminator="\n").writerows(to_row(i) for i in items)
    return {p: result[p] for p in paths}


def _packet_row(p: Packet) -> list[object]:
    return [p.frame, repr(p.time), p.eth_src, p.eth_dst, p.ip_src, p.ip_dst, p.length, p.protocol, p.info,
            p.dhcp_prl, p.dhcp_vendor, p.ja3, p.user_agent]  # fmt: skip


def _row_packet(r: list[str]) -> Packet:
    return Packet(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], int(r[6]), r[7], r[8],
                  dhcp_prl=r[9], dhcp_vendor=r[10], ja3=r[11], user_agent=r[12])  # fmt: skip


def _read_fresh(paths: list[Path]) -> list[list[Packet]]:
    fresh: list[list[Packet]] = [[] for _ in paths]
    for packet in read_many(paths):
        # source numbers the files of this one run; a cached capture must not depend on it.
        fresh[packet.source].append(replace(packet, source=0))
    return fresh


def read_captures(paths: Sequence[Path], use_cache: bool = True) -> dict[Path, list[Packet]]:
    """All packets of each capture, from the cache where it has them, else one tshark run."""
    fields = [*FIELDS, *TSHARK_PREFS]
    return cached_extraction("extract", fields, paths, _read_fresh, _packet_row, _row_packet, use_cache)


@dataclass
class DevicePackets:
    """A device's own packets (eth.src is its MAC), per capture, in protocol order."""

    device: Device
    per_capture: list[list[Packet]] = field(default_factory=list)

    def enrollment(self, count: int = PACKETS) -> list[Packet]:
        """The first `count` packets of capture 1, continuing into capture 2, ... if short."""
        return enrollment_sequence(self.per_capture, count)


def enrollment_sequence(captures: Sequence[Sequence[T]], count: int = PACKETS, start: int = 0) -> list[T]:
    """The dnp-23 enrollment: the first `count` packets of capture `start`, continuing into the next
    captures (after the last, the first ones) while it is short. Items may be packets or their indices."""
    out: list[T] = []
    for packets in [*captures[start:], *captures[:start]]:
        out.extend(packets[: count - len(out)])
        if len(out) >= count:
            break
    return out


def device_packets(devices: Sequence[Device], use_cache: bool = True) -> dict[str, DevicePackets]:
    """Each device's own packets in each of its captures, read in one go."""
    all_paths = [c for d in devices for c in d.captures]
    packets = read_captures(all_paths, use_cache=use_cache)
    return {
        d.name: DevicePackets(d, [[p for p in packets[c] if p.eth_src == d.mac] for c in d.captures])
        for d in devices
    }
