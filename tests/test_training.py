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


def test_dnp_train_refuses_unseen_devices(data_dir, tmp_path):
    # Training may read the seen devices only (EVALUATION.md).
    done = CliRunner().invoke(
        main, ["--data", str(data_dir), "--out", str(tmp_path), "--devices", "iKettle2"]
    )
    assert done.exit_code == 2 and "not seen devices: iKettle2" in done.output
    assert not any(tmp_path.iterdir())


def test_dnp_train_builds_the_2d_convlstm(data_dir, tmp_path):
    # The paper's 2-D ConvLSTM ablation: it must train, export, and agree with torch in onnxruntime.
    out = tmp_path / "models"
    args = ["--data", str(data_dir), "--out", str(out), "--devices", "Aria,Lightify"]
    args += ["--ae-steps", "3", "--proto-steps", "3", "--conv", "2d"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["conv"] == "2d" and manifest["onnx_max_abs_diff"] < 1e-4
    assert Model.load(out).embed(["DNS\tStandard query 0xID A example.com"], [80]).shape == (1, 64)


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
    from export.calibrate import cv_host_scores
    from export.train import CV_FOLDS

    folds = tmp_path / "folds"
    args = ["--data", str(data_dir), "--cv", "--fold-models", str(folds)]
    done = CliRunner().invoke(main, [*args, "--ae-steps", "2", "--proto-steps", "2"])
    assert done.exit_code == 0, done.output
    held = [json.loads((folds / f"fold{i}" / "manifest.json").read_text())["held_out"] for i in (1, 2, 3)]
    assert held == [list(f) for f in CV_FOLDS]
    scores, positive, correct = cv_host_scores(folds, str(data_dir))["first20"]
    # Each seen device is held out once: its 9 dev captures 2-10 are its positives, one per capture.
    assert int(positive.sum()) == 12 * 9 and len(correct) == 12 * 9
    assert len(scores) == len(positive) and len(scores) % 4 == 0  # 4 held-out fingerprints per host
    assert ((scores >= 0) & (scores <= 1)).all()
