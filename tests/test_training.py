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
