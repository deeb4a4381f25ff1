"""The shipped model set (models/) through tool/model.py: loads, checks its hashes, tells devices apart,
and computes what torch computes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from tool.evaluation.dataset import device_packets
from tool.model import Model, ModelError, encode_bytes, model_input, models_dir
from tool.text import packet_text


@pytest.fixture(scope="module")
def model() -> Model:
    return Model.load()


@pytest.fixture(scope="module")
def packets(devices):
    # Captures 1 and 2 of four seen devices: enough to enroll and to test, and a short cold read.
    chosen = [devices[n] for n in ("HueBridge", "Aria", "D-LinkCam", "WeMoLink")]
    return device_packets([replace(d, captures=d.captures[:2]) for d in chosen])


def _embed(model: Model, packets) -> np.ndarray:
    return model.embed([packet_text(p.protocol, p.info) for p in packets], [p.length for p in packets])


def test_shipped_model_loads_and_gives_probabilities(model, packets):
    assert model.directory == models_dir()
    assert len(model.encoder_sha256) == 64 and len(model.head_sha256) == 64
    hue = packets["HueBridge"]
    support = _embed(model, hue.enrollment(20))
    assert support.shape == (20, model.embedding_dim) and support.dtype == np.float32
    proto = model.prototype(support)
    assert proto.shape == (model.embedding_dim,)
    queries = _embed(model, hue.per_capture[1][:50] + packets["Aria"].per_capture[1][:50])
    p = model.match(queries, np.stack([proto, model.prototype(_embed(model, packets["Aria"].enrollment()))]))
    assert p.shape == (len(queries), 2) and p.dtype == np.float32
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    # The key is what embed() reads: the same key gives the same embedding.
    t, n = hue.per_capture[1][0].protocol, hue.per_capture[1][0].length
    text = packet_text(t, hue.per_capture[1][0].info)
    assert model.key(text, n) == model.key(text, n)
    assert (model.key(text, n) == model.key(text, n + 1)) == (not model.uses_length)


def test_same_device_capture_scores_higher_than_other_devices(model, packets):
    # The dnp-23 capture score (mean p over a capture's first 20 packets) on a later capture.
    names = list(packets)
    protos = np.stack([model.prototype(_embed(model, packets[n].enrollment(20))) for n in names])
    for i, name in enumerate(names):
        score = model.match(_embed(model, packets[name].per_capture[1][:20]), protos).mean(0)
        assert score.argmax() == i, (name, dict(zip(names, score.round(3))))
        assert score[i] > 0.5


def test_embedding_is_batch_independent(model, packets):
    ps = packets["WeMoLink"].per_capture[0][:300]
    whole = _embed(model, ps)
    one_by_one = np.concatenate([_embed(model, [p]) for p in ps[:5]])
    np.testing.assert_allclose(whole[:5], one_by_one, atol=1e-5)


def test_damaged_or_missing_files_give_one_line_model_error(tmp_path):
    good = tmp_path / "good"
    shutil.copytree(models_dir(), good, ignore=shutil.ignore_patterns("__pycache__"))
    Model.load(good)

    damaged = tmp_path / "damaged"
    shutil.copytree(good, damaged)
    blob = bytearray((damaged / "encoder.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (damaged / "encoder.onnx").write_bytes(bytes(blob))

    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    (missing / "head.onnx").unlink()

    empty = tmp_path / "empty"
    empty.mkdir()

    garbled = tmp_path / "garbled"
    shutil.copytree(good, garbled)
    (garbled / "manifest.json").write_text("{not json")

    for folder, words in [
        (damaged, "sha256"),
        (missing, "missing"),
        (empty, "manifest"),
        (garbled, "manifest"),
    ]:
        with pytest.raises(ModelError) as err:
            Model.load(folder)
        message = str(err.value)
        assert "\n" not in message and words in message and str(folder) in message


@pytest.mark.parametrize("readout", ["all", "last"])
def test_the_exported_layout_computes_the_reference_encoder(readout):
    # encoder.onnx comes from InferenceEncoder; ExportEncoder, the network as trained, is the reference.
    torch = pytest.importorskip("torch")
    from export.model import Config, DeepNetPrint, ExportEncoder, InferenceEncoder, LexicalChannel

    torch.manual_seed(1)
    cfg = Config(readout=readout, hidden=8, lexical_dim=32, lexical_buckets=1 << 10)
    net = DeepNetPrint(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    lexical = LexicalChannel(cfg, torch.rand(1 << 10) + 1)
    ids = torch.randint(1, 257, (16, cfg.max_len))
    ids[3:, 50:] = 0
    ids[7, 1:] = 0
    with torch.no_grad():
        want = ExportEncoder(net, lexical)(ids)
        got = InferenceEncoder(net, lexical)(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_torch_and_onnxruntime_agree_on_real_packets(tmp_path, packets):
    torch = pytest.importorskip("torch")
    from export.model import Config, DeepNetPrint
    from export.onnx_export import export_onnx

    # A network with every part switched on and non-trivial weights, exported as dnp-train does.
    torch.manual_seed(0)
    cfg = Config(proto_net=True, uses_length=True, readout="all", normalize=True, lexical_dim=0)
    net = DeepNetPrint(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hashes = export_onnx(net, tmp_path)
    manifest = {"format": 1, "files": {k: {"sha256": v} for k, v in hashes.items()}, "config": cfg.to_dict()}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    model = Model.load(tmp_path)

    ps = packets["D-LinkCam"].per_capture[0][:200] + packets["HueBridge"].per_capture[0][:100]
    texts = [packet_text(p.protocol, p.info) for p in ps]
    lengths = [p.length for p in ps]
    got = model.embed(texts, lengths)
    ids = torch.from_numpy(
        encode_bytes([model_input(t, n, True) for t, n in zip(texts, lengths)], cfg.max_len)
    )
    with torch.no_grad():
        want = net.embedding(ids)
        want_protos = torch.stack([net.proto(want[i : i + 20][None])[0] for i in (0, 200)])
        want_p = net.match(want, want_protos).numpy()
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    protos = np.stack([model.prototype(got[i : i + 20]) for i in (0, 200)])
    np.testing.assert_allclose(protos, want_protos.numpy(), atol=1e-4)
    np.testing.assert_allclose(model.match(got, protos), want_p, atol=1e-4)


def test_an_ensemble_of_the_model_with_itself_scores_as_the_model(model, tmp_path):
    """export.ensemble (a model card row): the members' embeddings side by side, so that dot products
    are the mean of the members' cosines; the model twice over is the model."""
    pytest.importorskip("onnx")
    from export.ensemble import ensemble

    ensemble([models_dir(), models_dir()], tmp_path / "twice")
    twice = Model.load(tmp_path / "twice")
    texts = [
        packet_text("ARP", "Who has 10.0.0.1? Tell 10.0.0.7"),
        packet_text("DNS", "Standard query 0x1 A a.b"),
    ]
    one, two = model.embed(texts, [60, 74]), twice.embed(texts, [60, 74])
    assert two.shape == (2, 2 * model.embedding_dim)
    np.testing.assert_allclose(two @ two.T, one @ one.T, atol=1e-5)
    assert twice.scale == pytest.approx(model.scale)


def test_the_dissected_fields_reach_the_model_only_where_its_manifest_says(model, packets, tmp_path):
    """config.fields (a model trained with --fields) puts tool.text.field_tag's tag in every text the
    runtime encodes, fingerprints and scans alike; the shipped manifest does not set it."""
    from tool.fingerprint import Fingerprint
    from tool.scores import score_packets
    from tool.text import text_of

    assert "fields" not in model.manifest["config"] and not model.fields
    shutil.copytree(models_dir(), tmp_path / "fields", ignore=shutil.ignore_patterns("__pycache__"))
    manifest = json.loads((tmp_path / "fields" / "manifest.json").read_text())
    manifest["config"]["fields"] = True
    (tmp_path / "fields" / "manifest.json").write_text(json.dumps(manifest))
    tagged = Model.load(tmp_path / "fields")
    assert tagged.fields

    hue = packets["HueBridge"]
    dhcp = [p for p in hue.per_capture[1] if p.dhcp_prl]
    assert dhcp
    support = hue.enrollment(20)
    plain_fp = Fingerprint.from_packets(model, support, "HueBridge")
    tagged_fp = Fingerprint.from_packets(tagged, support, "HueBridge")
    assert [s.text for s in plain_fp.support] == [packet_text(p.protocol, p.info) for p in support]
    assert [s.text for s in tagged_fp.support] == [text_of(p, True) for p in support]
    assert any("{prl=1,3,6,12,15,28,42 vc=udhcp 1.19.4} " in s.text for s in tagged_fp.support)

    queries = hue.per_capture[1][:40] + dhcp
    want = tagged.match(
        tagged.embed([text_of(p, True) for p in queries], [p.length for p in queries]),
        np.asarray([tagged_fp.prototype], dtype=np.float32),
    )
    got = score_packets(tagged, queries, [tagged_fp])
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Against the same prototype: packets without a tag read the same text either way, the others not.
    plain = score_packets(model, queries, [tagged_fp])
    tagged_query = np.asarray([text_of(p, True) != packet_text(p.protocol, p.info) for p in queries])
    np.testing.assert_allclose(got[~tagged_query], plain[~tagged_query], atol=1e-6)
    assert not np.allclose(got[tagged_query], plain[tagged_query], atol=1e-6)
