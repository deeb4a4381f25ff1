"""Export a trained DeepNetPrint network to the ONNX files the runtime (tool/model.py) loads.

encoder.onnx: `bytes` [N, L] int64 -> `embedding` [N, D] float32 (dynamic N).
head.onnx: `support` [S, D] float32 -> `prototype` [D], `scale` [] (dynamic S).
The TorchScript exporter (dynamo=False) at opset 17 writes one self-contained file per model; the
dynamo exporter wrote invalid models at opset 17 and separate .data files by default.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from export.model import DeepNetPrint, ExportEncoder, ExportHead, InferenceEncoder, LexicalChannel
from tool.constants import PACKETS

OPSET = 17


def export_onnx(net: DeepNetPrint, out: Path, lexical: LexicalChannel | None = None) -> dict[str, str]:
    """Write encoder.onnx (with the lexical channel, if given) and head.onnx into `out`, check them;
    {file name: sha256}."""
    import onnx

    out.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    # Without the channel the encoder is the learnt one alone, whatever the config's lexical_dim.
    cfg = lexical.cfg if lexical is not None else replace(net.cfg, lexical_dim=0)
    ids = torch.randint(1, 128, (3, cfg.max_len), dtype=torch.int64)
    support = torch.randn(PACKETS, cfg.output_dim)
    # The 1-D ConvLSTM in the layout that runs faster; check_against_torch compares it with the
    # reference ExportEncoder (the 2-D one is exported as it is).
    layout = InferenceEncoder if InferenceEncoder.lays_out(net.cfg) else ExportEncoder
    encoder = layout(net, lexical)
    jobs = [
        ("encoder.onnx", encoder, (ids,), ["bytes"], ["embedding"], {"bytes": {0: "n"}}),
        (
            "head.onnx",
            ExportHead(net),
            (support,),
            ["support"],
            ["prototype", "scale"],
            {"support": {0: "s"}},
        ),
    ]
    hashes = {}
    for name, module, args, inputs, outputs, axes in jobs:
        path = out / name
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript tracer warnings about the python loop
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes={**axes, **({"embedding": {0: "n"}} if name == "encoder.onnx" else {})},
                opset_version=OPSET,
                dynamo=False,
            )
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def check_against_torch(
    net: DeepNetPrint, out: Path, ids: np.ndarray, lexical: LexicalChannel | None = None
) -> float:
    """Largest absolute difference between torch and onnxruntime on these inputs (embed + head)."""
    import onnxruntime as ort

    net = net.eval()
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(out / "head.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = ExportEncoder(net, lexical)(torch.from_numpy(ids)).numpy()
        got = enc.run(None, {"bytes": ids})[0]
        support = want[:PACKETS] if len(want) >= PACKETS else np.resize(want, (PACKETS, want.shape[1]))
        proto = net.proto(torch.from_numpy(support)[None])[0].numpy()
        got_proto, scale = head.run(None, {"support": support.astype(np.float32)})
    return float(
        max(
            np.abs(want - got).max(),
            np.abs(proto - got_proto).max(),
            abs(float(scale) - float(net.log_scale.detach().exp())),
        )
    )
