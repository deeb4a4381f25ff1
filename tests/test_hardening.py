"""Issue 11: what an investigator's hands (or a hostile file) can do to the commands, through the real
commands. Outputs never replace devices or inputs, are committed together or not at all, carry the
user's umask; bad input is one line on stderr and a non-zero exit, never a traceback or a hang.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, enroll_device, not_a_file, run_command
from tool.evaluation.dataset import Device

TIMEOUT = 120


@pytest.fixture(scope="module")
def device(devices) -> Device:
    return devices["Aria"]


@pytest.fixture(scope="module")
def fingerprint(device, tmp_path_factory, clean_env):
    return enroll_device(device, tmp_path_factory.mktemp("fp") / "aria.fp", clean_env, name="aria")


@pytest.fixture
def capture(device, tmp_path):
    """A copy of a small capture in the test's own folder: an input that must survive every run."""
    path = tmp_path / "in.pcap"
    shutil.copyfile(device.captures[1], path)
    return path


def one_line_error(done: subprocess.CompletedProcess, prog: str = "dnp-scan") -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def scan(capture, fingerprint, *args: str, env, **kw) -> subprocess.CompletedProcess:
    return run_command(
        "dnp-scan", str(capture), "-f", str(fingerprint), *args, env=env, timeout=TIMEOUT, **kw
    )


OUTPUT_OPTIONS = ["--json", "--csv", "--annotate", "--pcapng"]


# 1. Output paths that are not regular files.


@pytest.mark.parametrize("option", [*OUTPUT_OPTIONS, "dnp-enroll -o"])
def test_output_onto_a_device_node_is_refused(option, capture, fingerprint, device, tmp_path, clean_env):
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers, in tmp_path only
    if option == "dnp-enroll -o":
        done = run_command(
            "dnp-enroll", str(capture), "--mac", device.mac, "-o", str(node), env=clean_env, timeout=TIMEOUT
        )
        message = one_line_error(done, "dnp-enroll")
    else:
        message = one_line_error(scan(capture, fingerprint, option, str(node), env=clean_env))
    assert str(node) in message and "not a regular file" in message
    assert stat.S_ISCHR(node.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pcap", "null"]


def test_output_onto_a_fifo_or_a_folder_is_refused(capture, fingerprint, tmp_path, clean_env):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    message = one_line_error(scan(capture, fingerprint, "--json", str(fifo), env=clean_env))
    assert "not a regular file" in message
    message = one_line_error(scan(capture, fingerprint, "--csv", str(tmp_path), env=clean_env))
    assert str(tmp_path) in message


# 2. Outputs that would overwrite an input, or each other.


def _same_path_cases():
    return {
        "--json onto the capture": (["--json", "{capture}"], "the capture"),
        "--csv onto the capture": (["--csv", "{capture}"], "the capture"),
        "--annotate onto the capture": (["--annotate", "{capture}"], "the capture"),
        "--pcapng onto the capture": (["--pcapng", "{capture}"], "the capture"),
        "--json onto the fingerprint": (["--json", "{fingerprint}"], "a fingerprint"),
        "--json through a symlink": (["--json", "{symlink}"], "the capture"),
        "--json onto a hard link": (["--json", "{hardlink}"], "the capture"),
        "two outputs, one file": (["--json", "{out}", "--csv", "{out}"], "--json"),
    }


@pytest.mark.parametrize("case", list(_same_path_cases()))
def test_output_onto_an_input_is_refused(case, capture, fingerprint, tmp_path, clean_env):
    args, message = _same_path_cases()[case]
    fp_copy = tmp_path / "aria.fp"
    shutil.copyfile(fingerprint, fp_copy)
    (tmp_path / "link.pcap").symlink_to(capture)
    os.link(capture, tmp_path / "hard.pcap")
    names = {
        "capture": capture,
        "fingerprint": fp_copy,
        "symlink": tmp_path / "link.pcap",
        "hardlink": tmp_path / "hard.pcap",
        "out": tmp_path / "out.txt",
    }
    before = capture.read_bytes(), fp_copy.read_bytes()
    done = scan(capture, fp_copy, *(a.format(**names) for a in args), env=clean_env)
    assert message in one_line_error(done)
    assert (capture.read_bytes(), fp_copy.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aria.fp", "hard.pcap", "in.pcap", "link.pcap"]


def test_enroll_output_onto_its_capture_is_refused(capture, device, clean_env):
    before = capture.read_bytes()
    done = run_command("dnp-enroll", str(capture), "--mac", device.mac, "-o", str(capture), env=clean_env)
    assert "the capture" in one_line_error(done, "dnp-enroll")
    assert capture.read_bytes() == before


# 3. and 4. All outputs or none; errors name the user's path.


def test_a_late_failure_commits_no_output(capture, fingerprint, tmp_path, clean_env):
    """--pcapng of a gzip capture needs editcap; without it the scan fails after scoring, and the
    sidecar (written before the copy) must not be left behind."""
    gz = tmp_path / "in.pcap.gz"
    gz.write_bytes(gzip.compress(capture.read_bytes()))
    capture.unlink()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tshark").symlink_to(shutil.which("tshark"))
    env = dict(clean_env, PATH=str(bin_dir))
    out = tmp_path / "out"
    out.mkdir()
    args = [
        "--annotate",
        str(out / "a.csv"),
        "--json",
        str(out / "r.json"),
        "--pcapng",
        str(out / "c.pcapng"),
    ]
    message = one_line_error(scan(gz, fingerprint, *args, env=env))
    assert "editcap" in message
    assert list(out.iterdir()) == []


def test_missing_output_folder_is_named_before_the_scan(capture, fingerprint, tmp_path, clean_env):
    for option in OUTPUT_OPTIONS:
        target = tmp_path / "nowhere" / "dir" / "x.out"
        message = one_line_error(scan(capture, fingerprint, option, str(target), env=clean_env))
        assert str(target) in message and ".tmp" not in message, message
    assert not (tmp_path / "nowhere").exists()


def test_pcapng_write_error_names_the_output(capture, tmp_path):
    from tool.pcapng import AnnotateError, write_commented_pcapng

    out = tmp_path / "gone" / "c.pcapng"
    with pytest.raises(AnnotateError) as e:
        write_commented_pcapng(capture, out, [(1, 0.5, "a")])
    assert str(out) in str(e.value) and str(capture) not in str(e.value)


# 5. One rule for file modes: the user's umask.


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_output_has_the_umask_mode(umask, capture, fingerprint, device, tmp_path, clean_env):
    out = tmp_path / "out"
    out.mkdir()
    names = {"--json": "r.json", "--csv": "p.csv", "--annotate": "a.csv", "--pcapng": "c.pcapng"}
    args = [a for option, name in names.items() for a in (option, str(out / name))]
    done = scan(
        capture,
        fingerprint,
        *args,
        "--threshold",
        "0",
        "--quiet",
        env=clean_env,
        preexec_fn=lambda: os.umask(umask),
    )
    assert done.returncode == 0, done.stderr
    done = run_command(
        "dnp-enroll",
        str(capture),
        "--mac",
        device.mac,
        "-o",
        str(out / "d.fp"),
        "--quiet",
        env=clean_env,
        preexec_fn=lambda: os.umask(umask),
    )
    assert done.returncode == 0, done.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {name: 0o666 & ~umask for name in [*names.values(), "d.fp"]}


# 6. and 7. Fingerprints that are not regular files, or are built to hurt the parser.


@pytest.mark.parametrize(
    "kind", ["/dev/zero", "fifo", "folder", "too large", "nested lists", "nested objects"]
)
def test_fingerprint_that_is_no_file_or_a_bomb(kind, capture, tmp_path, clean_env):
    path = tmp_path / "bad.fp"
    if kind == "nested lists":
        path.write_text("[" * 1000 + "]" * 1000)
    elif kind == "nested objects":
        path.write_text('{"a":' * 100000 + "1" + "}" * 100000)
    else:
        path = not_a_file(kind, path, 5 << 20)
    done = run_command("dnp-scan", str(capture), "-f", str(path), env=clean_env, timeout=60)
    message = one_line_error(done)
    assert str(path) in message


# 8. What a fingerprint, a capture's name or a packet says is shown, never interpreted.


def _rename_fingerprint(source, out, name: str):
    from tool.fingerprint import _digest

    data = json.loads(source.read_text())
    data.pop("digest")
    data["name"] = name
    data["digest"] = _digest(data)
    out.write_text(json.dumps(data, ensure_ascii=False))
    return out


def test_markup_and_control_characters_are_shown_as_text(capture, fingerprint, tmp_path, clean_env):
    name = "x[/]y[b]z[/b]:cd:\x1b[2J"
    fp = _rename_fingerprint(fingerprint, tmp_path / "odd.fp", name)
    odd_capture = tmp_path / "a[b]b.pcap"
    capture.rename(odd_capture)
    done = scan(odd_capture, fp, "--threshold", "0", env=clean_env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "\x1b" not in done.stdout
    assert "x[/]y[b]z[/b]:cd:\\x1b[2J" in done.stdout.replace("\n", ""), done.stdout
    assert "a[b]b.pcap" in done.stdout


def test_macs_are_not_emoji(capture, fingerprint, tmp_path, clean_env):
    mac = "94:10:3e:cd:37:65"
    rewritten = tmp_path / "mac.pcap"
    subprocess.run(
        ["tcprewrite", f"--enet-smac={mac}", "-i", str(capture), "-o", str(rewritten)],
        check=True,
        capture_output=True,
    )
    # One MAC for every packet, the router's forwarded ones too: that host is a router, judged on ask.
    done = scan(rewritten, fingerprint, "--threshold", "0", "--judge-routers", env=clean_env)
    assert done.returncode == 0, done.stderr
    assert mac in done.stdout and "\U0001f4bf" not in done.stdout


def test_info_with_markup_is_shown_as_text():
    from rich.console import Console

    from tool.records import ScanResult
    from tool.report import print_scan

    result = ScanResult.__new__(ScanResult)
    row = {
        "frame": 1,
        "time": 0.0,
        "eth_src": "94:10:3e:cd:37:65",
        "protocol": "[b]HTTP",
        "info": "GET /[/]x \x1b]0;owned\x07",
        "target": "a",
        "probability": 0.5,
    }
    host = {
        "mac": "94:10:3e:cd:37:65",
        "ips": ["[i]1"],
        "packets": 1,
        "match": {"a": 0.5},
        "best": "a",
        "score": 0.5,
        "verdict": "a",
    }
    vars(result).update(
        capture="c.pcap",
        fingerprints=[{"name": "a", "file": "a.fp"}],
        threshold=0.5,
        host_score="first20",
        packets=1,
        hosts=[host],
        top_packets=[row],
    )
    console = Console(record=True, width=200, file=open(os.devnull, "w"))
    print_scan(console, result)
    text = console.export_text()
    assert "GET /[/]x \\x1b]0;owned\\x07" in text and "[b]HTTP" in text and "[i]1" in text
    assert "94:10:3e:cd:37:65" in text


@pytest.mark.parametrize(
    "name,message",
    [("x[/]y", "--name"), ("a" * 65, "--name"), ("tab\there", "--name"), ("", "--name")],
)
def test_enroll_refuses_unsafe_names(name, message, capture, device, tmp_path, clean_env):
    out = tmp_path / "x.fp"
    done = run_command(
        "dnp-enroll", str(capture), "--mac", device.mac, "--name", name, "-o", str(out), env=clean_env
    )
    assert message in one_line_error(done, "dnp-enroll")
    assert not out.exists()


def test_enroll_accepts_the_documented_name_set(capture, device, tmp_path, clean_env):
    out = tmp_path / "x.fp"
    name = "Cam 2_b.c-d+e@site"
    done = run_command(
        "dnp-enroll",
        str(capture),
        "--mac",
        device.mac,
        "--name",
        name,
        "-o",
        str(out),
        "--quiet",
        env=clean_env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["name"] == name


def test_enroll_refuses_a_fingerprint_larger_than_scan_reads(capture, device, monkeypatch):
    import tool.fingerprint as fingerprint
    from tool.fingerprint import FingerprintError, enroll

    monkeypatch.setattr(fingerprint, "MAX_FILE_BYTES", 2000)
    with pytest.raises(FingerprintError, match="--count"):
        enroll(capture, mac=device.mac, count=5)


# 10. Values that parse but mean nothing, empty captures, closed and broken stdout.


def test_threshold_nan_is_refused(capture, fingerprint, clean_env):
    # A raw host score is a cosine in [-1, 1]; a false-match rate is in (0, 1].
    for value in ("nan", "inf", "-1.5"):
        one_line_error(scan(capture, fingerprint, "--threshold", value, env=clean_env))
    for value in ("nan", "0", "1.5"):
        one_line_error(scan(capture, fingerprint, "--max-false-match", value, env=clean_env))


def test_empty_filter_is_refused(capture, fingerprint, device, tmp_path, clean_env):
    assert "filter" in one_line_error(scan(capture, fingerprint, "--filter", " ", env=clean_env))
    done = run_command(
        "dnp-enroll", str(capture), "--filter", "", "-o", str(tmp_path / "x.fp"), env=clean_env
    )
    assert "filter" in one_line_error(done, "dnp-enroll")


def test_capture_without_packets_is_an_error(capture, fingerprint, tmp_path, clean_env):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(capture.read_bytes()[:24])
    out = tmp_path / "r.json"
    message = one_line_error(scan(empty, fingerprint, "--json", str(out), env=clean_env))
    assert "no packets" in message and not out.exists()


def test_closed_stdout_is_one_line(capture, fingerprint, clean_env):
    scan_cmd = f"{sys.executable} -c 'import tool.cli.scan as m; m.main()'"
    for extra in ("", "--json -"):
        done = subprocess.run(
            ["bash", "-c", f"{scan_cmd} {capture} -f {fingerprint} {extra} >&-"],
            capture_output=True,
            text=True,
            env=clean_env,
            cwd=ROOT,
            timeout=TIMEOUT,
        )
        assert "standard output is closed" in one_line_error(done)


def test_broken_pipe_exits_141(capture, fingerprint, clean_env):
    scan_cmd = f"{sys.executable} -c 'import tool.cli.scan as m; m.main()'"
    cmd = f"{scan_cmd} {capture} -f {fingerprint} --threshold 0 | head -c 10"
    done = subprocess.run(
        ["bash", "-c", cmd + '; echo "rc=${PIPESTATUS[0]}" >&2'],
        capture_output=True,
        text=True,
        env=clean_env,
        cwd=ROOT,
        timeout=TIMEOUT,
    )
    assert re.search(r"^rc=141$", done.stderr, re.M), done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


# 11. A capture cut mid-packet is scored up to where it stops.


def test_truncated_capture_is_scored_with_a_warning(capture, fingerprint, tmp_path, clean_env):
    cut = tmp_path / "cut.pcap"
    data = capture.read_bytes()
    cut.write_bytes(data[: len(data) - 7])
    out = tmp_path / "out"
    out.mkdir()
    args = [
        "--json",
        str(out / "r.json"),
        "--pcapng",
        str(out / "c.pcapng"),
        "--annotate",
        str(out / "a.csv"),
    ]
    done = scan(cut, fingerprint, *args, "--threshold", "0", "--quiet", env=clean_env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dnp-scan: warning: ") and "cut short" in lines[0], (
        done.stderr
    )
    packets = json.loads((out / "r.json").read_text())["packets"]
    assert re.search(rf"after frame {packets}\b", lines[0]), lines[0]
    frames = subprocess.run(
        ["tshark", "-r", str(out / "c.pcapng"), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(frames) == packets


def test_capture_cut_inside_the_first_packet_is_an_error(capture, fingerprint, tmp_path, clean_env):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(capture.read_bytes()[:30])
    one_line_error(scan(cut, fingerprint, env=clean_env))


# 15. dnp-eval finds its data from the working folder, and says how to point it elsewhere.


def test_eval_without_data_says_how_to_give_it(tmp_path, clean_env):
    env = {k: v for k, v in clean_env.items() if k != "DNP_DATA"}
    done = run_command("dnp-eval", env=env, cwd=tmp_path)
    message = one_line_error(done, "dnp-eval")
    assert "--data" in message and "DNP_DATA" in message
    assert (
        str((tmp_path / ".." / "shared" / "data" / "iot-sentinel").resolve()) in message
        or "shared/data" in message
    )


def test_eval_json_onto_a_device_node_is_refused(tmp_path, clean_env):
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    done = run_command("dnp-eval", "--json", str(node), env=clean_env, cwd=tmp_path)
    assert "not a regular file" in one_line_error(done, "dnp-eval")
    assert stat.S_ISCHR(node.lstat().st_mode)


def test_a_full_disk_names_the_output_not_the_temporary_file(tmp_path):
    from tool.files import AtomicFile, OutputError

    target = tmp_path / "r.json"
    out = AtomicFile(target)
    out.handle._handle = open("/dev/full", "w", encoding="utf-8")  # ENOSPC on every write
    with pytest.raises(OutputError) as e:
        out.handle.write("x" * 100_000)
        out.finish()
    out.discard()
    assert str(e.value) == f"cannot write {target}: No space left on device"
    assert list(tmp_path.iterdir()) == []
