"""Captures without Ethernet: hosts are keyed by the best source address the link layer offers.

The captures are the shipped demo, rewritten by real tools into the link types a responder meets:
Linux cooked capture (`tcpdump -i any`), 802.11 data frames (a Wi-Fi monitor capture, with and without
radiotap), raw IP (tunnels, VPNs), and Bluetooth (no address the tool reads). editcap -T only relabels
the link type, so the cooked and 802.11 headers are written from each frame's own Ethernet header.
"""

from __future__ import annotations

import csv
import json
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_command

DEMO = ROOT / "examples" / "demo.pcapng"
CAMERA_MAC = (ROOT / "examples" / "camera.mac").read_text().strip()
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IEEE802_11 = 105
LINKTYPE_IEEE802_11_RADIOTAP = 127
BSSID = bytes.fromhex("02aabbccddee")


def _records(pcap: Path) -> tuple[str, bytes, list[tuple[int, int, bytes]]]:
    """(byte order, file header, [(seconds, fraction, frame)]) of a classic pcap."""
    data = pcap.read_bytes()
    e = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    out, pos = [], 24
    while pos < len(data):
        sec, frac, incl, _ = struct.unpack_from(e + "IIII", data, pos)
        out.append((sec, frac, data[pos + 16 : pos + 16 + incl]))
        pos += 16 + incl
    return e, data[:24], out


def _to_wlan(pcap: Path, out: Path, radiotap: bool) -> None:
    """The Ethernet pcap as 802.11 data frames between stations of one network (no DS bits: address 1
    the destination, 2 the source, 3 the BSSID), the EtherType in an LLC/SNAP header, the payload byte
    for byte; with `radiotap`, behind a minimal radiotap header, as a monitor-mode capture has."""
    e, header, records = _records(pcap)
    header = bytearray(header)
    struct.pack_into(e + "I", header, 20, LINKTYPE_IEEE802_11_RADIOTAP if radiotap else LINKTYPE_IEEE802_11)
    parts = [bytes(header)]
    for sec, frac, frame in records:
        dot11 = b"\x08\x00\x00\x00" + frame[0:6] + frame[6:12] + BSSID + b"\x00\x00"
        body = (b"\x00\x00\x08\x00\x00\x00\x00\x00" if radiotap else b"") + dot11
        body += b"\xaa\xaa\x03\x00\x00\x00" + frame[12:14] + frame[14:]
        parts.append(struct.pack(e + "IIII", sec, frac, len(body), len(body)) + body)
    out.write_bytes(b"".join(parts))


def _to_sll(pcap: Path, out: Path) -> None:
    """The Ethernet pcap as a Linux cooked capture (SLL v1): each frame's source MAC and EtherType
    move into an SLL header, the payload stays byte for byte."""
    data = pcap.read_bytes()
    e = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    header = bytearray(data[:24])
    struct.pack_into(e + "I", header, 20, LINKTYPE_LINUX_SLL)
    parts = [bytes(header)]
    pos = 24
    while pos < len(data):
        sec, frac, incl, orig = struct.unpack_from(e + "IIII", data, pos)
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        # packet type 0 (to us), ARPHRD_ETHER, a 6-byte address padded to 8, the EtherType.
        sll = struct.pack(">HHH", 0, 1, 6) + frame[6:12] + b"\0\0" + frame[12:14]
        parts.append(struct.pack(e + "IIII", sec, frac, incl + 2, orig + 2) + sll + frame[14:])
    out.write_bytes(b"".join(parts))


@pytest.fixture(scope="module")
def captures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("linktypes")
    pcap = folder / "demo.pcap"
    subprocess.run(["editcap", "-F", "pcap", str(DEMO), str(pcap)], check=True, capture_output=True)
    sll = folder / "demo-sll.pcap"
    _to_sll(pcap, sll)
    # Raw IP: the IP frames with their 14 Ethernet bytes chopped off, relabelled.
    ip_only = folder / "demo-ip.pcap"
    subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "ip", "-w", str(ip_only)], check=True, capture_output=True
    )
    raw = folder / "demo-raw.pcap"
    subprocess.run(
        ["editcap", "-C", "14", "-T", "rawip", str(ip_only), str(raw)], check=True, capture_output=True
    )
    wlan, radiotap = folder / "demo-wlan.pcap", folder / "demo-radiotap.pcap"
    _to_wlan(pcap, wlan, radiotap=False)
    _to_wlan(pcap, radiotap, radiotap=True)
    # Bluetooth HCI: the same bytes relabelled; no Ethernet, 802.11, cooked or IP source in them.
    hci = folder / "demo-hci.pcap"
    subprocess.run(["editcap", "-T", "bluetooth-h4", str(pcap), str(hci)], check=True, capture_output=True)
    return {"eth": pcap, "sll": sll, "raw": raw, "wlan": wlan, "radiotap": radiotap, "hci": hci}


@pytest.fixture(scope="module")
def camera_fp(tmp_path_factory, clean_env) -> Path:
    out = tmp_path_factory.mktemp("fp") / "camera.fp"
    done = run_command(
        "dnp-enroll", str(ROOT / "examples" / "enroll-camera.pcap"), "--mac", CAMERA_MAC,
        "--name", "camera", "-o", str(out), "--quiet", env=clean_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def _scan(
    capture: Path, fp: Path, env: dict[str, str], tmp: Path, stderr: list[str] | None = None
) -> tuple[dict, list[list[str]], str]:
    report, packets = tmp / f"{capture.stem}.json", tmp / f"{capture.stem}.csv"
    done = run_command(
        "dnp-scan", str(capture), "-f", str(fp), "--json", str(report), "--csv", str(packets), env=env
    )
    assert done.returncode in (0, 1), done.stderr
    if stderr is not None:
        stderr.append(done.stderr)
    with open(packets, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return json.loads(report.read_text()), rows, done.stdout


def test_ethernet_hosts_keep_their_mac_key(captures, camera_fp, clean_env, tmp_path):
    report, _, stdout = _scan(captures["eth"], camera_fp, clean_env, tmp_path)
    assert all(h["host_kind"] == "mac" and h["host"] == h["mac"] != "" for h in report["hosts"])
    assert "| MAC " in stdout


def test_cooked_capture_keys_hosts_by_the_sll_source(captures, camera_fp, clean_env, tmp_path):
    eth, _, _ = _scan(captures["eth"], camera_fp, clean_env, tmp_path)
    report, rows, stdout = _scan(captures["sll"], camera_fp, clean_env, tmp_path)
    # Before: one host "" holding all the packets, with a verdict.
    assert len(report["hosts"]) == len(eth["hosts"]) > 1
    assert {h["host"]: h["packets"] for h in report["hosts"]} == {
        h["mac"]: h["packets"] for h in eth["hosts"]
    }
    assert all(h["host_kind"] == "sll" and h["mac"] == h["host"] for h in report["hosts"])
    assert [h["host"] for h in report["hosts"] if h["verdict"]] == [CAMERA_MAC]
    assert "SLL source MAC" in stdout and CAMERA_MAC in stdout
    # Every packet's host_match is its own host's score, not one lumped score.
    scores = {h["host"]: h["score"] for h in report["hosts"]}
    column = rows[0].index("host_match")
    by_host = sorted({round(float(r[column]), 5) for r in rows[1:]})
    assert by_host == pytest.approx(sorted(scores.values()), abs=1e-5)


def test_raw_ip_capture_keys_hosts_by_the_ip_source(captures, camera_fp, clean_env, tmp_path):
    report, _, stdout = _scan(captures["raw"], camera_fp, clean_env, tmp_path)
    hosts = {h["host"]: h for h in report["hosts"]}
    assert "" not in hosts and "0.0.0.0" not in hosts  # DHCP clients before they have an address
    assert all(h["host_kind"] == "ip" and h["mac"] is None for h in hosts.values())
    assert {"10.10.10.58", "10.10.10.1", "10.10.10.20"} <= set(hosts)
    # The camera's address is the best match: its first IP host carries the verdict.
    assert report["hosts"][0]["host"] == "10.10.10.58" and report["hosts"][0]["verdict"] == "camera"
    assert "IP source" in stdout


@pytest.mark.parametrize("kind", ["wlan", "radiotap"])
def test_wifi_capture_keys_hosts_by_the_802_11_source(kind, captures, camera_fp, clean_env, tmp_path):
    eth, _, _ = _scan(captures["eth"], camera_fp, clean_env, tmp_path)
    said: list[str] = []
    report, _, stdout = _scan(captures[kind], camera_fp, clean_env, tmp_path, said)
    # Before: keyed by IP, the camera lost its packets before DHCP (47 of 60) and scored 0.827.
    assert {h["host"]: h["packets"] for h in report["hosts"]} == {
        h["mac"]: h["packets"] for h in eth["hosts"]
    }
    assert all(h["host_kind"] == "wlan" and h["mac"] == h["host"] for h in report["hosts"])
    camera = next(h for h in report["hosts"] if h["host"] == CAMERA_MAC)
    assert report["hosts"][0] is camera or report["hosts"][0] == camera
    assert camera["verdict"] == "camera" and camera["packets"] == 60
    assert "802.11 source MAC" in stdout and CAMERA_MAC in stdout
    assert said == [""]  # hosts were found: nothing to say


def test_enroll_by_mac_reads_the_802_11_source(captures, clean_env, tmp_path):
    """--mac selects the device's packets on Wi-Fi as on Ethernet: the same fingerprint, but for the
    frame lengths (802.11 frames are longer), so the same support texts."""
    fps = {}
    for kind in ("eth", "wlan"):
        fps[kind] = tmp_path / f"{kind}.fp"
        done = run_command(
            "dnp-enroll", str(captures[kind]), "--mac", CAMERA_MAC, "--name", "camera", "-o", str(fps[kind]),
            "--quiet", env=clean_env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    texts = [[s["text"] for s in json.loads(fps[k].read_text())["support"]] for k in ("eth", "wlan")]
    assert texts[0] == texts[1] and len(texts[0]) == 20


def test_link_type_with_no_host_says_so_in_one_line(captures, camera_fp, clean_env, tmp_path):
    said: list[str] = []
    report, rows, stdout = _scan(captures["hci"], camera_fp, clean_env, tmp_path, said)
    assert report["hosts"] == [] and len(rows) > 1  # packets scored, none with a sender
    lines = said[0].strip().splitlines()
    assert len(lines) == 1 and "no host" in lines[0] and "Ethernet, 802.11" in lines[0], said


def test_readme_link_type_figures(captures, camera_fp, clean_env, tmp_path):
    """The README's table of link types quotes the camera's packets and score in each: a real run."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    figures = {}
    for kind in ("eth", "wlan", "radiotap", "sll", "raw"):
        report, _, _ = _scan(captures[kind], camera_fp, clean_env, tmp_path)
        top = report["hosts"][0]
        assert top["verdict"] == "camera", kind
        figures[kind] = f"{top['packets']}, {top['score']:.3f}"
    rows = {
        "eth": f"| Ethernet (1) | its Ethernet source MAC (`mac`) | {figures['eth']} |",
        "wlan": f"| {figures['wlan']}; {figures['radiotap']}: frames 18 bytes longer",
        "sll": f"(`sll`) | {figures['sll']}: frames 2 bytes longer",
        "raw": f"(`ip`) | {figures['raw']}: frames 14 bytes shorter",
    }
    missing = [row for row in rows.values() if row not in readme]
    assert not missing, missing
