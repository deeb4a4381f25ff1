"""The README's examples are what the commands print: each output block is compared with a real run,
and the help texts say what the code does. A change that alters an output fails here, with the new
output in the message, to be pasted into the README."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_tables import in_terminal

from conftest import ROOT, run_command

README = (ROOT / "README.md").read_text(encoding="utf-8")
MAC = (ROOT / "examples" / "camera.mac").read_text().strip()


def block(starting: str) -> str:
    """The README's fenced block whose first line starts with `starting`, lines right-stripped."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", README, re.M | re.S)
    found = [b for b in blocks if b.startswith(starting)]
    assert len(found) == 1, f"one README block should start with {starting!r}"
    return _lines(found[0])


def _lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def _same(readme: str, real: str) -> None:
    assert readme == real, f"the README shows:\n{readme}\n\na real run prints:\n{real}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory, clean_env) -> Path:
    """A folder laid out as the repository after `make demo`: examples/ with the camera enrolled."""
    root = tmp_path_factory.mktemp("readme")
    (root / "examples").mkdir()
    for name in ("demo.pcapng", "enroll-camera.pcap"):
        (root / "examples" / name).symlink_to(ROOT / "examples" / name)
    done = run_command(
        "dnp-enroll", "examples/enroll-camera.pcap", "--mac", MAC, "--name", "camera",
        "-o", "examples/camera.fp", "--quiet", env=clean_env, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root


def test_make_demo_table(demo, clean_env):
    args = ("examples/demo.pcapng", "--fingerprint", "examples/camera.fp")
    done = run_command("dnp-scan", *args, env=clean_env, cwd=demo)
    assert done.returncode == 0, done.stderr
    hosts = done.stdout[: done.stdout.index("Best-matching packets")]
    _same(block("Hosts in demo.pcapng"), _lines(hosts))


def test_json_example(demo, clean_env):
    done = run_command(
        "dnp-scan", "examples/demo.pcapng", "-f", "examples/camera.fp", "--json", "-", env=clean_env, cwd=demo
    )
    report = json.loads(done.stdout)
    report["hosts"], report["top_packets"] = report["hosts"][:1], report["top_packets"][:1]
    shown = json.loads(block('{"capture"'))
    assert shown == report, json.dumps(report)


def test_watch_examples(demo, clean_env):
    command = block("$ dnp-watch -r").splitlines()[0].removeprefix("$ dnp-")
    args = command.split()[1:]
    done = run_command("dnp-watch", *args, env=clean_env, cwd=demo)
    session = f"$ dnp-{command}\n{done.stdout}{done.stderr}$ echo $?\n{done.returncode}"
    _same(block("$ dnp-watch -r"), _lines(session))
    alert = (demo / "alerts.jsonl").read_text().splitlines()[0]
    _same(block('{"event": "alert"'), alert)
    # The terminal's last table, 80 columns wide; the rate and the seconds are the run's own.
    shown = in_terminal("dnp-watch", *args[:4], env=clean_env, cwd=demo)
    table = shown[shown.rindex("dnp-watch examples/demo.pcapng:") : shown.rindex("dnp-watch: ")]

    def steady(text: str) -> str:
        title, rest = text.split("\n\n", 1)  # the title wraps where its figures put it
        title = re.sub(r"[\d,]+ packets/s", "N packets/s", re.sub(r"\d+ s$", "N s", " ".join(title.split())))
        return f"{title}\n\n{rest}"

    _same(steady(block("dnp-watch examples/demo.pcapng:")), steady(_lines(table)))


@pytest.mark.slow
def test_hunt_table_on_the_data_set(data_dir, devices, clean_env, tmp_path):
    pytest.importorskip("distributed", reason="dnp-hunt's engine: pip install '.[hunt]'")
    enroll = re.search(
        r"\(`dnp-enroll \.\.\./D-LinkCam/Setup-A-1-STA\.pcap --mac (\S+) --name (\S+) -o", README
    )
    assert enroll, "the README's dnp-hunt enrollment changed: update this test"
    fp = tmp_path / "cam.fp"
    capture = str(devices["D-LinkCam"].captures[0])
    args = (capture, "--mac", enroll.group(1), "--name", enroll.group(2), "-o", str(fp), "--quiet")
    done = run_command("dnp-enroll", *args, env=clean_env)
    assert done.returncode == 0, done.stderr
    assert "dnp-hunt ../shared/data/iot-sentinel --fingerprint cam.fp --out hunt-cam" in README
    args = (str(data_dir), "--fingerprint", str(fp), "--out", str(tmp_path / "hunt-cam"))
    done = run_command("dnp-hunt", *args, env=clean_env, timeout=900)
    assert done.returncode == 0, done.stderr
    _same(block("Hunt: 460 captures"), _lines(done.stdout))


def test_help_and_readme_say_what_the_set_score_is():
    from tool.model import CHAMFER_WEIGHT

    assert CHAMFER_WEIGHT == 0.5  # "half ..., half ..."
    section = README[README.index("### dnp-scan") : README.index("### dnp-hunt")]
    assert "half how well each packet finds its like" in section and "half the cosine between" in section
    done = run_command("dnp-scan", "--help")
    text = " ".join(done.stdout.split())
    assert "half Chamfer similarity and half cosine of the mean embeddings" in text
    assert "cosine for set" not in text


def test_plugin_help_lists_every_field_and_the_preference_path(clean_env, tmp_path):
    lua = (ROOT / "lua" / "deepnetprint.lua").read_text(encoding="utf-8")
    fields = re.findall(r'ProtoField\.\w+\("(deepnetprint\.\w+)"', lua)
    assert {"deepnetprint.match", "deepnetprint.host_match"} <= set(fields)
    helped = " ".join(run_command("dnp-plugin", "--help").stdout.split())
    for field in fields:
        assert field in helped, field
    # Wireshark lists a Lua protocol's preferences under its short name: what tshark -G says.
    protocols = subprocess.run(
        ["tshark", "-G", "protocols", "-X", f"lua_script:{ROOT / 'lua' / 'deepnetprint.lua'}"],
        capture_output=True, text=True, env=clean_env, check=True,
    ).stdout  # fmt: skip
    short = next(line.split("\t")[1] for line in protocols.splitlines() if line.endswith("\tdeepnetprint"))
    env = dict(clean_env, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    installed = run_command("dnp-plugin", "install", env=env)
    assert installed.returncode == 0, installed.stderr
    docs = (ROOT / "docs" / "wireshark.md").read_text(encoding="utf-8")
    for text in (installed.stdout, docs):
        assert f"Preferences > Protocols > {short} >" in text
        assert not re.search(r"Protocols > (?!" + short + ")", text)


def test_python_api_examples(devices, tmp_path):
    """The README's Python blocks, run as written on a camera's capture and the demo."""
    (tmp_path / "cam.pcap").symlink_to(devices["D-LinkCam"].captures[0])
    (tmp_path / "suspect.pcap").symlink_to(ROOT / "examples" / "demo.pcapng")
    blocks = re.findall(r"^```python\n(.*?)^```", README, re.M | re.S)
    assert len(blocks) == 2
    # The second goes on from the first, as in one session.
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True\nb0:c5:54:")  # result.matched, then the best host
    written = {p.name for p in tmp_path.iterdir()}
    assert written >= {"cam.fp", "packets.csv", "suspect.scores.csv", "report.json"}
