"""dnp-scan as a user runs it: find enrolled devices in a capture merged from several devices."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from conftest import enroll_device, run_command
from tool.capture import read_packets
from tool.fingerprint import parse

# Test-half captures (the 11th) of seen and unseen devices of different vendors, merged in time.
IN_CAPTURE = ["D-LinkCam", "HueBridge", "Withings", "D-LinkDayCam", "TP-LinkPlugHS110", "Aria", "MAXGateway"]
ENROLLED = ["D-LinkCam", "Withings", "D-LinkDayCam", "TP-LinkPlugHS110", "Aria"]


@pytest.fixture(scope="module")
def merged(devices, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "merged.pcapng"
    paths = [str(devices[n].captures[10]) for n in IN_CAPTURE]
    subprocess.run(["mergecap", "-w", str(out), *paths], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def fingerprints(devices, tmp_path_factory, clean_env):
    folder = tmp_path_factory.mktemp("fp")
    paths = {}
    for name in ENROLLED:
        dev = devices[name]
        paths[name] = folder / f"{name}.fp"
        enroll_device(dev, paths[name], clean_env, name=name)
    return paths


@pytest.fixture(scope="module")
def full_scan(merged, fingerprints, tmp_path_factory, clean_env):
    out = tmp_path_factory.mktemp("scan")
    args = [str(merged)]
    for path in fingerprints.values():
        args += ["--fingerprint", str(path)]
    done = run_command(
        "dnp-scan",
        *args,
        "--json",
        str(out / "r.json"),
        "--csv",
        str(out / "p.csv"),
        "--threshold",
        "0",
        env=clean_env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads((out / "r.json").read_text()), out / "p.csv", done


# Every enrolled device's own host comes first for its fingerprint. Under the paper's mean p(Target)
# two did not: Withings' fingerprint put the Aria scale first, and the unseen D-LinkDayCam's put
# D-LinkCam first; the set score ranks both right.
@pytest.mark.parametrize("device", ENROLLED)
def test_enrolled_device_ranks_first_for_its_fingerprint(full_scan, devices, device):
    report, _, _ = full_scan
    ranked = sorted(report["hosts"], key=lambda h: -h["match"][device])
    assert ranked[0]["mac"] == devices[device].mac, [(h["mac"], h["match"][device]) for h in ranked[:3]]


def test_json_schema(full_scan, merged, fingerprints):
    report, _, _ = full_scan
    assert report["capture"] == str(merged)
    assert [f["name"] for f in report["fingerprints"]] == ENROLLED
    assert [f["file"] for f in report["fingerprints"]] == [str(p) for p in fingerprints.values()]
    packets = list(read_packets(merged))
    assert report["packets"] == len(packets)
    assert sum(h["packets"] for h in report["hosts"]) == len(packets)
    for host in report["hosts"]:
        assert set(host) >= {"mac", "ips", "packets", "match"}
        assert set(host["match"]) == set(ENROLLED)
        assert all(-1.0 <= v <= 1.0 for v in host["match"].values())
    scores = [h["score"] for h in report["hosts"]]
    assert scores == sorted(scores, reverse=True)


def test_csv_has_one_row_per_packet_with_proper_quoting(full_scan, merged):
    _, csv_path, _ = full_scan
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    report, _, _ = full_scan
    header = ["frame", "time", "eth_src", "eth_dst", "protocol", "info", *ENROLLED, "host_match", "router"]
    assert rows[0] == header
    packets = list(read_packets(merged))
    assert len(rows) - 1 == len(packets)
    host_score = {h["mac"]: h["score"] for h in report["hosts"]}
    router = {h["mac"]: h["router"] for h in report["hosts"]}
    for row, packet in zip(rows[1:], packets):
        assert int(row[0]) == packet.frame and row[5] == packet.info and row[2] == packet.eth_src
        assert all(0.0 <= float(x) <= 1.0 for x in row[6:-2])
        # Every packet carries its host's score: a filter on it keeps every packet of a matching host.
        assert float(row[-2]) == pytest.approx(host_score[packet.eth_src], abs=1e-6)
        assert row[-1] == ("1" if router[packet.eth_src] else "")
    assert any("," in row[5] for row in rows[1:])  # Info texts with commas survived the round trip


def test_python_api_writes_what_dnp_scan_writes(full_scan, merged, fingerprints, tmp_path):
    from tool.fingerprint import load
    from tool.model import Model
    from tool.outputs import ScanOutputs
    from tool.scan import scan

    report, csv_path, _ = full_scan
    model = Model.load()
    files = [str(p) for p in fingerprints.values()]
    outputs = ScanOutputs(merged, csv=tmp_path / "p.csv", json=tmp_path / "r.json")
    try:
        result = scan(
            merged, [load(p, model) for p in files], model, threshold=0, fingerprint_files=files,
            on_packet=outputs.on_packet,
        )  # fmt: skip
        assert not (tmp_path / "p.csv").exists()  # nothing is in place before the commit
        outputs.commit(result)
    finally:
        outputs.discard()
    assert (tmp_path / "p.csv").read_bytes() == csv_path.read_bytes()
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "r.json"]


def test_outputs_discarded_leave_nothing(merged, tmp_path):
    from tool.files import OutputError
    from tool.outputs import ScanOutputs

    paths = {"csv": tmp_path / "p.csv", "annotate": tmp_path / "a.csv", "pcapng": tmp_path / "c.pcapng"}
    with ScanOutputs(merged, **paths):
        pass  # a scan that failed: no commit
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="is the capture"):
        ScanOutputs(merged, csv=tmp_path / "p.csv", pcapng=merged)  # the evidence is never overwritten
    assert list(tmp_path.iterdir()) == []


def test_tables_name_the_hosts_and_distinct_best_packets(full_scan, devices):
    _, _, done = full_scan
    assert "Hosts in merged.pcapng" in done.stdout and "Best-matching packets" in done.stdout
    for name in ("D-LinkCam", "Aria"):
        assert devices[name].mac in done.stdout


def test_best_packets_are_distinct_inputs(full_scan):
    report, _, _ = full_scan
    rows = report["top_packets"]
    assert len(rows) == 10
    probabilities = [r["probability"] for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    from tool.text import packet_text

    assert len({(packet_text(r["protocol"], r["info"]), r["length"]) for r in rows}) == len(rows)


@pytest.mark.parametrize("threshold", ["0", "0.5", "0.9", "1"])
def test_exit_status_says_whether_a_host_reached_the_threshold(
    merged, fingerprints, tmp_path, clean_env, threshold
):
    out = tmp_path / "r.json"
    done = run_command(
        "dnp-scan",
        str(merged),
        "-f",
        str(fingerprints["Withings"]),
        "--threshold",
        threshold,
        "--json",
        str(out),
        env=clean_env,
    )
    report = json.loads(out.read_text())
    # A router (the lab's access point forwards the internet's packets) is never given a verdict.
    reached = [h["score"] >= float(threshold) and not h["router"] for h in report["hosts"]]
    assert done.returncode == (0 if any(reached) else 1), done.stderr
    assert [h["verdict"] is not None for h in report["hosts"]] == reached


def test_json_to_stdout_is_only_json(merged, fingerprints, clean_env):
    done = run_command("dnp-scan", str(merged), "-f", str(fingerprints["Aria"]), "--json", "-", env=clean_env)
    assert done.returncode in (0, 1), done.stderr
    assert json.loads(done.stdout)["fingerprints"][0]["name"] == "Aria"


def rewrite(path, tmp_path, edit):
    data = json.loads(path.read_text())
    edit(data)
    out = tmp_path / "edited.fp"
    out.write_text(json.dumps(data))
    return out


def redigest(data):
    from tool.fingerprint import _digest

    data.pop("digest")
    data["digest"] = _digest(data)


def _edit_prototype(data):
    data["prototype"][0] += 0.5


def _edit_prototype_and_digest(data):
    _edit_prototype(data)
    redigest(data)


def _other_model(data):
    data["model"]["encoder_sha256"] = "0" * 64
    redigest(data)


def _nan(data):
    data["prototype"][1] = float("nan")


TAMPERINGS = {
    "edited prototype": (_edit_prototype, "digest"),
    "edited prototype, digest recomputed": (_edit_prototype_and_digest, "altered"),
    "made with another model": (_other_model, "0000000000"),
    "NaN in the prototype": (_nan, "damaged"),
}


@pytest.mark.parametrize("case", list(TAMPERINGS))
def test_tampered_fingerprint_is_refused_with_one_line(merged, fingerprints, tmp_path, clean_env, case):
    edit, message = TAMPERINGS[case]
    bad = rewrite(fingerprints["Aria"], tmp_path, edit)
    out = tmp_path / "r.json"
    done = run_command("dnp-scan", str(merged), "-f", str(bad), "--json", str(out), env=clean_env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not out.exists()


@pytest.mark.parametrize("content", [b"", b"not json at all", b'{"format": "deepnetprint-fingerprint"'])
def test_fingerprint_that_is_not_one(merged, tmp_path, clean_env, content, fingerprints):
    bad = tmp_path / "bad.fp"
    bad.write_bytes(content or fingerprints["Aria"].read_bytes()[:200])
    done = run_command("dnp-scan", str(merged), "-f", str(bad), env=clean_env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


# A capture cut short is scored up to the cut (tests/test_hardening.py); one cut in its first packet is not.
@pytest.mark.parametrize("kind", ["not a capture", "cut in the first packet", "empty"])
def test_bad_capture_gives_one_line_and_no_output(devices, fingerprints, tmp_path, clean_env, kind):
    source = devices["D-LinkCam"].captures[10].read_bytes()
    data = {
        "not a capture": b"GET / HTTP/1.1\r\n" * 50,
        "cut in the first packet": source[:30],
        "empty": b"",
    }[kind]
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(data)
    outputs = [tmp_path / "r.json", tmp_path / "p.csv", tmp_path / "a.csv"]
    done = run_command(
        "dnp-scan",
        str(bad),
        "-f",
        str(fingerprints["Aria"]),
        "--json",
        str(outputs[0]),
        "--csv",
        str(outputs[1]),
        "--annotate",
        str(outputs[2]),
        env=clean_env,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pcap"]


# What a scan must not load: training (torch, export/) and the evaluation beside the runtime.
NOT_RUNTIME = ("torch", "export", "tool.evaluation", "sklearn", "matplotlib")
LOADED = (
    "import sys, json\n"
    "def loaded():\n"
    f"    return sorted(m for m in sys.modules if m.split('.')[0] in {NOT_RUNTIME!r}\n"
    f"                  or m.startswith('tool.evaluation'))\n"
)


def test_python_api_scans_without_torch_or_the_evaluation(merged, fingerprints, clean_env):
    code = LOADED + (
        "from tool.fingerprint import load\n"
        "from tool.model import Model\n"
        "from tool.scan import scan\n"
        "m = Model.load()\n"
        f"r = scan({str(merged)!r}, [load({str(fingerprints['Withings'])!r}, m)], m)\n"
        "print(json.dumps({'loaded': loaded(), 'top': r.hosts[0]['mac']}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["loaded"] == []


def test_dnp_scan_with_every_output_loads_no_evaluation_module(merged, fingerprints, clean_env, tmp_path):
    out = tmp_path
    args = [str(merged), "-f", str(fingerprints["Withings"]), "--json", str(out / "r.json")]
    args += ["--csv", str(out / "p.csv"), "--annotate", str(out / "a.csv"), "--pcapng", str(out / "c.pcapng")]
    code = LOADED + (
        "import atexit\n"
        f"atexit.register(lambda: open({str(out / 'loaded.json')!r}, 'w').write(json.dumps(loaded())))\n"
        "import tool.cli.scan as m\n"
        "m.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=clean_env, timeout=300
    )
    assert done.returncode in (0, 1), done.stderr
    assert (out / "c.pcapng").stat().st_size > 0
    assert json.loads((out / "loaded.json").read_text()) == []


def test_two_fingerprints_with_one_name_are_refused(merged, fingerprints, tmp_path, clean_env):
    copy = tmp_path / "copy.fp"
    copy.write_bytes(fingerprints["Aria"].read_bytes())
    args = [str(merged), "-f", str(fingerprints["Aria"]), "-f", str(copy)]
    done = run_command("dnp-scan", *args, env=clean_env)
    assert done.returncode == 2 and "share a name (Aria, Aria)" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_fingerprint_round_trips_through_json(fingerprints):
    text = fingerprints["Aria"].read_text()
    fp = parse(text)
    assert fp.to_json() == text
