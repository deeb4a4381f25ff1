"""dnp-hunt as a user runs it: a folder of captures on a local Dask cluster, on a cluster started by hand
(one of its workers killed), interrupted and resumed, with damaged files among the captures, and one
capture cut into chunks. Every cluster runs on 127.0.0.1; every wait is bounded."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, enroll_device, run_command
from tool.constants import MAX_FALSE_MATCH

pytest.importorskip("distributed", reason="dnp-hunt's engine: pip install '.[hunt]'")

# Test-half captures (the 11th) of small captures of several vendors; two enrolled devices among them.
DEVICES = ["D-LinkDayCam", "Aria", "TP-LinkPlugHS110", "EdimaxPlug1101W", "MAXGateway", "EdnetGateway"]
ENROLLED = ["D-LinkDayCam", "Aria"]
BAD = {"empty.pcap": "empty file", "junk.pcap": "isn't a capture file", "damaged.pcap": "damaged or corrupt"}
TIMEOUT = 120
# sys.modules[name] = None makes `import name` fail, as on a machine without the extra.
WITHOUT_DASK = "import sys; sys.modules['distributed'] = sys.modules['dask'] = None; "


def _bad_files(folder: Path, sample: Path) -> None:
    (folder / "empty.pcap").write_bytes(b"")
    (folder / "junk.pcap").write_bytes(bytes(range(256)) * 8)
    head = sample.read_bytes()
    # A pcap header, then a record header that claims a 4 GB packet.
    (folder / "damaged.pcap").write_bytes(head[:24] + b"\xff" * 64 + head[24:2000])
    (folder / "notes.txt").write_text("not a capture, and not named like one: left out\n")


@pytest.fixture(scope="module")
def folder(devices, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("captures")
    sub = out / "site-b"
    sub.mkdir()
    for n, name in enumerate(DEVICES):
        # symbolic links: the data set is read where it lies, never copied
        (sub if n % 2 else out).joinpath(f"{name}-11.pcap").symlink_to(devices[name].captures[10])
    _bad_files(out, devices["Aria"].captures[10])
    return out


@pytest.fixture(scope="module")
def fingerprints(devices, tmp_path_factory, clean_env) -> list[Path]:
    folder = tmp_path_factory.mktemp("fp")
    return [enroll_device(devices[n], folder / f"{n}.fp", clean_env, name=n) for n in ENROLLED]


def _fp_args(fingerprints: list[Path]) -> list[str]:
    return [a for f in fingerprints for a in ("-f", str(f))]


@pytest.fixture(scope="module")
def local_hunt(folder, fingerprints, tmp_path_factory, clean_env):
    out = tmp_path_factory.mktemp("hunt")
    done = run_command(
        "dnp-hunt", str(folder), *_fp_args(fingerprints), "--workers", "2", "--out", str(out / "h"),
        "--json", str(out / "hunt.json"), "--all-hosts", "--batch-mb", "0.05", env=clean_env, timeout=TIMEOUT,
    )  # fmt: skip
    return done, json.loads((out / "hunt.json").read_text()), _log(out / "h")


def _log(folder: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in (folder / "captures.jsonl").read_text().splitlines()]
    by_name = {Path(r["capture"]).name: r for r in records}
    assert len(by_name) == len(records), "a capture written twice"
    return by_name


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("first_seen", "last_seen")} for r in rows]


# A chunk that starts mid-capture learns anew that a router forwards: until it does, its first packets
# from the internet and its answers may count as its own, so a router's forwarded count and own score
# (never a verdict) can differ from dnp-scan's. Every other field, and every other host, is the same.
ROUTER_SCORE = ("forwarded", "match", "false_match", "best", "score")


def _routers_unscored(rows: list[dict]) -> list[dict]:
    """The rows by host, a router's without its score (which also places it in the ranking)."""
    rows = sorted(rows, key=lambda r: r["host"])
    return [{k: v for k, v in r.items() if not (r["router"] and k in ROUTER_SCORE)} for r in rows]


def test_local_cluster_equals_dnp_scan_per_capture(local_hunt, folder, fingerprints, clean_env, tmp_path):
    done, _, records = local_hunt
    assert done.returncode == 2, done.stderr  # the bad files fail, as dnp-scan fails on each
    assert sorted(records) == sorted(f"{n}-11.pcap" for n in DEVICES)
    for name, record in records.items():
        path = next(folder.rglob(name))
        scan = run_command(
            "dnp-scan", str(path), *_fp_args(fingerprints), "--json", str(tmp_path / "s.json"), "--quiet",
            env=clean_env,
        )  # fmt: skip
        assert scan.returncode in (0, 1), scan.stderr
        expected = json.loads((tmp_path / "s.json").read_text())
        assert record["packets"] == expected["packets"]
        assert _without_times(record["hosts"]) == expected["hosts"], name
        for row in record["hosts"]:
            assert row["first_seen"] <= row["last_seen"]


def test_merged_table(local_hunt, devices):
    _, report, records = local_hunt
    assert report["captures"] == len(DEVICES) + len(BAD)
    assert report["packets"] == sum(r["packets"] for r in records.values())
    matched = [h for h in report["hosts"] if h["verdict"]]
    # Each enrolled device is found, under its own fingerprint, in its own capture.
    for name in ENROLLED:
        row = next(h for h in matched if h["mac"] == devices[name].mac and h["fingerprint"] == name)
        assert row["best_capture"].endswith(f"{name}-11.pcap")
        assert row["false_match_rate"] <= MAX_FALSE_MATCH
    # The rows are the per-capture rows merged: count, best score and times, for every matching pair.
    for h in matched:
        rows = [
            (name, r)
            for name, rec in records.items()
            for r in rec["hosts"]
            if r["host"] == h["host"] and r["false_match"][h["fingerprint"]] <= MAX_FALSE_MATCH
        ]
        assert h["captures"] == len(rows)
        assert h["score"] == max(r["match"][h["fingerprint"]] for _, r in rows)
        assert h["first_seen"] == min(r["first_seen"] for _, r in rows)
        assert h["last_seen"] == max(r["last_seen"] for _, r in rows)
    # --all-hosts: every host of every capture is in the table once (a host may match several).
    hosts = {r["host"] for rec in records.values() for r in rec["hosts"]}
    assert {h["host"] for h in report["hosts"]} == hosts
    unmatched = [h["host"] for h in report["hosts"] if not h["verdict"]]
    assert len(unmatched) == len(set(unmatched))
    keys = [(h["fingerprint"], h["verdict"], h["score"]) for h in report["hosts"]]
    assert keys[: len(matched)] == [(h["fingerprint"], h["verdict"], h["score"]) for h in matched]


def test_bad_files_listed_with_their_reason_as_dnp_scan_gives_it(local_hunt, folder, fingerprints, clean_env):
    done, report, _ = local_hunt
    failed = {Path(f["capture"]).name: f["error"] for f in report["failed"]}
    assert sorted(failed) == sorted(BAD)  # notes.txt is not a capture by name or content: left out
    for name, reason in BAD.items():
        assert reason in failed[name]
        scan = run_command("dnp-scan", str(folder / name), *_fp_args(fingerprints), env=clean_env)
        assert scan.returncode == 2
        assert failed[name].split(": ", 1)[1] in scan.stderr
    assert "Traceback" not in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _start_hunt(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    code = "import tool.cli.hunt as m; m.main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_scheduler_and_two_workers_one_killed_midway(local_hunt, folder, fingerprints, clean_env, tmp_path):
    env = dict(clean_env, PYTHONPATH=str(ROOT))
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--no-dashboard"], env=env, **quiet,
    )  # fmt: skip
    # No nanny: a killed worker stays dead, as a machine that left the cluster.
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
              "--nthreads", "1", "--no-nanny", "--no-dashboard"]  # fmt: skip
    workers = [subprocess.Popen(worker, env=env, **quiet) for _ in range(2)]
    try:
        from distributed import Client

        def ready() -> bool:
            try:
                with Client(address, timeout="2s") as c:
                    return len(c.scheduler_info()["workers"]) == 2
            except OSError:
                return False

        _wait(ready, "the scheduler and its two workers")
        out = tmp_path / "h"
        hunt = _start_hunt(
            [str(folder), *_fp_args(fingerprints), "--scheduler", address, "--out", str(out),
             "--json", str(tmp_path / "hunt.json"), "--all-hosts", "--batch-mb", "0"], env,
        )  # fmt: skip
        _wait(lambda: _lines(out / "captures.jsonl") >= 1 or hunt.poll() is not None, "the first capture")
        assert hunt.poll() is None, "the hunt ended before a worker could be killed"
        workers[0].kill()
        _, stderr = hunt.communicate(timeout=TIMEOUT)
        assert hunt.returncode == 2, stderr  # the bad files
        assert "Traceback" not in stderr
    finally:
        for p in [*workers, scheduler]:
            p.kill()
            p.wait(timeout=30)
    _, expected, expected_records = local_hunt
    assert _log(out) == expected_records  # every capture once, with the same result
    report = json.loads((tmp_path / "hunt.json").read_text())
    assert report["hosts"] == expected["hosts"]
    assert report["failed"] != [] and len(report["failed"]) == len(BAD)


def test_resume_after_sigint_scans_only_what_is_left(local_hunt, folder, fingerprints, clean_env, tmp_path):
    out = tmp_path / "h"
    # One worker and a task per capture: the captures come one at a time, so the interrupt lands
    # between the first and the last (with two workers the rest could all finish before it).
    args = [str(folder), *_fp_args(fingerprints), "--workers", "1", "--out", str(out), "--all-hosts",
            "--batch-mb", "0", "--json", str(tmp_path / "hunt.json")]  # fmt: skip
    hunt = _start_hunt(args, clean_env)
    _wait(lambda: _lines(out / "captures.jsonl") >= 1 or hunt.poll() is not None, "the first capture")
    assert hunt.poll() is None, "the hunt ended before it could be interrupted"
    hunt.send_signal(signal.SIGINT)
    _, stderr = hunt.communicate(timeout=TIMEOUT)
    assert hunt.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr and "run it again" in stderr
    kept = len(_log(out))
    assert 1 <= kept < len(DEVICES), (kept, stderr)
    done = run_command("dnp-hunt", *args, env=clean_env, timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr
    report = json.loads((tmp_path / "hunt.json").read_text())
    assert (report["reused"], report["scanned"]) == (kept, len(DEVICES) + len(BAD) - 1 - kept)
    _, expected, expected_records = local_hunt
    assert report["hosts"] == expected["hosts"]
    assert _log(out) == expected_records


def test_large_capture_in_chunks_equals_dnp_scan(devices, fingerprints, tmp_path):
    """One capture of several devices merged in time, cut into chunks of 500 packets: each host's first
    20 packets come from several chunks, and the merged hosts are dnp-scan's."""
    from tool.capture import read_packets
    from tool.engine import read_chunk
    from tool.fingerprint import load
    from tool.hunt import hunt, split
    from tool.model import Model
    from tool.scan import scan
    from tool.text import packet_text

    merged = tmp_path / "merged.pcapng"
    sources = [str(devices[n].captures[10]) for n in ["D-LinkCam", "Aria", "D-LinkDayCam", "HueBridge"]]
    subprocess.run(["mergecap", "-w", str(merged), *sources], check=True, capture_output=True)
    result = hunt([str(merged)], [str(f) for f in fingerprints], workers=2, chunk_bytes=1, chunk_packets=500)
    model = Model.load()
    expected = scan(merged, [load(f, model) for f in fingerprints], model)
    (record,) = result.records
    assert record["packets"] == expected.packets > 1500
    assert _routers_unscored(_without_times(record["hosts"])) == _routers_unscored(expected.hosts)
    # Read in chunks, every packet is there once, and reads as the model reads it whole: frame numbers
    # in Info texts ("request in 812") are the capture's, not the chunk's.
    pieces = split(str(merged), tmp_path / "chunks", 2, 500)
    assert len(pieces) == -(-expected.packets // 500)
    whole = [packet_text(p.protocol, p.info) for p in read_packets(merged)]
    assert [packet_text(p.protocol, p.info) for piece in pieces for p in read_chunk(*piece)] == whole


def test_without_dask_dnp_scan_works_and_dnp_hunt_says_what_to_install(folder, fingerprints, clean_env):
    def run(command: str, *args: str) -> subprocess.CompletedProcess:
        code = f"{WITHOUT_DASK}import tool.cli.{command} as m; m.main()"
        return subprocess.run(
            [sys.executable, "-c", code, *args, *_fp_args(fingerprints)],
            cwd=ROOT, env=clean_env, capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip

    scan = run("scan", str(next(folder.rglob("Aria-11.pcap"))), "--quiet")
    assert scan.returncode in (0, 1), scan.stderr
    hunt = run("hunt", str(folder))
    assert hunt.returncode == 2
    assert hunt.stderr.splitlines() == [
        "dnp-hunt: error: Dask is not installed: pip install 'deepnetprint[hunt]'"
    ]


def test_a_batch_read_by_one_tshark_run_equals_each_capture_alone(local_hunt, folder, fingerprints):
    """Small captures travel in batches read by one mergecap + tshark run; a bad one in a batch makes
    it read each capture alone. Either way each capture's result is dnp-scan's (the local hunt's)."""
    from tool.hunt import Settings, scan_batch

    _, _, records = local_hunt
    settings = Settings(tuple(f.read_text() for f in fingerprints), None, None, None)
    good = sorted(folder.rglob("*-11.pcap"))
    expected = {
        p.name: {"capture": str(p), "packets": records[p.name]["packets"], "hosts": records[p.name]["hosts"]}
        for p in good
    }
    for batch in (good, [*good[:2], folder / "junk.pcap", *good[2:]]):
        got = {Path(r["capture"]).name: r for r in scan_batch([str(p) for p in batch], settings)}
        if len(batch) > len(good):
            assert "isn't a capture file" in got.pop("junk.pcap")["error"]
        assert got == expected


def test_frame_references_in_a_batch_are_each_capture_s_own(devices, fingerprints):
    """A WeMoLink's first packets name other frames ("(reply in 6)"). In a batch, mergecap numbers a
    capture's frames after those of the captures before it; the hunt shifts the references back, so
    the capture's hosts in a batch are dnp-scan's of the capture alone."""
    from tool.fingerprint import load
    from tool.hunt import Settings, scan_batch
    from tool.model import Model
    from tool.scan import scan

    wemo = str(devices["WeMoLink"].captures[10])
    settings = Settings(tuple(f.read_text() for f in fingerprints), None, None, None)
    _, batched = scan_batch([str(devices["Aria"].captures[10]), wemo], settings)
    model = Model.load()
    expected = scan(wemo, [load(f, model) for f in fingerprints], model)
    assert batched["packets"] == expected.packets
    assert _without_times(batched["hosts"]) == expected.hosts


def test_a_large_capture_gives_every_worker_as_many_chunks():
    from tool.hunt import CHUNK_PACKETS, MAX_CHUNK_PACKETS, chunk_size

    for count, workers in ((1_748_220, 2), (174_822, 2), (900_001, 3), (5_000_000, 4)):
        per = chunk_size(count, workers)
        chunks = -(-count // per)
        assert CHUNK_PACKETS <= per <= MAX_CHUNK_PACKETS
        assert chunks >= 2 * workers and chunks % workers == 0, (count, workers, chunks)


def test_a_finished_hunt_answers_without_the_engine(local_hunt, folder, fingerprints, clean_env, tmp_path):
    """Every capture's result is in the hunt's folder: the table comes back with no engine at all
    (Dask is hidden here, as on a machine without the extra)."""
    _, expected, records = local_hunt
    out = tmp_path / "h"
    out.mkdir()
    (out / "captures.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records.values()))
    good = sorted(str(p) for p in folder.rglob("*-11.pcap"))
    done = subprocess.run(
        [sys.executable, "-c", f"{WITHOUT_DASK}import tool.cli.hunt as m; m.main()", *good,
         *_fp_args(fingerprints), "--out", str(out), "--json", str(tmp_path / "hunt.json"), "--all-hosts"],
        cwd=ROOT, env=clean_env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "hunt.json").read_text())
    assert (report["reused"], report["scanned"]) == (len(DEVICES), 0)
    assert report["hosts"] == expected["hosts"]
