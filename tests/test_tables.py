"""The tables a person reads, in an 80-column terminal: a MAC, a score, a rate and a verdict are whole.

Each command runs in a pseudo-terminal 80 columns wide, as a user's, so rich draws what it draws there;
the values each table must hold whole come from the same run's --json.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from conftest import ROOT, run_command

DEMO = ROOT / "examples" / "demo.pcapng"
COMMANDS = {
    "dnp-scan": "tool.cli.scan",
    "dnp-watch": "tool.cli.watch",
    "dnp-hunt": "tool.cli.hunt",
}
MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
CUT = re.compile(r"(\S+)…")  # what was cut, before its ellipsis


def in_terminal(command: str, *args: str, env: dict[str, str], columns: int = 80, cwd: Path = ROOT) -> str:
    """What the command shows in a terminal `columns` wide, styles and cursor moves taken out."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    code = f"import {COMMANDS[command]} as m; m.main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=dict(env, COLUMNS=str(columns), LINES="50", TERM="xterm-256color"),
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) in (0, 1), b"".join(chunks).decode(errors="replace")[-3000:]
    text = b"".join(chunks).decode(errors="replace").replace("\r", "")
    # Styles go; a cursor move or an erase starts a new line (a live table redrawn in place).
    text = re.sub(r"\x1b\[[0-9;?]*m", "", text)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", text)


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.search(MAC, line)]


def _check_whole(text: str, rows: list[tuple[str, ...]]) -> None:
    """No MAC or value is cut anywhere, and each row's values stand whole on the line of its MAC."""
    whole = {v for row in rows for v in row if len(v) > 1}
    for cut in CUT.findall(text):
        assert not any(v.startswith(cut) for v in whole), f"{cut}… is cut"
    lines = _table_lines(text)
    for line in lines:
        assert len(line.rstrip()) <= 80, line
    for mac, *values in rows:
        mine = [line for line in lines if re.search(rf"(?<![0-9a-f:]){re.escape(mac)}(?![0-9a-f:])", line)]
        assert mine, f"{mac} is not whole in:\n{text[-4000:]}"
        assert any(
            all(re.search(rf"(?<![\w.]){re.escape(v)}(?![\w.])", line) for v in values) for line in mine
        ), (
            mac,
            values,
            mine,
        )


def _host_cells(result: dict) -> list[tuple[str, ...]]:
    """What each host's row must show whole: its MAC, score, false-match rate and verdict."""
    from tool.report import verdict_text

    return [
        (
            h["mac"],
            f"{h['score']:.3f}",
            _rate(h["false_match"]["camera"], result["cohort_hosts"]),
            verdict_text(h["verdict"], h["alternatives"], h["router"]),
        )
        for h in result["hosts"]
    ]


def _rate(rate: float, cohort: int) -> str:
    from tool.report import _rate

    return _rate(rate, cohort)


@pytest.fixture(scope="module")
def camera(tmp_path_factory, clean_env) -> Path:
    out = tmp_path_factory.mktemp("tables") / "camera.fp"
    mac = (ROOT / "examples" / "camera.mac").read_text().strip()
    done = run_command(
        "dnp-enroll", str(ROOT / "examples" / "enroll-camera.pcap"), "--mac", mac, "--name", "camera",
        "-o", str(out), "--quiet", env=clean_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_scan_tables_at_80_columns_keep_every_mac_score_rate_and_verdict(camera, clean_env, tmp_path):
    report = tmp_path / "report.json"
    shown = in_terminal("dnp-scan", str(DEMO), "-f", str(camera), "--json", str(report), env=clean_env)
    result = json.loads(report.read_text())
    hosts = shown[: shown.index("Best-matching packets")]
    _check_whole(hosts, _host_cells(result))
    packets = shown[shown.index("Best-matching packets") :]
    _check_whole(
        packets, [(p["host"], str(p["frame"]), f"{p['probability']:.3f}") for p in result["top_packets"]]
    )
    # Info gave way (an ellipsis, one line), not the MAC: the mDNS rows are one line each.
    assert "…" in packets
    assert len(_table_lines(packets)) == len(result["top_packets"])


def test_watch_table_at_80_columns_keeps_every_mac_score_rate_and_verdict(camera, clean_env, tmp_path):
    report = tmp_path / "watch.json"
    shown = in_terminal("dnp-watch", "-r", str(DEMO), "-f", str(camera), "--json", str(report), env=clean_env)
    result = json.loads(report.read_text())
    final = shown[shown.rindex("packets/s") :]
    _check_whole(final, _host_cells(result))


def test_hunt_table_at_80_columns_keeps_every_mac_score_and_rate(camera, clean_env, tmp_path):
    pytest.importorskip("distributed", reason="dnp-hunt's engine: pip install '.[hunt]'")
    folder = tmp_path / "captures"
    folder.mkdir()
    for capture in (DEMO, ROOT / "examples" / "enroll-camera.pcap"):
        (folder / capture.name).symlink_to(capture)
    out = tmp_path / "hunt"
    shown = in_terminal(
        "dnp-hunt",
        str(folder),
        "-f",
        str(camera),
        "--out",
        str(out),
        "--all-hosts",
        "--workers",
        "1",
        env=clean_env,
    )
    result = json.loads((out / "hunt.json").read_text())
    assert len(result["hosts"]) > 5
    cohort = int(re.search(r"\((?:measured on )?(\d+) (?:cohort hosts|trials)", result["rule"]).group(1))
    rows = [(h["host"], f"{h['score']:.3f}", _rate(h["false_match_rate"], cohort)) for h in result["hosts"]]
    _check_whole(shown, rows)


def test_watch_last_table_gives_the_run_rate(camera, clean_env):
    """A run shorter than the table's measuring interval said "0 packets/s" in its last table."""
    shown = in_terminal("dnp-watch", "-r", str(ROOT / "examples" / "enroll-camera.pcap"), "-f", str(camera),
                        env=clean_env)  # fmt: skip
    title = " ".join(shown[shown.rindex("dnp-watch ") :].split("\n\n")[0].split())
    rate = re.search(r"packets, ([\d,]+) packets/s", title)
    assert rate and int(rate.group(1).replace(",", "")) > 0, title
    assert "1 host," in title


def test_hunt_without_a_match_has_the_table_of_one_with_matches(camera, clean_env, tmp_path):
    """On a pipe, a hunt that finds nothing shows the same columns, so a script reads both alike."""
    pytest.importorskip("distributed", reason="dnp-hunt's engine: pip install '.[hunt]'")
    # Another device of the demo (an eQ-3 plug): the camera's own capture holds no host that matches it.
    # (Not the other D-Link camera: the camera is its same-vendor sibling, and the verdict may say so.)
    other = tmp_path / "other.fp"
    args = (str(DEMO), "--mac", "00:1a:22:03:cb:be", "--name", "other", "-o", str(other), "--quiet")
    done = run_command("dnp-enroll", *args, env=clean_env)
    assert done.returncode == 0, done.stderr
    headers = []
    for capture, fp, status in ((DEMO, camera, 0), (ROOT / "examples" / "enroll-camera.pcap", other, 1)):
        folder = tmp_path / f"in-{status}"
        folder.mkdir()
        (folder / capture.name).symlink_to(capture)
        done = run_command("dnp-hunt", str(folder), "-f", str(fp), "--out", str(tmp_path / f"out-{status}"),
                           "--workers", "1", env=clean_env)  # fmt: skip
        assert done.returncode == status, done.stdout + done.stderr
        headers.append(next(line for line in done.stdout.splitlines() if line.startswith("| ")))
    with_match, without = headers
    assert without.split() == with_match.split(), headers
