"""dnp-enroll as a user runs it: real captures in, a readable, validated fingerprint out."""

from __future__ import annotations

import json

import pytest

from conftest import run_command


def test_enroll_by_mac_writes_a_readable_fingerprint(devices, tmp_path, clean_env):
    cam = devices["D-LinkCam"]
    out = tmp_path / "cam.fp"
    done = run_command(
        "dnp-enroll",
        str(cam.captures[0]),
        "--mac",
        cam.mac.upper(),
        "--name",
        "cam",
        "-o",
        str(out),
        env=clean_env,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["format"] == "deepnetprint-fingerprint" and data["version"] == 1
    assert data["name"] == "cam"
    assert len(data["support"]) == 20
    assert data["source"]["capture"] == cam.captures[0].name and len(data["source"]["sha256"]) == 64
    assert len(data["model"]["encoder_sha256"]) == 64
    # The analyst can read what the fingerprint is made of, and no address is in it.
    texts = " ".join(s["text"] for s in data["support"])
    assert "EAPOL" in texts and cam.mac not in texts.lower() and "192.168." not in texts
    assert "cam" in done.stdout


def test_enroll_by_display_filter_equals_enroll_by_mac(devices, tmp_path, clean_env):
    dev = devices["Withings"]
    by_mac, by_filter = tmp_path / "a.fp", tmp_path / "b.fp"
    run_command(
        "dnp-enroll", str(dev.captures[0]), "--mac", dev.mac, "-o", str(by_mac), "--quiet", env=clean_env
    )
    done = run_command(
        "dnp-enroll",
        str(dev.captures[0]),
        "--filter",
        f"eth.src == {dev.mac}",
        "-o",
        str(by_filter),
        "--quiet",
        env=clean_env,
    )
    assert done.returncode == 0, done.stderr
    a, b = json.loads(by_mac.read_text()), json.loads(by_filter.read_text())
    assert a["prototype"] == b["prototype"] and a["support"] == b["support"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--count", "50"], "only 9 packets"),
        (["--count", "3"], "at least 5"),
        (["--mac", "not-a-mac"], "not a MAC"),
    ],
)
def test_enroll_refuses_with_one_line(devices, tmp_path, clean_env, args, message):
    dev = devices["iKettle2"]  # 9 packets in its first capture
    out = tmp_path / "k.fp"
    base = ["--mac", dev.mac] if "--mac" not in args else []
    done = run_command("dnp-enroll", str(dev.captures[0]), *base, *args, "-o", str(out), env=clean_env)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_enroll_from_a_file_that_is_not_a_capture(tmp_path, clean_env):
    bogus = tmp_path / "x.pcap"
    bogus.write_bytes(b"\x00\x01garbage" * 100)
    done = run_command(
        "dnp-enroll", str(bogus), "--mac", "00:11:22:33:44:55", "-o", str(tmp_path / "x.fp"), env=clean_env
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x.fp").exists()


def test_enroll_from_several_captures_and_more_than_20_packets(devices, tmp_path, clean_env):
    dev = devices["iKettle2"]  # 9 packets in its first capture: 30 packets need three captures
    out = tmp_path / "k.fp"
    captures = [str(c) for c in dev.captures[:4]]
    done = run_command(
        "dnp-enroll", *captures, "--mac", dev.mac, "--count", "30", "-o", str(out), "--quiet", env=clean_env
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert len(data["support"]) == 30
    used = data["source"]["captures"]
    assert [u["capture"] for u in used] == [c.name for c in dev.captures[: len(used)]] and len(used) >= 3
    assert sum(u["packets"] for u in used) == 30
    assert data["source"]["capture"] == dev.captures[0].name
