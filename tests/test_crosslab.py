"""The leave-lab-out validation (export.crosslab) and the lexical channel inside encoder.onnx."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from export.model import Config, DeepNetPrint, LexicalChannel, idf_table  # noqa: E402
from tool.model import Model, encode_bytes  # noqa: E402

TEXTS = [
    "60 ARP\tWho has IPV4? Tell IPV4",
    "88 DNS\tStandard query 0xID A connectivity.smartthings.com",
    "76 DNS\tStandard query 0xID A time1.google.com",
]


def test_lexical_channel_weighs_rare_ngrams_and_reads_case_alike():
    cfg = Config(lexical_dim=128, lexical_buckets=1 << 12)
    ids = torch.from_numpy(encode_bytes(TEXTS + [TEXTS[1].upper()], cfg.max_len))
    channel = LexicalChannel(cfg)
    # Documents: the first text alone, then the first two: the smartthings name is the rarer.
    idf = idf_table(channel, ids, [[0], [0, 1]])
    h, ok = channel.hashes(ids)
    arp = channel.buckets(h[0][ok[0]])
    assert torch.all(idf[arp] == idf.min())  # in every document: the lowest weight
    assert idf.max() > idf.min()
    with torch.no_grad():
        v = LexicalChannel(cfg, idf)(ids)
    assert torch.allclose(v.norm(dim=1), torch.ones(4), atol=1e-4)
    assert torch.allclose(v[1], v[3], atol=1e-6)  # the same text in capitals
    assert float(v[1] @ v[2]) > float(v[0] @ v[1])  # two DNS queries share more than DNS and ARP


def test_the_ngram_hash_is_the_polynomial_and_lehmer_steps_it_always_was():
    # The hash as the first models with the channel computed it: their idf tables are indexed by it.
    from export.model import _HASH_BASE, _HASH_MULTIPLIERS, _HASH_PRIME

    cfg = Config(lexical_dim=64, lexical_buckets=1 << 17)
    torch.manual_seed(0)
    ids = torch.randint(1, 257, (6, cfg.max_len))
    ids[1, 40:] = 0
    ids[2, 1:] = 0
    ids[3] = 0
    h, real = LexicalChannel(cfg).hashes(ids)
    for row in range(len(ids)):
        x = [int(b) + 32 if 66 <= b <= 91 else int(b) for b in ids[row]]
        want = set()
        for n in range(cfg.lexical_min_n, cfg.lexical_max_n + 1):
            for i in range(len(x) - n + 1):
                if x[i + n - 1] == 0:
                    continue
                value = 0
                for b in x[i : i + n]:
                    value = value * _HASH_BASE + b
                for m in _HASH_MULTIPLIERS:
                    value = value * m % _HASH_PRIME
                want.add((i, n, value))
        got = {
            (i, cfg.lexical_min_n + j, int(h[row].reshape(cfg.max_len, -1)[i, j]))
            for i in range(cfg.max_len)
            for j in range(cfg.lexical_max_n - cfg.lexical_min_n + 1)
            if real[row].reshape(cfg.max_len, -1)[i, j]
        }
        assert got == want


def test_a_model_with_the_lexical_channel_exports_and_loads_at_its_width(tmp_path):
    from export.onnx_export import check_against_torch, export_onnx

    torch.manual_seed(0)
    cfg = Config(lexical_dim=32, lexical_weight=0.4, lexical_buckets=1 << 10)
    net = DeepNetPrint(replace(cfg, lexical_dim=0))
    lexical = LexicalChannel(cfg, torch.rand(1 << 10) + 1)
    hashes = export_onnx(net, tmp_path, lexical)
    ids = encode_bytes(TEXTS, cfg.max_len)
    assert check_against_torch(net, tmp_path, ids, lexical) < 1e-4
    manifest = {
        "format": 1,
        "files": {name: {"sha256": h} for name, h in hashes.items()},
        "config": cfg.to_dict(),
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    model = Model.load(tmp_path)
    assert model.embedding_dim == 64 + 32
    e = model.embed([t.split(" ", 1)[1] for t in TEXTS], [60, 88, 76])
    assert e.shape == (3, 96) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    # The fused cosine is (1 - w) the learnt one plus w the lexical one.
    learnt, lex = e[:, :64] / np.sqrt(0.6), e[:, 64:] / np.sqrt(0.4)
    assert np.allclose(e @ e.T, 0.6 * learnt @ learnt.T + 0.4 * lex @ lex.T, atol=1e-5)
    assert model.prototype(e[[0, 1, 2, 0, 1]]).shape == (96,)


def test_a_model_without_the_channel_keeps_its_manifest():
    plain = Config(lexical_dim=0).to_dict()  # the paper model's, and every model's before the channel
    assert not any(k.startswith("lexical") or k == "output_dim" for k in plain)
    assert Config(lexical_dim=8).to_dict()["output_dim"] == 72
    assert Config().to_dict()["output_dim"] == 64 + 256  # the shipped recipe carries the channel
    # Likewise the dissected fields' tag: only a model trained with it says so (tool.model.Model.fields).
    assert "fields" not in Config().to_dict() and Config(fields=True).to_dict()["fields"] is True


@pytest.mark.parametrize("fields", [False, True])
def test_crosslab_trains_on_one_lab_and_measures_on_the_other(tmp_path, fields):
    from export.crosslab import main

    report = tmp_path / "crosslab.json"
    args = ["--only", "uclouvain-boot ->", "--ae-steps", "2", "--proto-steps", "2", "--lexical", "0,0.5"]
    args += ["--lexical-dim", "32", "--report", str(report), "--models", str(tmp_path / "m")]
    args += ["--fields"] if fields else []
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    result = json.loads(report.read_text())
    assert [r["lexical_weight"] for r in result["rows"]] == [0.0, 0.5]
    for row in result["rows"]:
        assert row["trial"] == "uclouvain-boot -> iot-sentinel"
        # With --fields, the n-gram of the tagged texts beside the plain one.
        assert ("ngram_fields" in row) == fields
        for who in ("model", "ngram", "ngram_fields")[: 3 if fields else 2]:
            assert 0 <= row[who]["capture_top1"] <= 1 and 0 <= row[who]["host_rank1"] <= 1
            assert row[who]["captures"] > 180  # captures 2-10 of the 23 devices, less enrollment's
    manifest = json.loads(
        (tmp_path / "m" / "uclouvain-boot-to-iot-sentinel" / "lexical0" / "manifest.json").read_text()
    )
    assert sorted(manifest["training_data"]["labs"]) == ["uclouvain-boot"]
    assert manifest["config"].get("fields", False) == fields
    assert len(manifest["training_data"]["labs"]["uclouvain-boot"]) == 10
