"""dnp-eval on real captures: the protocol's split, the JSON report's schema, the baselines, errors."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import run_command
from tool.evaluation.baselines import (
    SENTINEL_FEATURES,
    evaluate_ngram,
    evaluate_sentinel,
    ngram_fit_texts,
    sentinel_features,
    sentinel_fingerprint,
    sentinel_packets,
)
from tool.evaluation.protocol import load_protocol, summarise
from tool.model import MANIFEST, models_dir

# Seen and unseen devices, two same-vendor pairs among them, and one that enrolls across captures.
CHOSEN = ("Aria", "SmarterCoffee", "iKettle2", "TP-LinkPlugHS100", "TP-LinkPlugHS110")
SPLITS = {"Aria": "seen", "SmarterCoffee": "seen", "iKettle2": "unseen", "TP-LinkPlugHS100": "seen"}
SPLITS["TP-LinkPlugHS110"] = "unseen"


@pytest.fixture(scope="module")
def small_data(data_dir, tmp_path_factory):
    """A data folder of symlinks to five device folders of the real data set."""
    root = tmp_path_factory.mktemp("dnp23-small")
    for name in CHOSEN:
        (root / name).symlink_to(data_dir / name, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def protocol(small_data):
    return load_protocol(small_data)


def _in_unit(x) -> bool:
    return isinstance(x, float | int) and 0.0 <= x <= 1.0


def check_schema(report: dict, devices: dict[str, str], captures: int, packet_scores: bool = True) -> None:
    """The keys EVALUATION.md lists, with numbers in [0, 1]."""
    assert report["protocol"] == "dnp-23"
    assert isinstance(report["models"], dict)
    for key in ("capture_top1", "brand_top1", "packet_auc", "packet_balanced_accuracy"):
        assert set(report[key]) >= {"all", "seen", "unseen"}, key
        for split, value in report[key].items():
            assert (
                _in_unit(value) if packet_scores or key in ("capture_top1", "brand_top1") else value is None
            ), (
                key,
                split,
                value,
            )
    assert _in_unit(report["single_packet_top1"]["all"]) if packet_scores else True
    assert report["brand_top1"]["all"] >= report["capture_top1"]["all"]
    assert report["captures"]["all"] == captures
    assert set(report["per_device"]) == set(devices)
    for name, entry in report["per_device"].items():
        assert entry["split"] == devices[name]
        assert entry["captures"] == captures // len(devices)
        assert _in_unit(entry["capture_top1"])
        if packet_scores:
            assert _in_unit(entry["packet_auc"])
    close = report["close_calls"]
    assert 0 <= close["margin_under_0.001"] <= close["margin_under_0.01"] <= captures
    wrong = sum(c["count"] for c in report["confusions"])
    assert wrong == round(captures * (1 - report["capture_top1"]["all"]))
    for c in report["confusions"]:
        assert c["true"] in devices and c["predicted"] in devices and c["true"] != c["predicted"]
        assert c["count"] >= 1
    if packet_scores:  # what dnp-scan does, one fingerprint against many hosts (EVALUATION.md 5-8)
        for key in ("host_rank1", "host_auc"):
            assert set(report[key]) >= {"all", "seen", "unseen"} and _in_unit(report[key]["all"]), key
        assert _in_unit(report["self_rank1"])
        assert _in_unit(report["verdict"]["false_match_rate"]) and _in_unit(report["verdict"]["miss_rate"])


def test_protocol_enrolls_from_the_first_capture_and_tests_captures_11_to_20(protocol, devices):
    assert protocol.names == sorted(CHOSEN)
    assert protocol.splits == SPLITS
    assert len(protocol.tests) == 50
    for name in CHOSEN:
        mine = [t.path.name for t in protocol.tests if t.device == name]
        assert mine == [c.name for c in devices[name].captures[10:20]]
        assert len(protocol.enrollment[name]) == 20
    # SmarterCoffee sends 9 packets in capture 1: its enrollment continues into captures 2 and 3.
    coffee = protocol.packets["SmarterCoffee"].per_capture
    assert protocol.enrollment["SmarterCoffee"] == coffee[0] + coffee[1] + coffee[2][: 20 - 18]
    assert protocol.enrollment["Aria"] == protocol.packets["Aria"].per_capture[0][:20]
    mac = devices["Aria"].mac
    assert all(p.eth_src == mac for t in protocol.tests if t.device == "Aria" for p in t.packets)


def test_small_folder_is_tested_on_the_captures_after_enrollment(devices, tmp_path):
    # Four captures of SmarterCoffee: enrollment reads captures 1-3, the test is capture 4 alone;
    # four captures of Aria: enrollment reads capture 1, the test is captures 2-4.
    for name in ("SmarterCoffee", "Aria"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "_iotdevice-mac.txt").write_text(devices[name].mac)
        for capture in devices[name].captures[:4]:
            (folder / capture.name).symlink_to(capture)
    data = load_protocol(tmp_path)
    tested = {
        name: [t.path.name for t in data.tests if t.device == name] for name in ("SmarterCoffee", "Aria")
    }
    assert tested["SmarterCoffee"] == [devices["SmarterCoffee"].captures[3].name]
    assert tested["Aria"] == [c.name for c in devices["Aria"].captures[1:4]]
    assert len(data.development["SmarterCoffee"]) == 3 and len(data.development["Aria"]) == 1


def test_ngram_baseline_end_to_end(protocol):
    report = summarise(evaluate_ngram(protocol))
    check_schema(report, SPLITS, 50)
    assert report["models"] == {}
    assert report["test_packets"] == sum(len(t.packets) for t in protocol.tests)
    # Aria's traffic is like no other of these five: every test capture must find it, though many
    # of its packets (DHCP, ARP) are like everyone's.
    assert report["per_device"]["Aria"]["capture_top1"] == 1.0
    assert report["per_device"]["Aria"]["packet_auc"] > 0.6
    # The idf is fitted on the seen devices' development half only.
    seen_dev = sum(len(c) for n, s in SPLITS.items() if s == "seen" for c in protocol.development[n])
    assert len(ngram_fit_texts(protocol)) == seen_dev
    assert report["notes"]["idf_fitted_on"].startswith(f"{seen_dev} packets")


def test_sentinel_features_and_fingerprint(protocol, devices):
    path = devices["Aria"].captures[0]
    own = [p for p in sentinel_packets([path])[path] if p.eth_src == devices["Aria"].mac]
    features = sentinel_features(own)
    assert features.shape == (len(own), len(SENTINEL_FEATURES)) == (len(own), 23)
    size = SENTINEL_FEATURES.index("Size")
    assert list(features[:, size]) == [p.length for p in protocol.packets["Aria"].per_capture[0]]
    # The first packets of a setup are DHCP over UDP from port 68 (well-known) to 67.
    dhcp = [i for i, p in enumerate(own) if "dhcp" in p.protocols]
    assert dhcp, "Aria's setup starts with DHCP"
    row = features[dhcp[0]]
    assert row[SENTINEL_FEATURES.index("UDP")] == 1 and row[SENTINEL_FEATURES.index("BOOTP")] == 1
    assert row[SENTINEL_FEATURES.index("SourcePortClass")] == 1
    fingerprint = sentinel_fingerprint(features)
    assert fingerprint.shape == (276,)
    rows = fingerprint.reshape(12, 23)
    nonzero = [tuple(r) for r in rows if r.any()]
    assert len(set(nonzero)) == len(nonzero)  # distinct packet vectors only


def test_sentinel_baseline_end_to_end(protocol):
    ev = evaluate_sentinel(protocol)
    report = summarise(ev)
    check_schema(report, SPLITS, 50, packet_scores=False)
    votes = report["notes"]["votes"]
    assert votes["one_vote"] + votes["several_votes"] + votes["no_vote"] == 50
    assert report["per_device"]["Aria"]["capture_top1"] == 1.0


def test_dnp_eval_reports_the_shipped_model(small_data, clean_env, tmp_path):
    if not (models_dir() / MANIFEST).is_file():
        pytest.skip(f"no shipped model in {models_dir()} yet: dnp-train writes it")
    out = tmp_path / "report.json"
    done = run_command(
        "dnp-eval", "--data", str(small_data), "--json", str(out), "--plot", str(tmp_path / "fig"),
        "--baselines", env=clean_env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    check_schema(report, SPLITS, 50)
    assert set(report["models"]) >= {"encoder.onnx", "head.onnx"}
    assert all(len(h) == 64 for h in report["models"].values())
    check_schema(report["baselines"]["ngram"], SPLITS, 50)
    check_schema(report["baselines"]["iot_sentinel"], SPLITS, 50, packet_scores=False)
    assert sorted(os.listdir(tmp_path / "fig")) == [
        "confusion-deepnetprint.png",
        "confusion-iot_sentinel.png",
        "confusion-ngram.png",
        "curves.png",
        "det.png",
        "per_device.png",
        "roc.png",
    ]
    for n in ("5", "10", "20", "50", "100"):
        assert set(report["curves"]["enroll_packets"][n]) == {"capture_top1", "host_rank1"}
    assert list(report["curves"]["query_packets"]) == ["1", "5", "20", "50", "all"]
    # The tables name every device and mark its split.
    for name, split in SPLITS.items():
        assert any(name in line and split in line for line in done.stdout.splitlines()), name
    # Piped, the prose between the tables is wrapped: no line of 280 characters in a mail or a log.
    prose = [line for line in done.stdout.splitlines() if not line.lstrip().startswith(("|", "+", "-"))]
    assert max(len(line.rstrip()) for line in prose) <= 120, max(prose, key=len)
    # --json - prints the report alone: it parses as JSON.
    piped = run_command("dnp-eval", "--data", str(small_data), "--json", "-", env=clean_env, timeout=600)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["capture_top1"] == report["capture_top1"]


def test_dnp_eval_missing_data_folder_is_one_line_and_exit_2(tmp_path, clean_env):
    done = run_command("dnp-eval", "--data", str(tmp_path / "nowhere"), env=clean_env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "nowhere" in done.stderr


def test_dnp_eval_folder_without_devices_is_one_line_and_exit_2(tmp_path, clean_env):
    (tmp_path / "empty").mkdir()
    done = run_command("dnp-eval", "--data", str(tmp_path / "empty"), env=clean_env)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "no device folders" in done.stderr


def test_dnp_eval_missing_models_is_one_line_and_exit_2(tmp_path, clean_env):
    done = run_command("dnp-eval", "--models", str(tmp_path), env=clean_env)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "manifest" in done.stderr


# lab2: three of uclouvain-boot's devices, two of one brand (EVALUATION.md, protocol lab2).
LAB2_CHOSEN = ("TapoLight", "TapoPlug", "TuyaPlug")


@pytest.fixture(scope="module")
def lab2_small(tmp_path_factory):
    from tool.evaluation.dataset import default_data_dir

    lab2 = default_data_dir("lab2")
    if not lab2.is_dir():
        pytest.fail(f"the uclouvain-boot data set is missing at {lab2}")
    root = tmp_path_factory.mktemp("lab2-small")
    for name in LAB2_CHOSEN:
        (root / name).symlink_to(lab2 / name, target_is_directory=True)
    return root


def test_lab2_protocol_reads_boots_in_order_with_its_brands_and_router(lab2_small):
    from tool.evaluation.dataset import UCLOUVAIN_BOOT, brand, lab_of

    assert lab_of(lab2_small) is UCLOUVAIN_BOOT  # found by its captures' names, boot-NN
    data = load_protocol(lab2_small)
    assert data.lab.protocol == "lab2" and data.lab.router == "c0:56:27:38:8f:8c"
    assert data.splits == {name: "unseen" for name in LAB2_CHOSEN}
    assert [c.name for c in data.devices[0].captures] == [f"boot-{i:02d}.pcap" for i in range(1, 21)]
    for name in LAB2_CHOSEN:
        assert [t.path.name for t in data.tests if t.device == name] == [
            f"boot-{i}.pcap" for i in range(11, 21)
        ]
        assert data.enrollment[name] == data.packets[name].per_capture[0][:20]
    dev = load_protocol(lab2_small, half="dev")
    assert {t.path.name for t in dev.tests} == {f"boot-{i:02d}.pcap" for i in range(2, 11)}
    assert [brand(n) for n in LAB2_CHOSEN] == ["TP-Link", "TP-Link", "Tuya"]
    # No device of lab2 is seen by training: the n-gram's idf is fitted on the fingerprints.
    assert len(ngram_fit_texts(data)) == 60
    report = summarise(evaluate_ngram(data))
    assert report["protocol"] == "lab2"
    assert report["captures"] == {"all": 30, "seen": 0, "unseen": 30}
    assert report["capture_top1"]["seen"] is None and _in_unit(report["capture_top1"]["unseen"])
    assert _in_unit(report["host_rank1"]["all"]) and report["self_rank1"] == 1.0


def test_dnp_eval_runs_lab2_with_the_ngram_beside_it(lab2_small, clean_env):
    if not (models_dir() / MANIFEST).is_file():
        pytest.skip(f"no shipped model in {models_dir()} yet: dnp-train writes it")
    args = ("--protocol", "lab2", "--data", str(lab2_small), "--baselines", "--json", "-")
    done = run_command("dnp-eval", *args, env=clean_env, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["protocol"] == "lab2" and report["lab"] == "uclouvain-boot"
    assert report["baselines"]["ngram"]["protocol"] == "lab2"
    for r in (report, report["baselines"]["ngram"]):
        assert r["captures"]["all"] == 30
        assert _in_unit(r["capture_top1"]["all"]) and _in_unit(r["host_rank1"]["all"])


def test_dnp_eval_wire_never_names_the_router(lab2_small, clean_env, tmp_path):
    """EVALUATION.md's every host on the wire: each test position's merge holds the router, which
    must get no verdict at the default or at any other rate."""
    out = tmp_path / "r.json"
    args = ("--protocol", "lab2", "--data", str(lab2_small), "--wire", "--json", str(out))
    done = run_command("dnp-eval", *args, env=clean_env, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "Every host on the wire: 10 merges" in done.stdout
    wire = json.loads(out.read_text())["wire"]
    for figures in (wire["default"], *wire["rates"].values()):
        assert figures["merges"] == 10 and figures["device_hosts"] == 30
        assert figures["router_verdicts"] == 0
        assert _in_unit(figures["own_verdicts"]) and _in_unit(figures["measured_false_match_rate"])
    # A looser rule names at least as many devices as themselves.
    owns = [wire["rates"][r]["own_verdicts"] for r in sorted(wire["rates"], key=float)]
    assert owns == sorted(owns)
