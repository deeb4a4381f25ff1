"""Several trained models as one model set: `python -m export.ensemble OUT MODEL_DIR MODEL_DIR...`.

encoder.onnx runs every member's encoder on the same `bytes` and concatenates their embeddings,
each on the unit sphere, divided by sqrt(k): a unit vector whose dot product with another is the
mean of the members' cosines. The set score (tool.model.set_similarity), its Chamfer half exactly
and its mean half nearly, is then the mean of the members' set scores, and the runtime, the
fingerprints and the Lua column see one model of k x D dimensions.

head.onnx: the prototype is the mean of the support (the members must use the mean prototype,
not --proto-net) and the match scale the members' mean.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from tool.model import ENCODER, HEAD, MANIFEST, Model


def _encoder(members: list[Path]):  # noqa: ANN202 - an onnx.ModelProto
    import onnx
    from onnx import TensorProto, compose, helper

    first = onnx.load(str(members[0] / ENCODER))
    nodes, inits, outputs = [], [], []
    for i, member in enumerate(members):
        g = compose.add_prefix(onnx.load(str(member / ENCODER)), prefix=f"m{i}_").graph
        nodes.append(helper.make_node("Identity", ["bytes"], [f"m{i}_bytes"]))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        outputs.append(f"m{i}_embedding")
    k = len(members)
    inits.append(helper.make_tensor("ensemble_scale", TensorProto.FLOAT, [], [1.0 / math.sqrt(k)]))
    nodes.append(helper.make_node("Concat", outputs, ["ensemble_cat"], axis=1))
    nodes.append(helper.make_node("Mul", ["ensemble_cat", "ensemble_scale"], ["embedding"]))
    dim = first.graph.output[0].type.tensor_type.shape.dim[1].dim_value * k
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])
    graph = helper.make_graph(nodes, "deepnetprint_ensemble", [first.graph.input[0]], [out], inits)
    model = helper.make_model(graph, opset_imports=first.opset_import, ir_version=first.ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


def _head(dim: int, scale: float, like: Path):  # noqa: ANN202 - an onnx.ModelProto
    import onnx
    from onnx import TensorProto, helper

    first = onnx.load(str(like))
    support = helper.make_tensor_value_info("support", TensorProto.FLOAT, ["s", dim])
    nodes = [
        helper.make_node("ReduceMean", ["support"], ["prototype"], axes=[0], keepdims=0),
        helper.make_node(
            "Constant", [], ["scale"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [scale])
        ),
    ]
    outputs = [
        helper.make_tensor_value_info("prototype", TensorProto.FLOAT, [dim]),
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
    ]
    graph = helper.make_graph(nodes, "deepnetprint_ensemble_head", [support], outputs)
    model = helper.make_model(graph, opset_imports=first.opset_import, ir_version=first.ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


def ensemble(members: list[Path], out: Path) -> dict[str, str]:
    """Write the ensemble of the model sets `members` into `out`; {file name: sha256}."""
    import onnx

    if any(out.resolve() == m.resolve() for m in members):
        raise SystemExit(f"{out}: is one of the members; write the ensemble elsewhere")
    manifests = [json.loads((m / MANIFEST).read_text()) for m in members]
    for m, manifest in zip(members, manifests):
        if manifest["config"].get("proto_net"):
            raise SystemExit(f"{m}: trained with --proto-net; an ensemble needs the mean prototype")
        if manifest["config"]["max_len"] != manifests[0]["config"]["max_len"]:
            raise SystemExit(f"{m}: another max_len than {members[0]}")
    models = [Model.load(m) for m in members]
    dim = sum(m.embedding_dim for m in models)
    out.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, proto in (
        (ENCODER, _encoder(members)),
        (HEAD, _head(dim, float(np.mean([m.scale for m in models])), members[0] / HEAD)),
    ):
        onnx.save(proto, str(out / name))
        hashes[name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    manifest = dict(manifests[0])
    manifest["files"] = {name: {"sha256": h} for name, h in hashes.items()}
    manifest["config"] = dict(manifests[0]["config"], embed_dim=dim)
    if "output_dim" in manifest["config"]:  # a member with the lexical channel: the runtime reads this width
        manifest["config"]["output_dim"] = dim
    manifest["ensemble"] = [
        {"encoder_sha256": m.encoder_sha256, "seed": man.get("seed"), "train": man.get("train")}
        for m, man in zip(models, manifests)
    ]
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return hashes


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit("usage: python -m export.ensemble OUT MODEL_DIR MODEL_DIR...")
    print(ensemble([Path(p) for p in sys.argv[2:]], Path(sys.argv[1])))
