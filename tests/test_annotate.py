"""The scores sidecar and the commented pcapng copy, read back with the real tshark on real captures."""

from __future__ import annotations

import gzip
import os
import subprocess

import numpy as np
import pytest

from conftest import ROOT
from tool.capture import read_packets
from tool.pcapng import AnnotateError, comment_text, write_commented_pcapng
from tool.sidecar import SIDECAR_HEADER, read_sidecar, write_sidecar

NAMES = ["D-LinkCam", 'Hue, bridge "living room"', "Küche ☕", "two\nlines"]
# What must not change between a capture and its commented copy.
SAME = ("frame.number", "frame.time_epoch", "frame.len", "frame.cap_len", "eth.src", "_ws.col.Info")


def seeded_rows(frames, seed=0, share=0.8):
    rng = np.random.default_rng(seed)
    return [
        (f, float(rng.random()), NAMES[int(rng.integers(len(NAMES)))]) for f in frames if rng.random() < share
    ]


def tshark_fields(capture, *fields: str, env=None) -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(capture), "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a"]
    for f in fields:
        cmd += ["-e", f]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600)
    assert done.returncode == 0, done.stderr
    return [line.split("\t") for line in done.stdout.splitlines()]


def comments_of(capture, env=None) -> dict[int, str]:
    """frame -> its packet comments, as tshark reads frame.comment."""
    return {int(f): c for f, c in tshark_fields(capture, "frame.number", "frame.comment", env=env) if c}


# --- the sidecar ---------------------------------------------------------------------------------------


def test_sidecar_round_trip_keeps_every_digit_and_every_name(tmp_path):
    rows = seeded_rows(range(1, 2001), share=0.7) + [(5000, 0.0, ""), (5001, 1.0, "x"), (5002, 5e-324, "y")]
    rows.append((np.int64(5003), np.float32(0.75), "from numpy"))  # what a scorer is likely to hand over
    path = tmp_path / "s.csv"
    write_sidecar(path, iter(rows))
    assert path.read_text(encoding="utf-8").splitlines()[0] == "frame,score,target,host_match,router"
    assert read_sidecar(path) == {int(f): (float(s), t, None, False) for f, s, t in rows}


def test_sidecar_carries_the_host_score_and_reads_the_old_three_columns(tmp_path):
    path = tmp_path / "s.csv"
    write_sidecar(path, [(1, 0.25, "cam", 0.987654321), (2, 0.5, "cam", -0.125)])
    assert read_sidecar(path) == {1: (0.25, "cam", 0.987654321, False), 2: (0.5, "cam", -0.125, False)}
    with pytest.raises(ValueError, match="host_match"):
        write_sidecar(tmp_path / "bad.csv", [(1, 0.25, "cam", 1.5)])
    old = tmp_path / "old.csv"
    old.write_text("frame,score,target\n7,0.5,cam\n", encoding="utf-8")
    assert read_sidecar(old) == {7: (0.5, "cam", None, False)}


def test_sidecar_says_which_frames_a_router_sent_and_reads_the_old_four_columns(tmp_path):
    path = tmp_path / "s.csv"
    write_sidecar(
        path, [(1, 0.25, "cam", 0.5, True), (2, 0.5, "cam", 0.75, False), (3, 0.5, "cam", None, True)]
    )
    assert path.read_text(encoding="utf-8").splitlines()[1:] == [
        "1,0.25,cam,0.5,1",
        "2,0.5,cam,0.75,",
        "3,0.5,cam,,1",
    ]
    assert read_sidecar(path) == {
        1: (0.25, "cam", 0.5, True),
        2: (0.5, "cam", 0.75, False),
        3: (0.5, "cam", None, True),
    }
    with pytest.raises(ValueError, match="router"):
        write_sidecar(tmp_path / "bad.csv", [(1, 0.25, "cam", 0.5, "yes")])
    path.write_text("frame,score,target,host_match,router\n1,0.25,cam,0.5,yes\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: router 'yes' is not 1 or empty"):
        read_sidecar(path)
    old = tmp_path / "old.csv"
    old.write_text("frame,score,target,host_match\n7,0.5,cam,0.25\n", encoding="utf-8")
    assert read_sidecar(old) == {7: (0.5, "cam", 0.25, False)}
    assert (
        comment_text(0.5, "cam", 0.25, True) == "deepnetprint.match=0.5 target=cam host_match=0.25 router=1"
    )
    assert comment_text(0.5, "cam", 0.25) == "deepnetprint.match=0.5 target=cam host_match=0.25"


def test_sidecar_uses_proper_csv_quoting(tmp_path):
    path = tmp_path / "s.csv"
    write_sidecar(path, [(3, 0.9312345, 'Hue, bridge "living room"')])
    assert (
        path.read_text(encoding="utf-8")
        == 'frame,score,target,host_match,router\n3,0.9312345,"Hue, bridge ""living room""",,\n'
    )


@pytest.mark.parametrize(
    "row",
    [(0, 0.5, "a"), (-3, 0.5, "a"), (1.0, 0.5, "a"), (1, float("nan"), "a"), (1, 1.01, "a"), (1, -1e-9, "a")],
)
def test_bad_row_leaves_the_old_sidecar_and_no_temp_file(tmp_path, row):
    path = tmp_path / "s.csv"
    write_sidecar(path, [(1, 0.5, "old")])
    before = path.read_bytes()
    with pytest.raises(ValueError) as err:
        write_sidecar(path, [(2, 0.25, "new"), row])
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.csv"]


def test_duplicate_frame_is_refused(tmp_path):
    with pytest.raises(ValueError, match="listed twice"):
        write_sidecar(tmp_path / "s.csv", [(1, 0.5, "a"), (1, 0.25, "b")])
    assert not (tmp_path / "s.csv").exists()


BAD_CONTENT = {
    "empty": ("", "empty file"),
    "bad header": ("frame,probability,target\n1,0.5,a\n", "header"),
    "NaN": ("frame,score,target\n1,nan,a\n", "not a probability"),
    "above 1": ("frame,score,target\n1,1.5,a\n", "not a probability"),
    "below 0": ("frame,score,target\n1,-0.5,a\n", "not a probability"),
    "not a number": ("frame,score,target\n1,high,a\n", "not a number"),
    "frame zero": ("frame,score,target\n0,0.5,a\n", "not a frame number"),
    "frame text": ("frame,score,target\nfirst,0.5,a\n", "not a frame number"),
    "two fields": ("frame,score,target\n1,0.5\n", "2 fields"),
    "duplicate": ("frame,score,target\n1,0.5,a\n1,0.5,a\n", "listed twice"),
    "quote not closed": ('frame,score,target\n1,0.5,"a\n', "line"),
}


@pytest.mark.parametrize("case", list(BAD_CONTENT))
def test_read_sidecar_refuses_bad_content_in_one_line(tmp_path, case):
    text, message = BAD_CONTENT[case]
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_sidecar(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_read_sidecar_refuses_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"frame,score,target\n1,0.5,\xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_sidecar(path)


# --- the commented pcapng copy ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pcap(devices):
    """A real classic-pcap capture (microsecond timestamps)."""
    return devices["D-LinkCam"].captures[0]


def check_copy(original, copy, rows, old_comments=None):
    """The copy has the original's packets unchanged, and each scored packet its comment."""
    assert tshark_fields(copy, *SAME) == tshark_fields(original, *SAME)
    comments = comments_of(copy)
    old_comments = old_comments or {}
    expected = {}
    for frame in set(old_comments) | {f for f, _, _ in rows}:
        parts = [old_comments[frame]] if frame in old_comments else []
        parts += [comment_text(s, t) for f, s, t in rows if f == frame]
        expected[frame] = ",".join(parts)  # tshark joins a frame's several comments with commas
    assert comments == expected
    for _, score, target in rows:
        text = comment_text(score, target)
        assert text.startswith("deepnetprint.match=") and f"{float(score)!r} target=" in text
        assert float(text.split("=")[1].split()[0]) == score  # every digit, as the sidecar


def test_pcap_in_pcapng_out(pcap, tmp_path):
    frames = [p.frame for p in read_packets(pcap)]
    rows = seeded_rows(frames, seed=1)
    out = tmp_path / "scored.pcapng"
    write_commented_pcapng(pcap, out, rows)
    assert out.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    check_copy(pcap, out, rows)
    assert os.listdir(tmp_path) == ["scored.pcapng"]


def test_comment_filter_as_the_analyst_types_it(pcap, tmp_path):
    frames = [p.frame for p in read_packets(pcap)]
    rows = seeded_rows(frames, seed=2)
    out = tmp_path / "scored.pcapng"
    write_commented_pcapng(pcap, out, rows)
    done = subprocess.run(
        ["tshark", "-r", str(out), "-Y", 'frame.comment contains "deepnetprint.match"', "-T", "fields", "-e",
         "frame.number"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert [int(x) for x in done.stdout.split()] == sorted(f for f, _, _ in rows)


def test_pcapng_in_keeps_other_comments_and_blocks(devices, tmp_path):
    # A pcapng with several interfaces (one per input file) and comments already on some packets.
    merged = tmp_path / "merged.pcapng"
    inputs = [str(devices[n].captures[1]) for n in ("Aria", "HueBridge", "Withings")]
    subprocess.run(["mergecap", "-I", "none", "-w", str(merged), *inputs], check=True, capture_output=True)
    commented = tmp_path / "commented.pcapng"
    notes = ["-a", "2:an analyst's note", "-a", "5:another, with a comma"]
    subprocess.run(["editcap", *notes, str(merged), str(commented)], check=True, capture_output=True)
    old = comments_of(commented)
    assert old == {2: "an analyst's note", 5: "another, with a comma"}
    frames = [p.frame for p in read_packets(commented)]
    rows = [r for r in seeded_rows(frames, seed=3) if r[0] not in (2, 5)] + [(2, 0.875, "cam")]
    out = tmp_path / "scored.pcapng"
    write_commented_pcapng(commented, out, rows)
    check_copy(commented, out, rows, old_comments=old)
    ifaces = tshark_fields(out, "frame.interface_id")
    assert {i for (i,) in ifaces} == {"0", "1", "2"}


def test_nanosecond_pcap(pcap, tmp_path):
    nano = tmp_path / "nano.pcap"
    subprocess.run(["editcap", "-F", "nsecpcap", str(pcap), str(nano)], check=True, capture_output=True)
    assert nano.read_bytes()[:4] == b"\x4d\x3c\xb2\xa1"
    rows = seeded_rows([p.frame for p in read_packets(nano)], seed=4)
    out = tmp_path / "scored.pcapng"
    write_commented_pcapng(nano, out, rows)
    check_copy(nano, out, rows)


def test_other_formats_go_through_editcap(pcap, tmp_path):
    compressed = tmp_path / "cap.pcap.gz"
    compressed.write_bytes(gzip.compress(pcap.read_bytes()))
    rows = seeded_rows([p.frame for p in read_packets(pcap)], seed=5)
    out = tmp_path / "scored.pcapng"
    write_commented_pcapng(compressed, out, rows)
    check_copy(pcap, out, rows)


def test_frames_beyond_the_capture_are_refused(pcap, tmp_path):
    count = len(list(read_packets(pcap)))
    out = tmp_path / "scored.pcapng"
    with pytest.raises(AnnotateError, match=f"beyond the {count} frames"):
        write_commented_pcapng(pcap, out, [(1, 0.5, "a"), (count + 1, 0.5, "a")])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "content", [b"", b"frame,score,target\n", b"\xd4\xc3\xb2\xa1\x02\x00", b"\n\r\r\n\x1c\x00\x00\x00junk"]
)
def test_not_a_capture_is_one_line(tmp_path, content):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    out = tmp_path / "scored.pcapng"
    with pytest.raises(AnnotateError) as err:
        write_commented_pcapng(bad, out, [(1, 0.5, "a")])
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_truncated_capture_is_refused(pcap, tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(pcap.read_bytes()[:-7])
    with pytest.raises(AnnotateError, match="cut short"):
        write_commented_pcapng(cut, tmp_path / "scored.pcapng", [(1, 0.5, "a")])


def test_missing_capture(tmp_path):
    with pytest.raises(AnnotateError, match="No such file"):
        write_commented_pcapng(tmp_path / "nowhere.pcap", tmp_path / "o.pcapng", [])


@pytest.fixture(scope="module")
def whole_data_set(devices, tmp_path_factory):
    """Every capture of the 23 devices, one after the other, as mergecap writes them: 174,822 frames."""
    out = tmp_path_factory.mktemp("annotate-all") / "all.pcapng"
    paths = [str(p) for d in devices.values() for p in d.captures]
    subprocess.run(["mergecap", "-a", "-w", str(out), *paths], check=True, capture_output=True)
    return out


def test_whole_data_set_with_more_comments_than_editcap_can_take(whole_data_set, tmp_path):
    rows = seeded_rows(range(1, 174_823), seed=23, share=0.5)
    assert len(rows) > 60_000
    out = tmp_path / "all.scored.pcapng"
    write_commented_pcapng(whole_data_set, out, rows)
    comments = comments_of(out)
    assert len(comments) == len(rows)
    for frame, score, target in rows:
        assert comments[frame] == comment_text(score, target), frame
    count = subprocess.run(["capinfos", "-c", "-M", "-T", "-r", str(out)], capture_output=True, text=True)
    assert count.stdout.split("\t")[-1].strip() == "174822"


def test_sidecar_names_its_capture_and_old_sidecars_still_read(tmp_path):
    from tool.sidecar import CaptureIdentity, sidecar_identity

    demo = ROOT / "examples" / "demo.pcapng"
    identity = CaptureIdentity.of(demo)
    times = [p.time for p in read_packets(demo)]
    assert identity == CaptureIdentity(len(times), tuple(times[:3]), "demo.pcapng")
    path = tmp_path / "s.csv"
    write_sidecar(path, [(1, 0.25, "cam", 0.5)], identity)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith(f"#deepnetprint frames={len(times)} first=") and lines[1] == ",".join(
        SIDECAR_HEADER
    )
    assert sidecar_identity(path) == identity
    assert read_sidecar(path) == read_sidecar(path, identity) == {1: (0.25, "cam", 0.5, False)}
    # Another capture's sidecar is refused, in one line that says whose it is.
    other = CaptureIdentity.of(ROOT / "examples" / "enroll-camera.pcap")
    with pytest.raises(ValueError, match=r"the scores of demo\.pcapng, not of enroll-camera\.pcap: .*frames"):
        read_sidecar(path, other)
    # A sidecar without an identity (older dnp-scan, either header) reads, unchecked.
    for header in ("frame,score,target", "frame,score,target,host_match"):
        old = tmp_path / "old.csv"
        old.write_text(header + "\n7,0.5,cam" + ",0.25" * header.endswith("match") + "\n", encoding="utf-8")
        assert sidecar_identity(old) is None
        assert read_sidecar(old, other)[7][:2] == (0.5, "cam")
    # A bad row is still reported at its line in the file, the identity line counted.
    path.write_text(lines[0] + "\n" + lines[1] + "\n1,nan,cam,,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: score"):
        read_sidecar(path)
