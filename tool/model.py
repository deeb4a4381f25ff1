"""The shipped DeepNetPrint model at run time: onnxruntime + numpy, never torch.

A model set is a folder with `manifest.json`, `encoder.onnx` (packet bytes -> embedding) and
`head.onnx` (support embeddings -> Target prototype, and the match scale). `Model.load` checks
every file against the sha256 the manifest records, so a damaged or mismatched set fails loudly.

    >>> m = Model.load()
    >>> q = m.embed(["ARP\\tWho has IPV4? Tell IPV4"], [60])     # [1, E]
    >>> fp = m.prototype(m.embed(texts, lengths))                 # [E] from 20 support packets
    >>> m.match(q, fp[None])                                      # [1, 1] p(Target)

The Null prototype is the origin of the embedding space (f_phi has no biases), so
p(Target | q) = sigmoid(scale * (|q|^2 - |q - target|^2)).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np

from tool.constants import MIN_PACKETS
from tool.files import sha256_file

MANIFEST = "manifest.json"
ENCODER = "encoder.onnx"
HEAD = "head.onnx"
FORMAT = 1
BATCH = 256


def output_dim(config: dict) -> int:
    """The width of the embedding encoder.onnx gives: manifest config's output_dim where a lexical
    channel widens it (export/model.py), else the learnt embed_dim."""
    return int(config.get("output_dim", config["embed_dim"]))


class ModelError(Exception):
    """A model set that is missing, damaged or does not match its manifest (one-line message)."""


def models_dir() -> Path:
    """$DNP_MODELS, else the installed tool.models package folder, else <repo>/models."""
    env = os.environ.get("DNP_MODELS")
    if env:
        return Path(env)
    try:
        spec = importlib.util.find_spec("tool.models")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "models"


def model_input(text: str, length: int, uses_length: bool) -> str:
    """The string the encoder reads: the packet text, after its frame length when the model uses it."""
    return f"{int(length)} {text}" if uses_length else text


def encode_bytes(strings: Sequence[str], max_len: int) -> np.ndarray:
    """UTF-8 bytes + 1, truncated / zero-padded to max_len: [N, max_len] int64 (0 is padding)."""
    out = np.zeros((len(strings), max_len), dtype=np.int64)
    for i, s in enumerate(strings):
        b = np.frombuffer(s.encode("utf-8")[:max_len], dtype=np.uint8)
        out[i, : len(b)] = b.astype(np.int64) + 1
    return out


class Model:
    """An encoder + head pair checked against its manifest; see the module docstring."""

    directory: Path
    encoder_sha256: str
    head_sha256: str
    embedding_dim: int
    uses_length: bool
    max_len: int
    fields: bool
    manifest: dict

    def __init__(self, directory: Path, manifest: dict, encoder, head, scale: float):
        self.directory = directory
        self.manifest = manifest
        self._encoder = encoder
        self._head = head
        self.scale = scale
        files = manifest["files"]
        self.encoder_sha256 = files[ENCODER]["sha256"]
        self.head_sha256 = files[HEAD]["sha256"]
        cfg = manifest["config"]
        self.embedding_dim = output_dim(cfg)
        self.uses_length = bool(cfg["uses_length"])
        self.max_len = int(cfg["max_len"])
        # The packet text carries the dissected fields' tag (tool.text.field_tag) for a model trained
        # so; a manifest without config.fields (every model before it) reads the plain text.
        self.fields = bool(cfg.get("fields", False))

    @classmethod
    def load(cls, directory: str | Path | None = None, threads: int = 1) -> Model:
        """Open the model set in `directory` (default models_dir()) after checking its hashes."""
        directory = Path(directory) if directory is not None else models_dir()
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise ModelError(f"{manifest_path}: no model manifest (set DNP_MODELS or run dnp-train)")
        try:
            manifest = json.loads(manifest_path.read_text())
            files = manifest["files"]
            cfg = manifest["config"]
            output_dim(cfg), int(cfg["max_len"]), bool(cfg["uses_length"])
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{manifest_path}: not a DeepNetPrint model manifest ({e!r})") from None
        if manifest.get("format") != FORMAT:
            raise ModelError(f"{manifest_path}: model format {manifest.get('format')!r}, expected {FORMAT}")
        for name in (ENCODER, HEAD):
            path = directory / name
            if name not in files:
                raise ModelError(f"{manifest_path}: lists no {name}")
            if not path.is_file():
                raise ModelError(f"{path}: model file missing")
            if sha256_file(path) != files[name]["sha256"]:
                raise ModelError(f"{path}: sha256 differs from the manifest (damaged or mismatched)")

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        sessions = []
        for name in (ENCODER, HEAD):
            try:
                sessions.append(
                    ort.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"])
                )
            except Exception as e:  # onnxruntime raises its own exception types
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelError(f"{directory / name}: onnxruntime cannot load it: {first}") from None
        encoder, head = sessions
        dim = output_dim(cfg)
        _, scale = head.run(None, {"support": np.zeros((MIN_PACKETS, dim), np.float32)})
        return cls(directory, manifest, encoder, head, float(scale))

    def key(self, text: str, length: int) -> Hashable:
        """What embed() depends on for one packet; callers memoise embeddings by it."""
        return (text, int(length)) if self.uses_length else text

    def embed(self, texts: Sequence[str], lengths: Sequence[int]) -> np.ndarray:
        """Embeddings of packets given their packet_text() and frame lengths: [N, E] float32."""
        if len(texts) != len(lengths):
            raise ValueError(f"{len(texts)} texts but {len(lengths)} lengths")
        strings = [model_input(t, n, self.uses_length) for t, n in zip(texts, lengths)]
        out = np.zeros((len(strings), self.embedding_dim), dtype=np.float32)
        for start in range(0, len(strings), BATCH):
            ids = encode_bytes(strings[start : start + BATCH], self.max_len)
            out[start : start + len(ids)] = self._encoder.run(None, {"bytes": ids})[0]
        return out

    def prototype(self, support: np.ndarray) -> np.ndarray:
        """The Target prototype [E] of S sequenced support embeddings [S, E] (S >= MIN_PACKETS)."""
        support = np.asarray(support, dtype=np.float32)
        if support.ndim != 2 or support.shape[1] != self.embedding_dim or len(support) < MIN_PACKETS:
            raise ValueError(
                f"support must be [S >= {MIN_PACKETS}, {self.embedding_dim}], got {list(support.shape)}"
            )
        return self._head.run(None, {"support": support})[0]

    def match(self, queries: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
        """p(Target | query) for every query [N, E] and prototype [K, E]: [N, K] in [0, 1]."""
        q = np.asarray(queries, dtype=np.float64)
        p = np.asarray(prototypes, dtype=np.float64)
        # |q|^2 - |q - p|^2 = 2 q.p - |p|^2: the Null prototype's distance minus the Target's
        logit = self.scale * (2.0 * q @ p.T - (p * p).sum(1)[None, :])
        return (0.5 * (1.0 + np.tanh(0.5 * logit))).astype(np.float32)


def set_vector(embeddings: np.ndarray) -> np.ndarray:
    """A set of packets as one unit vector: the normalised mean of their embeddings, [N, E] -> [E].

    The host score compares such vectors by their cosine (`set_score`). A device's join traffic is
    diverse (ARP, DHCP, DNS, TLS), so its mean embedding is short and each of its own packets lies far
    from it: comparing whole sets, rather than averaging per-packet p(Target), is what keeps a host
    whose packets all look "average" from outranking the device itself.
    """
    total = np.asarray(embeddings, dtype=np.float64).sum(axis=0)
    return unit(total)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to length 1; a zero row stays zero."""
    v = np.asarray(vectors, dtype=np.float64)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


CHAMFER_WEIGHT = 0.5  # of the set score (tool.scores.set_scores); the rest is the cosine of the means


def set_score(hosts: np.ndarray, fingerprints: np.ndarray) -> np.ndarray:
    """Cosine of every host's set vector [H, E] with every fingerprint's [K, E]: [H, K] in [-1, 1].

    Either side may be unnormalised sums of embeddings: only their directions count.
    """
    return unit(np.atleast_2d(hosts)) @ unit(np.atleast_2d(fingerprints)).T
