"""dnp-train on the real data: a short run learns (its losses fall) and writes a model set that loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from export.model import Config  # noqa: E402
from export.train import TrainConfig, main, run  # noqa: E402
from tool.model import Model  # noqa: E402

DEVICES = ["Aria", "HueBridge", "Lightify", "TP-LinkPlugHS100"]


def test_short_training_run_lowers_both_losses(data_dir):
    torch.set_num_threads(1)
    tc = TrainConfig(ae_steps=60, proto_steps=60, ae_batch=32, threads=1)
    _, _, data, result = run(data_dir, DEVICES, None, Config(), tc, seed=0, log=lambda _: None)
    assert sorted(data.captures) == sorted(DEVICES)
    assert all(len(caps) == 10 for caps in data.captures.values())  # the development half only
    ae, proto = result["ae_loss"], result["proto_loss"]
    assert np.mean(ae[-10:]) < 0.8 * np.mean(ae[:10])
    assert np.mean(proto[-10:]) < np.mean(proto[:10])


def test_dnp_train_writes_a_loadable_model_set(data_dir, tmp_path):
    out = tmp_path / "models"
    args = [
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--devices",
        "Aria,Lightify,SmarterCoffee",
        "--ae-steps",
        "5",
        "--proto-steps",
        "5",
        "--threads",
        "1",
        "--proto-net",
        "--lexical-dim",
        "0",
    ]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_data"]["devices"] == ["Aria", "Lightify", "SmarterCoffee"]
    assert manifest["seed"] == 1337 and manifest["config"]["proto_net"] is True
    model = Model.load(out)
    assert model.encoder_sha256 == manifest["files"]["encoder.onnx"]["sha256"]
    e = model.embed(["ARP\tWho has IPV4? Tell IPV4"] * 5, [60] * 5)
    p = model.match(e, model.prototype(e)[None])
    assert p.shape == (5, 1) and np.isfinite(p).all()


def test_dnp_train_refuses_unseen_devices_for_the_paper_model(data_dir, tmp_path):
    # The 12-device (paper) model reads the seen devices only (EVALUATION.md).
    for flag in ("--seen-devices", "--paper"):
        done = CliRunner().invoke(
            main, ["--data", str(data_dir), "--out", str(tmp_path), "--devices", "iKettle2", flag]
        )
        assert done.exit_code == 2 and "not seen devices: iKettle2" in done.output
    assert not any(tmp_path.iterdir())


def test_all_devices_reads_the_development_half_of_unseen_devices(data_dir):
    # A product model may train on captures 1-10 of all 23 devices, never on 11-20.
    tc = TrainConfig(ae_steps=2, proto_steps=2, ae_batch=8)
    names = ["iKettle2", "SmarterCoffee", "D-LinkSensor"]
    _, _, data, _ = run(data_dir, names, None, Config(), tc, seed=0, log=lambda _: None, all_devices=True)
    assert sorted(data.captures) == sorted(names)
    assert all(len(caps) == 10 for caps in data.captures.values())


def test_the_defaults_train_the_set_loss_on_all_23_devices_and_paper_the_12(data_dir, tmp_path):
    from tool.evaluation.dataset import SEEN, UNSEEN

    assert TrainConfig().all_devices and TrainConfig().loss == "set"
    for flags, loss in (([], "set"), (["--paper"], "packet")):
        out = tmp_path / loss
        args = ["--data", str(data_dir), "--out", str(out), "--ae-steps", "1", "--proto-steps", "1", *flags]
        done = CliRunner().invoke(main, args)
        assert done.exit_code == 0, done.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["train"]["loss"] == loss
        devices = sorted(SEEN + UNSEEN) if loss == "set" else list(SEEN)
        assert manifest["training_data"]["devices"] == devices


def test_query_sets_keep_between_min_keep_and_20_packets_in_near_order():
    from export.train import query_set

    tc = TrainConfig(drop_prob=1.0, min_keep=10, jitter=2.0)
    rng = np.random.default_rng(0)
    capture = np.arange(100)
    for _ in range(200):
        q = query_set(capture, tc, rng)
        assert 10 <= len(q) <= 20 and len(set(q)) == len(q)
        assert np.all(np.diff(q) > -3)  # a local reordering, not a shuffle
    short = query_set(np.arange(7), TrainConfig(drop_prob=1.0), rng)
    assert sorted(short) == list(range(7))  # a short host keeps what it has


def test_set_loss_trains_and_separates_the_episode_s_hosts(data_dir):
    # The set loss: supports, query sets from other captures, both softmaxes; it falls in training.
    from export.train import set_episode

    torch.set_num_threads(1)
    tc = TrainConfig(ae_steps=40, proto_steps=60, ae_batch=32, loss="set")
    _, _, data, result = run(data_dir, DEVICES, None, Config(), tc, seed=0, log=lambda _: None)
    episode = set_episode(data, sorted(data.captures), tc, np.random.default_rng(1))
    sup, q_idx, q_set, set_dev, r_idx, r_dev = episode
    assert sup.shape == (4, 20) and list(set_dev) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(q_idx) == len(q_set) and set(q_set) == set(range(8)) and len(r_idx) == len(r_dev)
    proto = result["proto_loss"]
    assert np.mean(proto[-10:]) < np.mean(proto[:10])


def test_set_level_cv_holds_out_every_device_once(data_dir, tmp_path):
    from export.train import CV23_FOLDS
    from tool.evaluation.dataset import SEEN, UNSEEN

    held = [n for fold in CV23_FOLDS for n in fold]
    assert sorted(held) == sorted(SEEN + UNSEEN)  # each of the 23 exactly once
    report = tmp_path / "cv.json"
    args = ["--data", str(data_dir), "--cv", "--ae-steps", "1", "--proto-steps", "1", "--report", str(report)]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert "set_cos" in done.output and "mean_p" in done.output
    cv = json.loads(report.read_text())
    assert sorted(cv["per_device"]["packet_auc"]) == sorted(held)
    for how in ("mean_p", "set_cos"):
        for metric in ("host_rank1", "host_auc", "capture_top1"):
            assert 0 <= cv["summary"][how][metric]["all"] <= 1


def test_dnp_train_builds_the_2d_convlstm(data_dir, tmp_path):
    # The paper's 2-D ConvLSTM ablation: it must train, export, and agree with torch in onnxruntime.
    out = tmp_path / "models"
    args = ["--data", str(data_dir), "--out", str(out), "--devices", "Aria,Lightify"]
    args += ["--ae-steps", "3", "--proto-steps", "3", "--conv", "2d"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["conv"] == "2d" and manifest["onnx_max_abs_diff"] < 1e-4
    assert Model.load(out).embed(["DNS\tStandard query 0xID A example.com"], [80]).shape == (1, 64 + 256)


def test_2d_convlstm_needs_square_chunks():
    with pytest.raises(ValueError, match="square chunk"):
        from export.model import DeepNetPrint

        DeepNetPrint(Config(chunk=8, max_len=128, conv="2d"))


def test_unmasked_training_is_for_validation_only(data_dir, tmp_path):
    # The runtime always masks: a model trained on raw addresses must never be exported.
    for flag in (["--no-mask"], ["--fold-models", str(tmp_path / "folds")]):
        done = CliRunner().invoke(main, ["--data", str(data_dir), "--out", str(tmp_path / "m"), *flag])
        assert done.exit_code == 2 and "go with --cv" in done.output
    assert not any(tmp_path.iterdir())


def test_cv_fold_models_are_calibrated_on_their_held_out_devices(data_dir, tmp_path):
    from export.train import CV23_FOLDS
    from tool.evaluation.calibrate import measure

    folds = tmp_path / "folds"
    args = ["--data", str(data_dir), "--cv", "--fold-models", str(folds)]
    done = CliRunner().invoke(main, [*args, "--ae-steps", "2", "--proto-steps", "2"])
    assert done.exit_code == 0, done.output
    held = [
        json.loads((folds / f"fold{i}" / "manifest.json").read_text())["held_out"] for i in (1, 2, 3, 4, 5)
    ]
    assert held == [list(f) for f in CV23_FOLDS]
    result = measure(folds, str(data_dir), "set")
    # Every device is held out once: 23 fingerprints, each counted only by the fold that never saw it.
    assert result["fingerprints"] == 23
    for rate in result["verdict"].values():
        assert 0 <= rate["false_match_rate"] <= 1 and 0 <= rate["miss_rate"] <= 1
    # Each fold model's cohort is made of its own training devices: never of the ones it holds out.
    for i, fold in enumerate(CV23_FOLDS, 1):
        cohort = json.loads((folds / f"fold{i}" / "cohort.json").read_text())
        assert not set(cohort["devices"]) & set(fold) and len(cohort["devices"]) == 23 - len(fold)


def test_a_product_model_trains_on_both_labs_with_the_lexical_channel(tmp_path):
    # dnp-train --labs: the development half of every device of each lab, one identity per device; the
    # lexical channel widens encoder.onnx, and the cohort then covers both labs' devices.
    from export.cohort import build
    from tool.evaluation.dataset import IOT_SENTINEL, UCLOUVAIN_BOOT

    out = tmp_path / "models"
    args = [
        "--labs",
        "iot-sentinel,uclouvain-boot",
        "--out",
        str(out),
        "--ae-steps",
        "1",
        "--proto-steps",
        "1",
    ]
    done = CliRunner().invoke(main, [*args, "--lexical-dim", "16", "--lexical-buckets", "1024"])
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    trained = manifest["training_data"]
    assert trained["labs"] == {
        "iot-sentinel": sorted(IOT_SENTINEL.devices),
        "uclouvain-boot": sorted(UCLOUVAIN_BOOT.devices),
    }
    assert trained["devices"] == sorted(IOT_SENTINEL.devices + UCLOUVAIN_BOOT.devices)
    assert manifest["config"]["output_dim"] == 80 and manifest["onnx_max_abs_diff"] < 1e-4
    model = Model.load(out)
    assert model.embed(["DNS\tStandard query 0xID A example.com"], [80]).shape == (1, 80)
    cohort = build(str(out), None)
    assert cohort["devices"] == list(IOT_SENTINEL.devices) + list(UCLOUVAIN_BOOT.devices)
    assert len(cohort["embeddings"][0]) == 80
    # --labs is for a product model of whole labs only.
    done = CliRunner().invoke(main, ["--labs", "uclouvain-boot", "--paper", "--out", str(tmp_path / "x")])
    assert done.exit_code == 2 and "--labs" in done.output


def test_other_hosts_are_identities_read_from_the_training_folders_development_half(data_dir, monkeypatch):
    # --other-hosts: every unicast host of the training devices' captures 1-10 that is none of the
    # lab's devices is an identity, its texts masked as the devices' are; nothing else is read.
    from pathlib import Path

    from export.train import is_multicast, load_data, other_host_captures
    from tool.evaluation import dataset
    from tool.model import model_input
    from tool.text import text_of

    read: list[Path] = []
    real = dataset.read_captures

    def recorded(paths, use_cache=True):
        read.extend(Path(p) for p in paths)
        return real(paths, use_cache)

    monkeypatch.setattr(dataset, "read_captures", recorded)
    # The set-up phone is in these folders' captures (and in EdimaxPlug1101W's, not read here), a
    # laptop in MAXGateway's; D-LinkCam's other host is only in its own folder, held out here.
    names = ["D-LinkHomeHub", "EdimaxPlug2101W", "HueBridge", "HueSwitch", "MAXGateway"]
    data = load_data(data_dir, names, True, all_devices=True, other_hosts=True)
    every = {d.name: d for d in dataset.load_devices(data_dir)}
    assert read and set(read) <= {c for n in names for c in every[n].dev_captures}
    phone, laptop = "iot-sentinel:host:38:0b:40:ef:85:41", "iot-sentinel:host:24:77:03:7c:ea:dc"
    assert data.devices == sorted(names) and data.other_hosts == [laptop, phone]
    assert len(data.captures[phone]) == 30  # 36 captures hold it: the cap, spread over the folders
    assert len(data.captures[laptop]) == 10
    macs = {d.mac for d in every.values()}
    for name in data.other_hosts:
        mac = name.removeprefix("iot-sentinel:host:")
        assert mac not in macs and not is_multicast(mac)
        assert all(len(c) >= 10 for c in data.captures[name])
    # The identities' packets are the host's own, and their texts the devices' masked model inputs.
    chosen = [every[n] for n in names]
    hosts = other_host_captures(chosen, macs, "iot-sentinel", 2)
    assert sorted(hosts) == [laptop, phone]
    for name, captures in hosts.items():
        assert all(p.eth_src == name.removeprefix("iot-sentinel:host:") for c in captures for p in c)
        texts = [[data.strings[i] for i in c] for c in data.captures[name]]
        assert texts == [[model_input(text_of(p, False), p.length, True) for p in c] for c in captures]
    assert not any("bc:f5:ac:f4:c0:9d" in n for n in data.captures)  # in D-LinkCam's folder only
    plain = load_data(data_dir, names, True, all_devices=True)
    assert plain.other_hosts == [] and plain.strings == data.strings[: len(plain.strings)]
    assert all(np.array_equal(a, b) for n in names for a, b in zip(plain.captures[n], data.captures[n]))


def test_other_hosts_is_an_option_of_dnp_train_and_crosslab_off_by_default():
    from export import crosslab

    assert TrainConfig().other_hosts is False
    for command in (main, crosslab.main):
        done = CliRunner().invoke(command, ["--help"])
        assert done.exit_code == 0 and "--other-hosts / --no-other-hosts" in done.output
