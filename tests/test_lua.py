"""The Wireshark plugin as an analyst uses it: the real tshark, lua/deepnetprint.lua, real captures.

Sidecars are written with tool.sidecar.write_sidecar for the real frame numbers of real captures;
the scores in them are seeded random numbers plus the edge values 0, 0.9, just above 0.9 and 1.
Every tshark runs with a fresh HOME, so no personally installed copy of the plugin interferes.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import ROOT, enroll_device, not_a_file, run_command
from tool.capture import read_packets
from tool.pcapng import comment_text
from tool.sidecar import read_sidecar, write_sidecar

PLUGIN = ROOT / "lua" / "deepnetprint.lua"
# What Wireshark prints when a Lua script fails to load or a dissector raises.
LUA_ERRORS = ("Lua: Error", "Lua Error", "stack traceback", "attempt to ", "bad argument")
# Names with what CSV must quote, and more than ASCII.
TARGETS = ["D-LinkCam", 'Hue, bridge "living room"', "Küche ☕"]
MERGED_DEVICES = ["D-LinkCam", "HueBridge", "Withings", "Aria", "TP-LinkPlugHS110", "MAXGateway"]
ROUTER = "00:b5:6d:06:08:ba"  # the demo's router (tool.routers): it forwards the devices' cloud traffic
COLUMNS = 'gui.column.format:"No.","%m","Info","%i","Match","%Cus:deepnetprint.match_text"'


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("lua-home")
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    env.pop("DNP_SCORES", None)
    return env


@pytest.fixture(scope="module")
def capture(devices, tmp_path_factory):
    """Six devices' first captures merged in time: a few thousand real frames."""
    out = tmp_path_factory.mktemp("lua-cap") / "merged.pcapng"
    paths = [str(devices[n].captures[0]) for n in MERGED_DEVICES]
    subprocess.run(["mergecap", "-w", str(out), *paths], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def frames(capture) -> list[int]:
    return [p.frame for p in read_packets(capture)]


def make_scores(frames: list[int], seed: int = 6) -> dict[int, tuple[float, str]]:
    """Most frames scored, some not; the edge values sit on real frames too."""
    rng = np.random.default_rng(seed)
    scores = {}
    for frame in frames:
        if rng.random() < 0.85:
            scores[frame] = (float(rng.random()), TARGETS[int(rng.integers(len(TARGETS)))])
    for frame, value in zip(frames[1:5], (0.0, 0.9, math.nextafter(0.9, 1.0), 1.0)):
        scores[frame] = (value, TARGETS[1])
    return scores


@pytest.fixture(scope="module")
def scores(frames) -> dict[int, tuple[float, str]]:
    return make_scores(frames)


@pytest.fixture(scope="module")
def sidecar(scores, tmp_path_factory):
    path = tmp_path_factory.mktemp("lua-sidecar") / "merged.scores.csv"
    write_sidecar(path, ((f, s, t) for f, (s, t) in sorted(scores.items())))
    return path


def tshark(capture, *args: str, env: dict[str, str], scores=None, plugin=True) -> subprocess.CompletedProcess:
    cmd = ["tshark", "-n", "-r", str(capture)]
    if plugin:
        cmd += ["-X", f"lua_script:{PLUGIN}"]
    if scores is not None:
        cmd += ["-X", f"lua_script1:scores={scores}"]
    done = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300
    )
    assert done.returncode == 0, done.stderr
    for text in LUA_ERRORS:
        assert text not in done.stdout and text not in done.stderr, done.stderr
    return done


def fields(done: subprocess.CompletedProcess) -> dict[int, tuple[str, str]]:
    """frame -> (deepnetprint.match, deepnetprint.target) as tshark printed them ('' when absent)."""
    out = {}
    for line in done.stdout.splitlines():
        frame, match, target = line.split("\t")
        out[int(frame)] = (match, target)
    return out


FIELD_ARGS = ("-T", "fields", "-e", "frame.number", "-e", "deepnetprint.match", "-e", "deepnetprint.target")


def messages(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if "deepnetprint:" in line]


def field_value(score: float) -> float:
    """A score as tshark prints the plugin's double field: the full score, to 15 significant digits."""
    return float(f"{score:.15g}")


def assert_shows(shown: dict[int, tuple[str, str]], frames: list[int], scores) -> None:
    assert sorted(shown) == frames  # every frame dissected, none dropped
    for frame in frames:
        match, target = shown[frame]
        if frame in scores:
            score, name = scores[frame]
            # The field holds the full score, as the sidecar.
            assert float(match) == field_value(score), (frame, match, score)
            assert target == name
        else:
            assert (match, target) == ("", ""), frame


def test_fields_equal_the_sidecar_for_every_frame(capture, frames, scores, sidecar, env):
    done = tshark(capture, *FIELD_ARGS, env=env, scores=sidecar)
    assert_shows(fields(done), frames, scores)
    assert messages(done) == []
    assert len(scores) < len(frames)  # unscored frames were checked too


def test_display_filter_keeps_exactly_the_frames_above_0_9(capture, scores, sidecar, env):
    done = tshark(
        capture,
        "-Y",
        "deepnetprint.match > 0.9",
        "-T",
        "fields",
        "-e",
        "frame.number",
        env=env,
        scores=sidecar,
    )
    shown = [int(x) for x in done.stdout.split()]
    expected = sorted(f for f, (s, _) in scores.items() if s > 0.9)
    assert shown == expected
    assert any(s == 0.9 for s, _ in scores.values())  # the boundary itself was on a frame, and left out
    # A filter compares the full score: just above 0.9 (shown as 0.900) is kept.
    above = [f for f, (s, _) in scores.items() if 0.9 < s < 0.9005]
    assert above and set(above) <= set(shown)


def test_protocol_filter_finds_the_scored_frames(capture, scores, sidecar, env):
    done = tshark(
        capture, "-Y", "deepnetprint", "-T", "fields", "-e", "frame.number", env=env, scores=sidecar
    )
    assert [int(x) for x in done.stdout.split()] == sorted(scores)


def test_target_filter(capture, scores, sidecar, env):
    done = tshark(
        capture,
        "-Y",
        f'deepnetprint.target == "{TARGETS[2]}"',
        "-T",
        "fields",
        "-e",
        "frame.number",
        env=env,
        scores=sidecar,
    )
    assert [int(x) for x in done.stdout.split()] == sorted(
        f for f, (_, t) in scores.items() if t == TARGETS[2]
    )


def test_match_column_in_tshark_text_output(capture, frames, scores, sidecar, env):
    info = fields(
        tshark(capture, *FIELD_ARGS[:4], "-e", "_ws.col.Info", "-e", "frame.len", env=env, plugin=False)
    )
    done = tshark(capture, "-o", COLUMNS, env=env, scores=sidecar)
    lines = done.stdout.splitlines()
    assert len(lines) == len(frames)
    for line in lines:
        # Text output and -T fields space an Info text differently: compare words.
        number, *words = line.split()
        text = info[int(number)][0].split()
        assert words[: len(text)] == text, line
        match = " ".join(words[len(text) :])
        if int(number) in scores:
            # 3 decimals, trailing zeros kept: 0.900 and 0.910 line up with 0.929.
            assert match == f"{scores[int(number)][0]:.3f}", line
        else:
            assert match == "", line


def test_the_three_ways_to_give_the_sidecar(capture, frames, scores, sidecar, env):
    by_pref = tshark(capture, "-o", f"deepnetprint.scores_file:{sidecar}", *FIELD_ARGS, env=env)
    by_env = tshark(capture, *FIELD_ARGS, env=dict(env, DNP_SCORES=str(sidecar)))
    for done in (by_pref, by_env):
        assert_shows(fields(done), frames, scores)


def test_preference_wins_over_the_script_argument(capture, frames, scores, sidecar, env, tmp_path):
    other = tmp_path / "other.csv"
    write_sidecar(other, [(frames[0], 0.5, "other")])
    done = tshark(capture, "-o", f"deepnetprint.scores_file:{sidecar}", *FIELD_ARGS, env=env, scores=other)
    assert_shows(fields(done), frames, scores)


def test_no_sidecar_configured_is_silent(capture, frames, env):
    done = tshark(capture, *FIELD_ARGS, env=env)
    assert_shows(fields(done), frames, {})
    assert messages(done) == []


def test_packet_tree_shows_the_match(capture, frames, scores, sidecar, env):
    frame = frames[3]  # scored with 0.9000000000000001
    done = tshark(capture, "-V", "-Y", f"frame.number == {frame}", env=env, scores=sidecar)
    assert "DeepNetPrint match" in done.stdout
    assert "Match probability: 0.900\n" in done.stdout
    assert f"Fingerprint: {TARGETS[1]}" in done.stdout


HEADER = "frame,score,target\n"
GOOD = "{f0},0.25,good\n{f1},0.25,good\n{f2},0.25,good\n{f3},0.25,good\n{f4},0.25,good\n"

# Each bad sidecar: its text ({fN}: the capture's Nth frame, {after}: one past its last frame) and what
# the one message must say. Those that start with HEADER + GOOD keep five valid rows, which must show.
BAD_SIDECARS = {
    "empty": ("", "is empty"),
    "bad header": ("frame,probability,target\n" + GOOD, "header frame,score,target"),
    "no header": (GOOD, "header frame,score,target"),
    "binary garbage": ("\x00\x01\xff garbage \x7f" * 50, "header frame,score,target"),
    "NaN score": (HEADER + GOOD + "{f6},nan,x\n", "not a number"),
    "inf score": (HEADER + GOOD + "{f6},inf,x\n", "not a number"),
    "score above 1": (HEADER + GOOD + "{f6},1.5,x\n", "outside [0, 1]"),
    "score below 0": (HEADER + GOOD + "{f6},-0.1,x\n", "outside [0, 1]"),
    "frame not a number": (HEADER + GOOD + "seven,0.5,x\n", "not a frame number"),
    "frame zero": (HEADER + GOOD + "0,0.5,x\n", "not a frame number"),
    "missing field": (HEADER + GOOD + "{f6},0.5\n", "2 fields instead of 3"),
    "frame listed twice": (HEADER + GOOD + "{f0},0.5,x\n", "listed twice"),
    "quote not closed": (HEADER + GOOD + '{f6},0.5,"x\n', "quote is not closed"),
    "frames beyond the capture": (
        HEADER + GOOD + "{after},0.5,x\n{far},0.5,x\n",
        "2 scored frame(s) beyond the last frame read",
    ),
    # Both faults in one file: one message that says both.
    "bad row and frames beyond": (
        HEADER + GOOD + "{f6},nan,x\n{after},0.5,x\n",
        "1 bad row(s) skipped, first at line 7: score 'nan' is not a number; 1 scored frame(s) beyond",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SIDECARS))
def test_bad_sidecar_gives_one_message_and_dissection_goes_on(capture, frames, env, tmp_path, case):
    template, message = BAD_SIDECARS[case]
    text = template.format(
        **{f"f{i}": frames[i] for i in range(7)}, after=frames[-1] + 1, far=frames[-1] + 900
    )
    path = tmp_path / "bad.csv"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    done = tshark(capture, "-V", env=env, scores=path)
    assert len(re.findall(r"^Frame \d+:", done.stdout, re.M)) == len(frames)
    found = messages(done)
    assert len(found) == 1 and message in found[0], done.stderr
    shown = re.findall(r"^\s+Match probability: (\S+)$", done.stdout, re.M)
    assert shown == (["0.250"] * 5 if template.startswith(HEADER + GOOD) else [])


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "folder", "too large"])
def test_sidecar_that_is_no_regular_file_gives_one_message(kind, capture, frames, env, tmp_path):
    """/dev/zero would fill memory, a FIFO would hang tshark, a folder would read as garbage."""
    path = not_a_file(kind, tmp_path / "scores.csv", (256 << 20) + 1)  # one byte over the plugin's limit
    expected = {"too large": "larger than 256 MB", "folder": "is a folder"}.get(kind, "not a regular file")
    done = tshark(capture, *FIELD_ARGS, env=env, scores=path)
    assert_shows(fields(done), frames, {})
    found = messages(done)
    assert len(found) == 1 and expected in found[0] and str(path) in found[0], done.stderr


def test_missing_sidecar_gives_one_message(capture, frames, env, tmp_path):
    done = tshark(capture, *FIELD_ARGS, env=env, scores=tmp_path / "nowhere.csv")
    assert_shows(fields(done), frames, {})
    found = messages(done)
    assert len(found) == 1 and "cannot read the scores file" in found[0] and "nowhere.csv" in found[0]


def test_quoted_line_break_in_a_name_keeps_the_rows_after_it(capture, frames, env, tmp_path):
    path = tmp_path / "multi.csv"
    rows = [(frames[0], 0.75, "two\nlines"), (frames[1], 0.5, "a,b"), (frames[2], 0.125, 'say "hi"')]
    write_sidecar(path, rows)
    done = tshark(
        capture, "-T", "fields", "-e", "frame.number", "-e", "deepnetprint.match", env=env, scores=path
    )
    shown = dict(line.split("\t") for line in done.stdout.splitlines()[:3])
    assert shown == {str(frames[0]): "0.75", str(frames[1]): "0.5", str(frames[2]): "0.125"}
    assert messages(done) == []


def test_changed_sidecar_is_read_again_between_runs(capture, frames, env, tmp_path):
    path = tmp_path / "changing.csv"
    write_sidecar(path, [(frames[0], 0.25, "a")])
    first = fields(tshark(capture, *FIELD_ARGS, env=env, scores=path))
    write_sidecar(path, [(frames[0], 0.75, "b")])
    second = fields(tshark(capture, *FIELD_ARGS, env=env, scores=path))
    assert first[frames[0]] == ("0.25", "a") and second[frames[0]] == ("0.75", "b")


def test_installed_plugin_and_the_same_plugin_on_the_command_line(capture, frames, scores, sidecar, tmp_path):
    """dnp-plugin install, then the README's -X lua_script one-liner: no duplicate-protocol error."""
    home = tmp_path / "home"
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    env.pop("DNP_SCORES", None)
    done = run_command("dnp-plugin", "install", env=env)
    assert done.returncode == 0, done.stderr
    installed = home / ".local" / "lib" / "wireshark" / "plugins" / "deepnetprint.lua"
    assert f"Installed the DeepNetPrint plugin: {installed}" in done.stdout
    assert installed.read_bytes() == PLUGIN.read_bytes()
    assert "deepnetprint.match" in done.stdout  # how to add the column
    both = tshark(capture, *FIELD_ARGS, env=env, scores=sidecar)
    assert_shows(fields(both), frames, scores)
    alone = tshark(capture, *FIELD_ARGS, env=dict(env, DNP_SCORES=str(sidecar)), plugin=False)
    assert_shows(fields(alone), frames, scores)


def test_plugin_path_is_the_file_tshark_loads(capture, env):
    done = run_command("dnp-plugin", "path", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(PLUGIN)
    fields_list = subprocess.run(
        ["tshark", "-G", "fields", "-X", f"lua_script:{done.stdout.strip()}"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    names = {line.split("\t")[2] for line in fields_list.stdout.splitlines() if line.startswith("F\t")}
    assert {"deepnetprint.match", "deepnetprint.target"} <= names


def test_plugin_install_without_tshark_is_one_line(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), HOME=str(tmp_path))
    env.pop("DNP_TSHARK", None)
    done = run_command("dnp-plugin", "install", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "tshark not found" in done.stderr


@pytest.mark.parametrize("luac", ["luac5.2", "luac5.3", "luac5.4"])
def test_plugin_parses_as_lua(luac):
    exe = shutil.which(luac)
    if exe is None:
        pytest.skip(f"{luac} not installed (apt-get install lua{luac[4:]})")
    done = subprocess.run([exe, "-p", str(PLUGIN)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def merged_all(devices, tmp_path_factory):
    """Every capture of the 23 devices, one after the other: 174,822 frames."""
    out = tmp_path_factory.mktemp("lua-all") / "all.pcapng"
    paths = [str(p) for d in devices.values() for p in d.captures]
    subprocess.run(["mergecap", "-a", "-w", str(out), *paths], check=True, capture_output=True)
    return out


def test_filter_on_the_whole_data_set(merged_all, env, tmp_path):
    count = int(
        subprocess.run(
            ["capinfos", "-c", "-M", "-T", "-r", str(merged_all)], capture_output=True, text=True, check=True
        ).stdout.split("\t")[-1]
    )
    scores = make_scores(list(range(1, count + 1)), seed=23)
    path = tmp_path / "all.csv"
    write_sidecar(path, ((f, s, t) for f, (s, t) in sorted(scores.items())))
    done = tshark(
        merged_all,
        "-Y",
        "deepnetprint.match > 0.99",
        "-T",
        "fields",
        "-e",
        "frame.number",
        "-e",
        "deepnetprint.match",
        env=env,
        scores=path,
    )
    shown = {int(f): float(m) for f, m in (line.split("\t") for line in done.stdout.splitlines())}
    expected = {f: field_value(s) for f, (s, _) in scores.items() if s > 0.99}
    assert count > 170_000 and len(expected) > 1000
    assert shown == expected
    assert messages(done) == []


def test_dnp_scan_annotate_matches_its_csv(devices, env, tmp_path):
    """The real dnp-scan: the plugin shows, for each frame, the best --csv probability and its name."""
    enrolled = ["D-LinkCam", "Withings"]
    fps = []
    for name in enrolled:
        dev = devices[name]
        fp = tmp_path / f"{name}.fp"
        enroll_device(dev, fp, env, name=name)
        fps += ["-f", str(fp)]
    cap = tmp_path / "two.pcapng"
    subprocess.run(
        [
            "mergecap",
            "-w",
            str(cap),
            str(devices["D-LinkCam"].captures[12]),
            str(devices["Withings"].captures[12]),
        ],
        check=True,
        capture_output=True,
    )
    sidecar, packets, copy = tmp_path / "two.scores.csv", tmp_path / "two.csv", tmp_path / "two.scored.pcapng"
    outputs = ["--csv", str(packets), "--annotate", str(sidecar), "--pcapng", str(copy)]
    done = run_command("dnp-scan", str(cap), *fps, *outputs, "--quiet", env=env)
    assert done.returncode in (0, 1), done.stderr
    expected, host_match = {}, {}
    with open(packets, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        assert next(reader)[6:] == [*enrolled, "host_match", "router"]
        for row in reader:
            expected[int(row[0])] = [float(x) for x in row[6:-2]]
            host_match[int(row[0])] = float(row[-2])
    shown = fields(tshark(cap, *FIELD_ARGS, env=env, scores=sidecar))
    # deepnetprint.host_match: every packet carries its sending host's score, as the CSV's last column.
    hosts = tshark(
        cap, "-T", "fields", "-e", "frame.number", "-e", "deepnetprint.host_match", env=env, scores=sidecar
    )
    shown_hosts = {int(f): float(v) for f, v in (line.split("\t") for line in hosts.stdout.splitlines())}
    assert shown_hosts.keys() == host_match.keys()
    assert all(abs(shown_hosts[f] - host_match[f]) <= 1e-9 for f in host_match)  # the full score
    matching = tshark(
        cap, "-Y", "deepnetprint.host_match > 0.9", "-T", "fields", "-e", "eth.src", env=env, scores=sidecar
    )
    assert set(matching.stdout.split()) <= {devices[n].mac for n in enrolled}
    assert shown.keys() == expected.keys() and len(expected) > 100
    for frame, probs in expected.items():
        match, target = shown[frame]
        # --csv rounds to 6 decimals; the sidecar keeps every digit.
        assert abs(float(match) - max(probs)) <= 5.1e-7, frame  # the field holds the full score
        tied = [name for name, p in zip(enrolled, probs) if p == max(probs)]
        assert target in tied, (frame, target, probs)
    # The commented copy, for analysts without the plugin, says the same.
    comments = fields(tshark(copy, *FIELD_ARGS[:4], "-e", "frame.comment", "-e", "frame.len", env=env))
    for frame, (score, target, host, router) in read_sidecar(sidecar).items():
        assert comments[frame][0] == comment_text(score, target, host, router)
        assert float(comments[frame][0].split()[0].split("=")[1]) == score  # every digit


def test_one_value_from_the_sidecar_and_from_the_commented_copy(env, tmp_path):
    """The demo scored by the real dnp-scan: the plugin shows every frame the same from the sidecar and
    from the --pcapng copy's comments; the field holds the full score, so a filter at 0.9 keeps a frame
    scored 0.9001; the Match column and the tree show 3 decimals with their zeros. The demo's router
    (tool.routers) is marked on exactly its packets, in the plugin from either source and in --csv."""
    mac = (ROOT / "examples" / "camera.mac").read_text().strip()
    demo = ROOT / "examples" / "demo.pcapng"
    fp, sidecar, copy = tmp_path / "camera.fp", tmp_path / "demo.scores.csv", tmp_path / "demo.scored.pcapng"
    packets = tmp_path / "demo.csv"
    done = run_command(
        "dnp-enroll", str(ROOT / "examples" / "enroll-camera.pcap"), "--mac", mac, "--name", "camera",
        "-o", str(fp), "--quiet", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run_command(
        "dnp-scan",
        str(demo),
        "-f",
        str(fp),
        "--annotate",
        str(sidecar),
        "--pcapng",
        str(copy),
        "--csv",
        str(packets),
        "--quiet",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    scores = read_sidecar(sidecar)
    args = ("-T", "fields", "-e", "frame.number", "-e", "deepnetprint.match", "-e", "deepnetprint.match_text")
    args += ("-e", "deepnetprint.host_match")
    from_sidecar = tshark(demo, *args, env=env, scores=sidecar).stdout.splitlines()
    from_comments = tshark(copy, *args, env=env).stdout.splitlines()
    assert from_sidecar == from_comments and len(from_sidecar) == len(scores) == 713
    for line in from_sidecar:
        frame, match, text, host = line.split("\t")
        score, _, host_match, _ = scores[int(frame)]
        assert float(match) == field_value(score) and text == f"{score:.3f}", line
        assert float(host) == field_value(host_match), line
    # One filter, one answer: the frames whose full score is above 0.8, from either source.
    above = sorted(f for f, (s, *_) in scores.items() if s > 0.8)
    assert above and any(line.split("\t")[2].endswith("0") for line in from_sidecar)  # its zero kept
    for capture, sidecar_path in ((demo, sidecar), (copy, None)):
        kept = tshark(
            capture, "-Y", "deepnetprint.match > 0.8", "-T", "fields", "-e", "frame.number", env=env,
            scores=sidecar_path,
        )  # fmt: skip
        assert [int(f) for f in kept.stdout.split()] == above
    # The tree: 3 decimals, and what range the host score runs in.
    frame = above[0]
    tree = tshark(copy, "-V", "-Y", f"frame.number == {frame}", env=env).stdout
    assert f"Match probability: {scores[frame][0]:.3f}\n" in tree
    assert f"Host match: {scores[frame][2]:.3f} (the host's score, from -1 to 1)\n" in tree
    # deepnetprint.router: on exactly the router's packets (174 of them), from either source.
    senders = tshark(demo, "-T", "fields", "-e", "frame.number", "-e", "eth.src", env=env, plugin=False)
    router_frames = [
        int(f) for f, src in (line.split("\t") for line in senders.stdout.splitlines()) if src == ROUTER
    ]
    assert len(router_frames) == 174
    for capture, sidecar_path in ((demo, sidecar), (copy, None)):
        marked = tshark(
            capture,
            "-Y",
            "deepnetprint.router",
            "-T",
            "fields",
            "-e",
            "frame.number",
            env=env,
            scores=sidecar_path,
        )
        assert [int(f) for f in marked.stdout.split()] == router_frames
    with open(packets, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][-2:] == ["host_match", "router"]
    assert [int(r[0]) for r in rows[1:] if r[-1] == "1"] == router_frames
    assert {r[-1] for r in rows[1:]} == {"1", ""} and {r[2] for r in rows[1:] if r[-1]} == {ROUTER}
    tree = tshark(copy, "-V", "-Y", f"frame.number == {router_frames[0]}", env=env).stdout
    assert "Router: the sending host forwards other hosts' packets (not judged as a device)\n" in tree
    # A sidecar of the dnp-scan before routers (four columns) still shows host_match, and no router; a
    # bad router cell is one message, and the other rows still show.
    old = tmp_path / "old.scores.csv"
    lines = sidecar.read_text(encoding="utf-8").splitlines()
    assert lines[1] == "frame,score,target,host_match,router"
    old.write_text(
        "\n".join([lines[0], lines[1][: -len(",router")], *(r[: r.rindex(",")] for r in lines[2:])]) + "\n"
    )
    shown = tshark(demo, *args, "-e", "deepnetprint.router", env=env, scores=old)
    assert (
        not messages(shown)
        and [line.rsplit("\t", 1)[0] for line in shown.stdout.splitlines()] == from_sidecar
    )
    assert not any(line.rsplit("\t", 1)[1] for line in shown.stdout.splitlines())
    bad = tmp_path / "bad.scores.csv"
    bad.write_text("\n".join([*lines[:2], lines[2] + "yes", *lines[3:]]) + "\n")
    shown = tshark(
        demo, "-Y", "deepnetprint.router", "-T", "fields", "-e", "frame.number", env=env, scores=bad
    )
    assert [int(f) for f in shown.stdout.split()] == router_frames
    assert messages(shown) == [
        f"tshark: deepnetprint: {bad}: 1 bad row(s) skipped, first at line 3: router 'yes' is not 1 or empty"
    ]


def test_sidecar_of_another_capture_is_refused_with_one_message(capture, frames, scores, env, tmp_path):
    """A scores file saved as a preference applies to every capture opened later: the sidecar names
    its capture, and on another one the plugin shows nothing and says so once."""
    from tool.sidecar import CaptureIdentity

    path = tmp_path / "merged.scores.csv"
    rows = [(f, s, t) for f, (s, t) in sorted(scores.items())]
    write_sidecar(path, rows, CaptureIdentity.of(capture))
    done = tshark(capture, *FIELD_ARGS, env=env, scores=path)
    assert_shows(fields(done), frames, scores)  # its own capture: every score, no message
    assert messages(done) == []
    demo = ROOT / "examples" / "demo.pcapng"
    # Another capture (the demo, all of whose frames the sidecar lists) and a copy of this one
    # without its first frame (same packets, other numbers): nothing shown, one message.
    shifted = tmp_path / "shifted.pcapng"
    subprocess.run(["editcap", "-r", str(capture), str(shifted), f"2-{len(frames)}"], check=True)
    demo_frames = len(list(read_packets(demo)))
    for other, count in ((demo, demo_frames), (shifted, len(frames) - 1)):
        done = tshark(other, *FIELD_ARGS, env=env, scores=path)
        assert_shows(fields(done), list(range(1, count + 1)), {})
        found = messages(done)
        assert len(found) == 1, done.stderr
        assert "holds the scores of merged.pcapng, not of this one (frame 1 is at" in found[0]
        assert "no scores shown" in found[0]
        # and the same through the preference, as the GUI saves it
        done = tshark(other, "-o", f"deepnetprint.scores_file:{path}", *FIELD_ARGS, env=env)
        assert_shows(fields(done), list(range(1, count + 1)), {})
        assert len(messages(done)) == 1


def test_documented_examples_on_the_demo(env, tmp_path):
    """The README's Wireshark line and docs/wireshark.md's filters, as written, on the shipped demo
    scored with a fingerprint enrolled from examples/enroll-camera.pcap: they show what the text says."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    docs = (ROOT / "docs" / "wireshark.md").read_text(encoding="utf-8")
    mac = (ROOT / "examples" / "camera.mac").read_text().strip()
    demo = ROOT / "examples" / "demo.pcapng"
    fp, sidecar, copy = tmp_path / "camera.fp", tmp_path / "demo.scores.csv", tmp_path / "demo.scored.pcapng"
    done = run_command(
        "dnp-enroll", str(ROOT / "examples" / "enroll-camera.pcap"), "--mac", mac, "--name", "camera",
        "-o", str(fp), "--quiet", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = run_command(
        "dnp-scan",
        str(demo),
        "-f",
        str(fp),
        "--annotate",
        str(sidecar),
        "--pcapng",
        str(copy),
        "--quiet",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    # README: wireshark -r ... -o deepnetprint.scores_file:... -Y '<filter>' -o '<columns>'
    line = re.search(r"wireshark -r suspect\.pcap -o (\S+) -Y '([^']+)' \\\n\s+-o '([^']+)'", readme)
    assert line, "the README's wireshark line changed: update this test"
    pref = line.group(1).replace("suspect.scores.csv", str(sidecar))
    options = ("-o", pref, "-Y", line.group(2), "-o", line.group(3))
    shown = tshark(demo, *options, "-T", "fields", "-e", "eth.src", "-e", "deepnetprint.match", env=env)
    rows = [r.split("\t") for r in shown.stdout.splitlines()]
    assert len(rows) == 60 and {r[0] for r in rows} == {mac}  # "the camera's 60 packets and no other"
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows)
    columns = tshark(demo, "-o", pref, "-Y", line.group(2), "-o", line.group(3), env=env)
    assert len(columns.stdout.splitlines()) == 60 and mac in columns.stdout  # the Match column's line
    # docs/wireshark.md: each filter example with the count it quotes.
    examples = {
        "`deepnetprint.host_match > 0.9` (every packet of the matching hosts: on the demo, the\n"
        "camera's 60)": 60,
        "`deepnetprint.match > 0.8` (single packets that look like the device: 27 on the demo, 19 of": 27,
    }
    for text, count in examples.items():
        assert text in docs
        found = tshark(demo, "-Y", text.split("`")[1], env=env, scores=sidecar)
        assert len(found.stdout.splitlines()) == count, text
    assert "whose best packet scores 0.89" in docs
    assert max(s for s, *_ in read_sidecar(sidecar).values()) == pytest.approx(0.89, abs=0.005)
    target = tshark(
        demo, "-Y", 'deepnetprint.target == "camera" && deepnetprint.match >= 0.5', env=env, scores=sidecar
    )
    assert target.stdout.strip() and 'deepnetprint.target == "camera" && deepnetprint.match >= 0.5' in docs
    # The commented copy's filter, as written in the docs (cap.scored.pcapng is the demo's copy).
    comment = re.search(r"tshark -r cap\.scored\.pcapng -Y '([^']+)' (.*)", docs)
    assert comment
    found = tshark(copy, "-Y", comment.group(1), *comment.group(2).split(), env=env, plugin=False)
    assert len(found.stdout.splitlines()) == 60
