"""Reading captures: packet counts as capinfos sees them, pcapng, merged reads, bad files."""

from __future__ import annotations

import re
import subprocess

import pytest

from tool.capture import CaptureError, read_many, read_packets
from tool.evaluation.dataset import device_packets, read_captures


def capinfos_count(path) -> int:
    out = subprocess.run(["capinfos", "-c", str(path)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"Number of packets:\s*(\d+)", out).group(1))


@pytest.fixture(scope="module")
def some_captures(devices):
    return [
        devices[n].captures[i]
        for n, i in (("Aria", 0), ("D-LinkCam", 3), ("HueSwitch", 12), ("iKettle2", 19))
    ]


def test_packet_counts_equal_capinfos(some_captures):
    for path in some_captures:
        packets = list(read_packets(path))
        assert len(packets) == capinfos_count(path)
        assert [p.frame for p in packets] == list(range(1, len(packets) + 1))


def test_pcapng_reads_like_pcap(some_captures, tmp_path):
    source = some_captures[1]
    converted = tmp_path / "cam.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(source), str(converted)], check=True, capture_output=True)
    assert capinfos_count(converted) == capinfos_count(source)
    assert list(read_packets(converted)) == list(read_packets(source))


def test_one_tshark_run_over_many_files_equals_one_run_per_file(some_captures):
    merged = list(read_many(some_captures))
    for index, path in enumerate(some_captures):
        alone = [p for p in read_packets(path)]
        mine = [p for p in merged if p.source == index]
        assert [(p.frame, p.eth_src, p.protocol, p.length) for p in mine] == [
            (p.frame, p.eth_src, p.protocol, p.length) for p in alone
        ]


def test_dataset_reader_selects_the_device_by_mac(devices):
    cam = devices["D-LinkCam"]
    packets = device_packets([cam])["D-LinkCam"]
    assert len(packets.per_capture) == len(cam.captures) == 20
    assert all(p.eth_src == cam.mac for capture in packets.per_capture for p in capture)
    by_filter = list(read_packets(cam.captures[0], f"eth.src == {cam.mac}"))
    assert [p.frame for p in by_filter] == [p.frame for p in packets.per_capture[0]]
    assert len(packets.enrollment(20)) == 20


def test_cache_gives_what_tshark_gives(devices, tmp_path, monkeypatch):
    monkeypatch.setenv("DNP_CACHE", str(tmp_path))
    paths = devices["Withings"].captures[:3]
    cold = read_captures(paths)
    warm = read_captures(paths)
    assert cold == warm
    assert len(list(tmp_path.rglob("*.tsv"))) == 3


def test_not_a_capture(tmp_path):
    bogus = tmp_path / "notes.pcap"
    bogus.write_text("this is not a capture\n" * 20)
    with pytest.raises(CaptureError) as e:
        list(read_packets(bogus))
    assert "\n" not in str(e.value)


def test_empty_file(tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(CaptureError, match="empty"):
        list(read_packets(empty))


def test_truncated_capture_reads_up_to_the_cut_and_warns(some_captures, tmp_path):
    """A capture copied while being written ends mid-packet: its whole packets are kept, with a warning."""
    from tool.capture import CaptureTruncated

    data = some_captures[1].read_bytes()
    whole = list(read_packets(some_captures[1]))
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2 + 7])
    with pytest.warns(CaptureTruncated, match=r"cut short in the middle of a packet after frame \d+") as w:
        packets = list(read_packets(cut))
    assert 0 < len(packets) < len(whole) and packets == whole[: len(packets)]
    assert f"after frame {packets[-1].frame};" in str(w[0].message)


def test_capture_cut_in_its_first_packet_is_an_error(some_captures, tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(some_captures[1].read_bytes()[:30])
    with pytest.raises(CaptureError, match="cut short"):
        list(read_packets(cut))


def test_missing_file(tmp_path):
    with pytest.raises(CaptureError, match="no such file"):
        list(read_packets(tmp_path / "nope.pcap"))


def test_bad_display_filter(some_captures):
    with pytest.raises(CaptureError, match="filter"):
        list(read_packets(some_captures[0], "eth.src ==== nonsense"))


def test_a_capture_of_several_interfaces_is_refused_in_a_merge(devices, tmp_path):
    """read_many tells files apart by interface id, one per file; a file of two interfaces whose
    packets interleave would lend its second id to the next file (the last here has no packets, so
    the ids never run past the files): refused, and dnp-hunt reads such a batch capture by capture."""
    one = devices["Aria"].captures[1]
    two = tmp_path / "two-interfaces.pcapng"
    subprocess.run(["mergecap", "-I", "none", "-F", "pcapng", "-w", str(two), str(one), str(one)], check=True)
    empty = tmp_path / "no-packets.pcap"
    empty.write_bytes(one.read_bytes()[:24])  # a pcap header and nothing after it
    with pytest.raises(CaptureError, match="several interfaces"):
        list(read_many([two, devices["HueBridge"].captures[1], empty]))
