"""tool.evaluation.ceiling: the separability of same-vendor devices' first 20 packets, without a model."""

from __future__ import annotations

from collections import Counter

from click.testing import CliRunner

from tool.evaluation.ceiling import enroll_accuracy, main, oracle_accuracy, vote


def c(*pairs: tuple[int, str]) -> Counter:
    return Counter(pairs)


ARP, DHCP, HTTP_A, HTTP_B = (42, "ARP\tx"), (590, "DHCP\ty"), (203, "HTTP\tGET /a"), (203, "HTTP\tGET /b")


def test_vote_splits_ties():
    assert vote({"a": 3, "b": 1}, "a") == 1.0
    assert vote({"a": 3, "b": 1}, "b") == 0.0
    assert vote({"a": 2, "b": 2, "c": 2}, "c") == 1 / 3


def test_identical_devices_are_a_coin():
    same = [c(ARP, DHCP)] * 4
    assert enroll_accuracy({"a": same, "b": same}) == 0.5
    assert oracle_accuracy({"a": same, "b": same}) == 0.5


def test_one_distinct_packet_separates_them():
    a = [c(ARP, DHCP, HTTP_A)] * 3
    b = [c(ARP, DHCP, HTTP_B)] * 3
    assert enroll_accuracy({"a": a, "b": b}) == 1.0
    assert oracle_accuracy({"a": a, "b": b}) == 1.0


def test_enrollment_sees_only_capture_1():
    # b's later captures look like a's reference: one enrollment capture cannot know better.
    a = [c(ARP, HTTP_A)] * 3
    b = [c(ARP, HTTP_B), c(ARP, HTTP_A), c(ARP, HTTP_A)]
    assert enroll_accuracy({"a": a, "b": b}) == 0.5  # a's 2 right, b's 2 wrong
    assert oracle_accuracy({"a": a, "b": b}) < 1.0


def test_on_the_data_set(data_dir):
    done = CliRunner().invoke(main, ["--data", str(data_dir)])
    assert done.exit_code == 0, done.output
    lines = {line.split()[0]: line.split()[-2:] for line in done.output.splitlines()[1:5]}
    assert set(lines) == {"EdimaxPlug1101W", "SmarterCoffee", "TP-LinkPlugHS100", "D-LinkSensor"}
    assert all(0 <= float(x) <= 1 for pair in lines.values() for x in pair)
    assert "ceiling of dnp-23 capture_top1" in done.output
