"""dnp-watch as an investigator runs it: a live interface, a pipe, a ring-buffer folder, and bad input.

The live test replays real captures onto a real interface: a veth pair inside a network namespace
that the test creates (no route out, every IPv4 address rewritten into the namespace's subnet first),
tcpreplay on one end, dnp-watch -i (tshark, dumpcap) on the other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, enroll_device, run_command

# Test-half captures (the 11th) of devices of several vendors; only D-LinkCam is enrolled. D-LinkDayCam,
# the same vendor's other camera, is in it as the closest impostor.
IN_CAPTURE = ["D-LinkCam", "HueBridge", "Withings", "D-LinkDayCam", "TP-LinkPlugHS110", "Aria"]
ENROLLED = "D-LinkCam"
WATCH = [sys.executable, "-c", "import tool.cli.watch as m; m.main()"]
SUBNET = "10.77.0.0/16"  # the namespace's own; every replayed IPv4 address is moved into it


@pytest.fixture(scope="module")
def merged(devices, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("watch") / "merged.pcap"
    paths = [str(devices[n].captures[10]) for n in IN_CAPTURE]
    subprocess.run(["mergecap", "-F", "pcap", "-w", str(out), *paths], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def cam(devices, tmp_path_factory, clean_env) -> Path:
    return enroll_device(devices[ENROLLED], tmp_path_factory.mktemp("fp") / "cam.fp", clean_env, ENROLLED)


@pytest.fixture(scope="module")
def scanned(merged, cam, tmp_path_factory, clean_env) -> dict:
    out = tmp_path_factory.mktemp("scan") / "scan.json"
    done = run_command("dnp-scan", str(merged), "-f", str(cam), "--json", str(out), "--quiet", env=clean_env)
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text())


def watch(
    *args: str, env: dict, stdin=subprocess.DEVNULL, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*WATCH, *args], capture_output=True, text=True, env=env, stdin=stdin, timeout=timeout, cwd=ROOT
    )


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


ALERT_KEYS = [
    "event",
    "time",
    "mac",
    "ips",
    "fingerprint",
    "alternatives",
    "score",
    "false_match_rate",
    "packets",
]


def test_stdin_stream_alerts_as_dnp_scan_finds(merged, cam, scanned, tmp_path, clean_env):
    """`tcpdump -w - | dnp-watch -r -`: the hosts that alert are those dnp-scan gives a verdict, and the
    report at exit is dnp-scan's."""
    cat = subprocess.Popen(["cat", str(merged)], stdout=subprocess.PIPE)  # a pipe, as from tcpdump -w -
    done = watch("-r", "-", "-f", str(cam), "--jsonl", str(tmp_path / "a.jsonl"),
                 "--json", str(tmp_path / "w.json"), env=clean_env, stdin=cat.stdout)  # fmt: skip
    assert cat.wait() == 0
    assert done.returncode == 0, done.stderr
    lines = jsonl(tmp_path / "a.jsonl")
    alerts = [x for x in lines if x["event"] == "alert"]
    assert all(list(a) == ALERT_KEYS for a in alerts)
    matched = {h["mac"] for h in scanned["hosts"] if h["verdict"]}
    assert {a["mac"] for a in alerts} == matched != set()
    assert {x["mac"] for x in lines if x["event"] == "host"} == matched
    assert lines[-1]["event"] == "stats" and lines[-1]["packets"] == scanned["packets"]
    report = json.loads((tmp_path / "w.json").read_text())
    assert report["capture"] == "standard input"
    report["capture"] = scanned["capture"]
    assert report == scanned
    # Not a terminal: one plain line per alert on stdout.
    assert done.stdout.count("ALERT") == len(alerts)


def _namespace_or_skip(name: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root (CI runs as root)")
    for tool in ("ip", "tcpreplay", "tcprewrite", "dumpcap"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: `make test` installs it (APT_PACKAGES)")
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"network namespaces are not allowed here: {made.stderr.strip()}")


def _in_ns(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True, text=True, **kw)


@pytest.fixture
def namespace():
    """A namespace with a veth pair (vw0, vw1) inside it and no route out; removed afterwards."""
    ns = f"dnpw{os.getpid()}"
    _namespace_or_skip(ns)
    try:
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "vw0", "type", "veth", "peer", "name", "vw1"], check=True
        )
        for link in ("lo", "vw0", "vw1"):
            subprocess.run(["ip", "-n", ns, "link", "set", link, "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.77.255.254/16", "dev", "vw1"], check=True)
        routes = _in_ns(ns, "ip", "route").stdout
        assert "default" not in routes, routes
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_live_interface_alerts_on_the_enrolled_device_only(
    namespace, merged, cam, devices, tmp_path, clean_env
):
    rewritten = tmp_path / "rewritten.pcap"
    subprocess.run(["tcprewrite", f"--pnat=0.0.0.0/0:{SUBNET}", "--fixcsum", "-i", str(merged),
                    "-o", str(rewritten)], check=True, capture_output=True)  # fmt: skip
    log, report = tmp_path / "alerts.jsonl", tmp_path / "live.json"
    cmd = ["ip", "netns", "exec", namespace, *WATCH, "-i", "vw1", "-f", str(cam), "--jsonl", str(log),
           "--json", str(report), "--capture-filter", "not ip6"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env, cwd=ROOT
    )
    try:
        # dumpcap is capturing once its packet socket shows in the namespace's /proc/net/packet.
        deadline = time.monotonic() + 30
        while len(_in_ns(namespace, "cat", "/proc/net/packet").stdout.splitlines()) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "dnp-watch did not start capturing within 30 s"
            time.sleep(0.1)
        replay_cmd = ["ip", "netns", "exec", namespace, "tcpreplay", "-i", "vw0", "--pps=500", str(rewritten)]
        replay = subprocess.Popen(replay_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen: dict[str, float] = {}  # alert line -> when it appeared in the log
        replay_end = time.monotonic()
        deadline = time.monotonic() + 60
        while (replay.poll() is None or time.monotonic() < replay_end + 2) and time.monotonic() < deadline:
            if replay.poll() is None:
                replay_end = time.monotonic()
            if log.exists():
                for line in log.read_text().splitlines():
                    seen.setdefault(line, time.time())
            time.sleep(0.05)
        assert replay.wait() == 0, replay.stderr.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    lines = jsonl(log)
    alerts = [x for x in lines if x["event"] == "alert"]
    assert [a["mac"] for a in alerts] == [devices[ENROLLED].mac], alerts
    assert list(alerts[0]) == ALERT_KEYS and alerts[0]["fingerprint"] == ENROLLED
    assert alerts[0]["packets"] == 20 and all(ip.startswith("10.77.") for ip in alerts[0]["ips"])
    # Within a few seconds of its 20th packet (the alert's time is that packet's capture time).
    delay = seen[next(line for line in seen if '"alert"' in line)] - alerts[0]["time"]
    assert 0 <= delay < 3, delay
    assert lines[-1]["event"] == "stats" and lines[-1]["stopped_by"] == "SIGINT"
    assert json.loads(report.read_text())["hosts"][0]["verdict"] == ENROLLED
    assert "stopped by SIGINT" in err


def test_interface_that_does_not_exist(cam, clean_env):
    done = watch("-i", "dnp-no-such0", "-f", str(cam), env=clean_env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dnp-watch: error: there is no interface 'dnp-no-such0': `ip link` lists them (or `tshark -D`)"
    ]


def test_stream_that_is_not_a_capture(cam, tmp_path, clean_env):
    (tmp_path / "x").write_bytes(b"GET / HTTP/1.1\r\n" * 100)
    with open(tmp_path / "x", "rb") as stream:
        done = watch(
            "-r", "-", "-f", str(cam), "--json", str(tmp_path / "r.json"), env=clean_env, stdin=stream
        )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "standard input" in done.stderr, done.stderr
    assert not (tmp_path / "r.json").exists()


def test_stream_cut_mid_packet_keeps_the_alerts(merged, cam, tmp_path, clean_env):
    data = merged.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 37])
    with open(cut, "rb") as stream:
        done = watch("-r", "-", "-f", str(cam), "--jsonl", str(tmp_path / "a.jsonl"),
                     "--json", str(tmp_path / "r.json"), env=clean_env, stdin=stream)  # fmt: skip
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "cut short" in errors[0], done.stderr
    assert [x["event"] for x in jsonl(tmp_path / "a.jsonl")][:1] == ["alert"]
    assert json.loads((tmp_path / "r.json").read_text())["hosts"][0]["verdict"] == ENROLLED


def test_sigint_during_a_stream_writes_the_report_whole(merged, cam, tmp_path, clean_env):
    """A stream that keeps coming (a feeder that sleeps): ^C stops the watch, and the report is whole."""
    feeder = subprocess.Popen(
        ["sh", "-c", f"cat {merged}; sleep 60"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    report = tmp_path / "r.json"
    cmd = [*WATCH, "-r", "-", "-f", str(cam), "--json", str(report)]
    proc = subprocess.Popen(
        cmd,
        stdin=feeder.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        assert "ALERT" in proc.stdout.readline()  # the enrolled camera, alerted while the stream is open
        assert time.monotonic() < deadline
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        feeder.kill()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(report.read_text())["packets"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


def test_follow_a_folder_that_rotates(merged, cam, scanned, tmp_path, clean_env):
    """A second process writes a ring buffer (editcap splits the capture into rotating files, one at a
    time, as dumpcap -b does); dnp-watch --follow reads each once it is closed."""
    parts = tmp_path / "parts"
    parts.mkdir()
    subprocess.run(["editcap", "-c", "400", str(merged), str(parts / "ring.pcap")], check=True)
    ring = tmp_path / "ring"
    ring.mkdir()
    writer = subprocess.Popen(
        [
            "sh",
            "-c",
            f"for f in $(ls {parts}); do cp {parts}/$f {ring}/.t; mv {ring}/.t {ring}/$f; sleep 0.3; done",
        ]
    )
    log = tmp_path / "a.jsonl"
    done = watch("--follow", str(ring), "-f", str(cam), "--jsonl", str(log), "--duration", "8", env=clean_env)
    writer.wait()
    assert done.returncode == 0, done.stderr
    lines = jsonl(log)
    assert [x["mac"] for x in lines if x["event"] == "alert"] == [
        h["mac"] for h in scanned["hosts"] if h["verdict"]
    ]
    assert lines[-1]["packets"] == scanned["packets"] and lines[-1]["stopped_by"] == "--duration"


def test_state_stays_bounded_on_a_stream_of_new_hosts(merged, cam, clean_env):
    """The data set's packets replayed with a new MAC and an hour later each round: hosts keep appearing,
    and the tracked hosts, the embeddings they hold and the memo stay bounded."""
    from dataclasses import replace

    from tool.capture import read_packets
    from tool.fingerprint import load
    from tool.model import Model
    from tool.verdict import verdict_rule
    from tool.watch import Watcher

    model = Model.load()
    packets = list(read_packets(merged))
    watcher = Watcher(model, [load(cam, model)], verdict_rule(model, "set"), idle=600, max_hosts=50)
    span = packets[-1].time - packets[0].time + 3600
    for round_ in range(12):
        shifted = [
            replace(p, eth_src=f"{p.eth_src[:-2]}{round_:02x}", time=p.time + span * round_) for p in packets
        ]
        for start in range(0, len(shifted), 1024):
            watcher.feed(shifted[start : start + 1024])
        assert len(watcher.hosts) <= 50
        assert sum(len(s.first or ()) for s in watcher.hosts.values()) <= 50 * 20
        assert watcher.matcher.memo_size <= 2 * (watcher.matcher.memo_limit + 1024)
    assert watcher.alerts == 12  # the camera, once each time it came back as a new host
    assert watcher.evicted > 12 * 5


def test_segments_read_as_one_capture(merged):
    """A stream goes through one tshark per segment (tshark's memory grows with every packet it reads);
    the packets, their frame numbers and the text the model reads are those of one tshark run."""
    from tool.capture import read_packets
    from tool.stream import stream_segments
    from tool.text import packet_text

    whole = list(read_packets(merged))
    with open(merged, "rb") as f:
        cut = [p for p in stream_segments(f.fileno(), "merged", segment=300) if p is not None]
    assert len(cut) == len(whole)
    for a, b in zip(whole, cut):
        assert (a.frame, a.time, a.host, a.length) == (b.frame, b.time, b.host, b.length)
        assert packet_text(a.protocol, a.info) == packet_text(b.protocol, b.info)


def test_extcap_driven_by_tshark(namespace, merged, cam, devices, tmp_path, clean_env):
    """dnp-plugin install --extcap; tshark captures on the DeepNetPrint interface in the namespace; each
    packet carries its score as a comment, which the Lua plugin shows as deepnetprint.* fields."""
    done = run_command("dnp-plugin", "install", "--extcap", env=clean_env)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run(["tshark", "-D"], capture_output=True, text=True, env=clean_env).stdout
    assert "deepnetprint (DeepNetPrint" in listed, listed
    rewritten = tmp_path / "rewritten.pcap"
    subprocess.run(["tcprewrite", f"--pnat=0.0.0.0/0:{SUBNET}", "--fixcsum", "-i", str(merged),
                    "-o", str(rewritten)], check=True, capture_output=True)  # fmt: skip
    out = tmp_path / "scored.pcapng"
    cmd = ["ip", "netns", "exec", namespace, "tshark", "-i", "deepnetprint",
           "-o", "extcap.deepnetprint.iface:vw1", "-o", f"extcap.deepnetprint.fingerprint:{cam}",
           "-a", "duration:30", "-w", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=clean_env)
    try:
        deadline = time.monotonic() + 30
        while len(_in_ns(namespace, "cat", "/proc/net/packet").stdout.splitlines()) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the extcap did not start capturing within 30 s"
            time.sleep(0.1)
        _in_ns(namespace, "tcpreplay", "-i", "vw0", "--pps=1000", str(rewritten))
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    from tool.cli.plugin import plugin_file

    shown = subprocess.run(
        ["tshark", "-r", str(out), "-X", f"lua_script:{plugin_file()}",
         "-Y", "deepnetprint.host_match > 0.85", "-T", "fields",
         "-e", "eth.src", "-e", "deepnetprint.target", "-e", "frame.comment"],
        capture_output=True, text=True, env=clean_env, check=True,
    ).stdout.splitlines()  # fmt: skip
    # The camera's host scores 0.90 (offline dnp-scan of this merge, encoder ed4750611a0c), the next
    # host 0.64: the filter sits between them.
    assert shown and {tuple(line.split("\t")[:2]) for line in shown} == {(devices[ENROLLED].mac, ENROLLED)}
    assert all(line.split("\t")[2].startswith("deepnetprint.match=") for line in shown)


def test_no_permission_to_capture_names_the_fix():
    """What dumpcap says to a user who may not capture becomes one line naming the fix. (dnp-watch itself
    cannot run as another user here: this Python lives under /root.)"""
    from tool.capture import first_error_line
    from tool.cli.watch import _capture_error

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("switching to an unprivileged user needs root and setpriv")
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "dumpcap", "-q", "-P", "-i", "lo",
         "-a", "duration:1", "-w", "/dev/null"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if done.returncode == 0:
        pytest.skip("dumpcap lets every user capture here (file capabilities)")
    line = _capture_error(first_error_line(done.stderr), "lo")
    assert line.startswith(
        "no permission to capture on lo: run as root, or add yourself to the wireshark group"
    )


def test_a_host_that_comes_back_after_idle_alerts_again(merged, cam, devices):
    from dataclasses import replace

    from tool.capture import read_packets
    from tool.fingerprint import load
    from tool.model import Model
    from tool.verdict import verdict_rule
    from tool.watch import Watcher

    model = Model.load()
    packets = list(read_packets(merged))
    watcher = Watcher(model, [load(cam, model)], verdict_rule(model, "set"), idle=600)
    alerts = watcher.feed(packets)
    # The same capture again, the next day: the same MACs, back after being idle.
    later = packets[-1].time - packets[0].time + 86_400
    alerts += watcher.feed([replace(p, time=p.time + later) for p in packets]) + watcher.finish()
    mac = devices[ENROLLED].mac
    assert [a.mac for a in alerts] == [mac, mac]
    assert alerts[1].packets > alerts[0].packets  # its count goes on; its set was made anew
    (summary,) = watcher.summaries()
    assert summary["mac"] == mac and summary["alerts"] == 2


def test_the_memo_forgets_least_recently_used_and_scores_the_same(merged, cam):
    """A memo far smaller than the capture's distinct inputs: bounded, and every packet scores as with
    a memo that holds everything."""
    import numpy as np

    from tool.capture import read_packets
    from tool.fingerprint import load
    from tool.model import Model
    from tool.scores import Matcher

    model = Model.load()
    fps = [load(cam, model)]
    packets = list(read_packets(merged))
    everything = Matcher(model, fps)
    whole = everything.score(packets)
    small = Matcher(model, fps, memo_limit=64)
    parts = []
    for start in range(0, len(packets), 50):
        parts.append(small.score(packets[start : start + 50]))
        assert small.memo_size <= 2 * (64 + 50) and small._rows <= 2 * (64 + 50)
    assert np.allclose(np.concatenate(parts), whole, atol=1e-5)
    assert small.distinct_inputs > everything.distinct_inputs  # it forgot, and encoded again what came back
