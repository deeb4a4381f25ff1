"""The scan holds up: the same answers under rewritten addresses, memory flat with capture length,
interrupts that leave nothing half-written, and a memo that changes no packet's text.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, enroll_device, rewrite_addresses, run_command
from tool.capture import read_packets
from tool.evaluation.dataset import read_captures
from tool.text import memo_info, packet_text

# Test-half captures of several vendors: DHCP, ARP, mDNS, SSDP, HTTP, TLS, NTP between them.
IN_CAPTURE = ["D-LinkCam", "HueBridge", "Withings", "D-LinkSensor", "TP-LinkPlugHS110", "Aria", "MAXGateway"]
ENROLLED = ["D-LinkCam", "Withings", "TP-LinkPlugHS110"]


def test_memo_key_changes_no_packet_text(devices):
    """Scan memoises packet_text on the Info with TCP counters and leading ports blanked: on every
    distinct Info of the data set, that gives exactly packet_text of the raw Info."""
    packets = read_captures([c for d in devices.values() for c in d.captures])
    raw = {(p.protocol, p.info) for capture in packets.values() for p in capture}
    blanked: dict[tuple[str, str], str] = {}
    changed = 0
    for protocol, info in raw:
        key = (protocol, memo_info(info))
        changed += key[1] != info
        if key not in blanked:
            blanked[key] = packet_text(*key)
        assert blanked[key] == packet_text(protocol, info), info
    # The blanking does something: most TCP Infos of the data set share a key with another.
    assert changed > len(raw) // 2 and len(blanked) < len(raw) // 5, (changed, len(blanked), len(raw))


@pytest.fixture(scope="module")
def fingerprints(devices, tmp_path_factory, clean_env) -> list[Path]:
    folder = tmp_path_factory.mktemp("fp")
    paths = []
    for name in ENROLLED:
        dev = devices[name]
        out = folder / f"{name}.fp"
        enroll_device(dev, out, clean_env, name=name)
        paths.append(out)
    return paths


def scan_csv(capture: Path, fingerprints: list[Path], out: Path, env: dict[str, str]) -> list[list[str]]:
    args = [str(capture), "--csv", str(out), "--threshold", "0", "--quiet"]
    for fp in fingerprints:
        args += ["-f", str(fp)]
    done = run_command("dnp-scan", *args, env=env)
    assert done.returncode == 0, done.stderr
    with open(out, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_rewritten_addresses_give_the_same_probabilities(devices, fingerprints, tmp_path, clean_env):
    merged = tmp_path / "merged.pcap"
    paths = [str(devices[n].captures[10]) for n in IN_CAPTURE]
    subprocess.run(["mergecap", "-F", "pcap", "-w", str(merged), *paths], check=True, capture_output=True)
    rewritten = tmp_path / "rewritten.pcap"
    altered = rewrite_addresses(merged, rewritten)
    before = scan_csv(merged, fingerprints, tmp_path / "before.csv", clean_env)
    after = scan_csv(rewritten, fingerprints, tmp_path / "after.csv", clean_env)
    assert before[0] == after[0] and len(before) == len(after) > 1000
    # The rewrite really moved the devices: no source MAC and no local source IP is left as it was.
    assert {r[2] for r in before[1:]}.isdisjoint({r[2] for r in after[1:]})
    ips_before = [p.ip_src for p in read_packets(merged)]
    ips_after = [p.ip_src for p in read_packets(rewritten)]
    local = [(a, b) for a, b in zip(ips_before, ips_after) if a.startswith(("10.", "192.168."))]
    assert len(local) > len(before) // 4 and all(a != b for a, b in local)
    assert len(altered) <= len(before) // 20  # tcprewrite's own padded-length artefact
    compared = 0
    # A host whose packets tcprewrite padded has another set of packets, and tcprewrite gives the IPv6
    # frames of some hosts another source MAC (33:33:...), splitting them in two: their host scores may
    # move. Every other host's score (the last column) is as address-blind as p(Target).
    renamed: dict[str, set[str]] = {}
    for a, b in zip(before[1:], after[1:]):
        renamed.setdefault(a[2], set()).add(b[2])
    moved = {before[i + 1][2] for i in altered} | {mac for mac, new in renamed.items() if len(new) > 1}
    assert len(moved) < len(renamed)
    host = before[0].index("host_match")
    for i, (a, b) in enumerate(zip(before[1:], after[1:])):
        assert a[0] == b[0]  # same frame
        if a[2] not in moved:
            assert abs(float(a[host]) - float(b[host])) <= 1e-6, (a, b)
        if i in altered:
            continue
        probs_a, probs_b = [float(x) for x in a[6:host]], [float(x) for x in b[6:host]]
        assert all(abs(x - y) <= 1e-6 for x, y in zip(probs_a, probs_b)), (a, b)
        compared += 1
    assert compared >= len(before) * 0.95


def measured_scan(capture: Path, fingerprint: Path, json_out: Path, env: dict[str, str], timeout: float):
    """Run dnp-scan's entry point; return (the run, the scan process's own peak RSS in KB).

    The peak is the Python process's alone (RUSAGE_SELF at exit), not tshark's, which runs beside it.
    """
    rss_file = json_out.with_suffix(".rss")
    code = (
        "import atexit, resource\n"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"atexit.register(lambda: open({str(rss_file)!r}, 'w').write(str(peak())))\n"
        "import tool.cli.scan as m\n"
        "m.main()\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(capture),
            "-f",
            str(fingerprint),
            "--json",
            str(json_out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    return done, int(rss_file.read_text())


@pytest.fixture(scope="module")
def all_devices_merged(devices, tmp_path_factory) -> Path:
    """The 460 captures of the 23 devices in one capture, about 175,000 packets."""
    out = tmp_path_factory.mktemp("all") / "all.pcapng"
    paths = [str(c) for d in devices.values() for c in d.captures]
    subprocess.run(["mergecap", "-w", str(out), *paths], check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_a_million_packets_scan_in_flat_memory(all_devices_merged, fingerprints, tmp_path, clean_env):
    import json

    big = tmp_path / "big.pcapng"
    copies = 6
    subprocess.run(
        ["mergecap", "-a", "-w", str(big), *[str(all_devices_merged)] * copies],
        check=True,
        capture_output=True,
    )
    small_run, small_rss = measured_scan(
        all_devices_merged, fingerprints[0], tmp_path / "s.json", clean_env, 900
    )
    assert small_run.returncode in (0, 1), small_run.stderr
    big_run, big_rss = measured_scan(big, fingerprints[0], tmp_path / "b.json", clean_env, 3600)
    assert big_run.returncode in (0, 1), big_run.stderr
    small = json.loads((tmp_path / "s.json").read_text())
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["packets"] == copies * small["packets"] >= 1_000_000
    # The same packets six times over: every host's mean is the same, and memory stays where it was.
    assert [h["packets"] for h in report["hosts"]] == [copies * h["packets"] for h in small["hosts"]]
    assert big_rss <= 1.2 * small_rss, (small_rss, big_rss)


def children(pid: int, name: str | None = None) -> list[int]:
    """The child processes of `pid` (those whose command is `name`, if given)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        command, fields = text.split("(", 1)[1].rsplit(")", 1)[0], text.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and name in (None, command):
            out.append(int(stat.parent.name))
    return out


def test_reading_stopped_early_leaves_no_tshark_and_no_thread(all_devices_merged):
    threads = threading.active_count()
    packets = read_packets(all_devices_merged)
    first = [next(packets) for _ in range(10)]
    assert [p.frame for p in first] == list(range(1, 11))
    # Only tshark counts: an earlier test's Dask cluster leaves multiprocessing's helper process.
    assert children(os.getpid(), "tshark"), "tshark is not running"
    packets.close()
    assert threading.active_count() == threads
    assert not children(os.getpid(), "tshark")


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
@pytest.mark.parametrize("to_group", [False, True], ids=["process", "process-group"])
def test_interrupted_scan_leaves_nothing_behind(
    all_devices_merged, fingerprints, tmp_path, clean_env, signum, to_group
):
    """Ctrl-C in a terminal signals the whole group (tshark too); kill signals dnp-scan alone."""
    out = tmp_path / "out"
    out.mkdir()
    args = [str(all_devices_merged), "-f", str(fingerprints[0]), "--json", str(out / "r.json")]
    args += ["--csv", str(out / "p.csv"), "--annotate", str(out / "a.csv"), "--pcapng", str(out / "c.pcapng")]
    args += ["--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-c", "import tool.cli.scan as m; m.main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Wait until tshark runs, then let the scan get well under way (its rows wait in a spool that
        # has no name, so the time it has run is what says so).
        deadline = time.monotonic() + 120
        tshark: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            tshark = children(proc.pid)
            if tshark:
                break
            time.sleep(0.1)
        assert tshark and proc.poll() is None, "the scan did not start"
        time.sleep(3.0)
        assert proc.poll() is None, "the scan ended before it could be interrupted"
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    if not to_group:
        assert proc.returncode == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in out.iterdir()) == []
    time.sleep(0.2)
    assert not [p for p in tshark if Path(f"/proc/{p}").exists()], "tshark outlived the scan"
