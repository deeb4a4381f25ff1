"""The DeepNetPrint network, top to bottom: character embedding, ConvLSTM autoencoder, prototype head.

After J. Pan's DeepNetPrint paper. A packet's text (tool.text.packet_text, optionally prefixed by
its frame length) is read as bytes. The bytes are cut into T chunks of W characters; each chunk is
one time step of a ConvLSTM whose channels are the character-embedding dimensions and whose
convolutions run along the W characters of the chunk (a 1-D ConvLSTM). `conv="2d"` lays each chunk
out as a square map instead, with square kernels (the paper's 2-D ConvLSTM, at the same state
size); it encoded at 0.82x the speed and was no better on the development half (model card).

Phase 1 trains encoder + decoder to reconstruct the bytes; the encoder's last hidden state is the
packet encoding. Phase 2 trains f_phi (the embedding network) on top, with the encoder fine-tuned,
as a one-class prototypical network: a device's Target prototype is built from the embeddings of 20
sequenced support packets; the Null prototype is f_phi of the all-null input, which is the origin
because f_phi has no biases; p(Target | q) = softmax over the negative squared distances to the two.

Shapes: N packets, L = T * W bytes, E character-embedding dims, H ConvLSTM channels, D embedding dims.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from export.config import Config

VOCAB = 257  # byte value + 1; 0 is padding


class SquareConv(nn.Conv2d):
    """A 2-D convolution over the W characters of a chunk laid out as a square map (16: 4 x 4).

    Takes and gives [N, C, W] like the 1-D convolution it replaces, so the cell is the same.
    """

    def __init__(self, in_ch: int, out_ch: int, width: int, kernel: int, bias: bool = True):
        super().__init__(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
        self.side = math.isqrt(width)
        if self.side * self.side != width:
            raise ValueError(f"a 2-D ConvLSTM needs a square chunk, got {width} characters")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, w = x.shape
        return super().forward(x.reshape(n, c, self.side, self.side)).reshape(n, -1, w)


def char_conv(in_ch: int, out_ch: int, width: int, kernel: int, conv: str, bias: bool = True) -> nn.Module:
    """The convolution over a chunk's characters: along the line ("1d"), or over a square map ("2d")."""
    if conv == "1d":
        # A plain Conv1d, so that the 1-D model's parameter names, and its ONNX files, stay as they were.
        return nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
    if conv == "2d":
        return SquareConv(in_ch, out_ch, width, kernel, bias)
    raise ValueError(f"conv is 1d or 2d, got {conv!r}")


class ConvLSTMCell(nn.Module):
    """Shi et al.'s ConvLSTM cell, the paper's equations 3-7, peepholes included.

    i = sigmoid(W_xi * x + W_hi * h + W_ci o c + b_i)
    f = sigmoid(W_xf * x + W_hf * h + W_cf o c + b_f)
    c' = f o c + i o tanh(W_xc * x + W_hc * h + b_c)
    o = sigmoid(W_xo * x + W_ho * h + W_co o c' + b_o)
    h' = o o tanh(c')
    (* is a convolution over the characters of a chunk (char_conv), o the Hadamard product.)
    """

    def __init__(self, in_ch: int, hidden: int, width: int, kernel: int, conv: str = "1d"):
        super().__init__()
        # The input-to-state convolution carries the biases b_i, b_f, b_c, b_o; it is applied to all
        # time steps at once by the callers (see `input_gates`), so the loop only runs W_h * h.
        self.conv_x = char_conv(in_ch, 4 * hidden, width, kernel, conv)
        self.conv_h = char_conv(hidden, 4 * hidden, width, kernel, conv, bias=False)
        self.w_ci = nn.Parameter(torch.zeros(hidden, width))
        self.w_cf = nn.Parameter(torch.zeros(hidden, width))
        self.w_co = nn.Parameter(torch.zeros(hidden, width))
        with torch.no_grad():  # forget gate opens at the start: long memories train more easily
            self.conv_x.bias[hidden : 2 * hidden].fill_(1.0)

    def input_gates(self, x: torch.Tensor) -> torch.Tensor:
        # x [N, T, C, W] -> [N, T, 4H, W]
        n, t, c, w = x.shape
        return self.conv_x(x.reshape(n * t, c, w)).reshape(n, t, -1, w)

    def forward(
        self, gx: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # gx [N, 4H, W] (W_x * x + b), h, c [N, H, W] -> h', c' [N, H, W]
        gi, gf, gc, go = (gx + self.conv_h(h)).chunk(4, dim=1)
        i = torch.sigmoid(gi + self.w_ci * c)
        f = torch.sigmoid(gf + self.w_cf * c)
        c = f * c + i * torch.tanh(gc)
        o = torch.sigmoid(go + self.w_co * c)
        h = o * torch.tanh(c)
        return h, c


class Encoder(nn.Module):
    """Bytes -> packet encoding: the ConvLSTM's last hidden state, or all its hidden states."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(VOCAB, cfg.char_dim, padding_idx=0)
        self.cell = ConvLSTMCell(cfg.char_dim, cfg.hidden, cfg.chunk, cfg.kernel, cfg.conv)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n = ids.shape[0]
        x = self.embed(ids)  # [N, L] -> [N, L, E]
        x = x.reshape(n, cfg.steps, cfg.chunk, cfg.char_dim).transpose(2, 3)  # -> [N, T, E, W]
        gx = self.cell.input_gates(x)  # -> [N, T, 4H, W]
        h = torch.zeros(n, cfg.hidden, cfg.chunk, dtype=x.dtype)  # [N, H, W]
        c = torch.zeros_like(h)
        states = []
        for t in range(cfg.steps):
            h, c = self.cell(gx[:, t], h, c)
            states.append(h)
        if self.cfg.readout == "all":  # every step's state: local detail (a model number) stays visible
            return torch.stack(states, 1).reshape(n, -1)  # -> [N, T*H*W]
        return h.reshape(n, -1)  # -> [N, H*W]

    @staticmethod
    def last_state(z: torch.Tensor, cfg: Config) -> torch.Tensor:
        return z[:, -cfg.hidden * cfg.chunk :]  # the decoder reads the last state: [N, H*W]


class Decoder(nn.Module):
    """Packet encoding -> byte logits; the encoding is the input of every step (a repeat vector)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.cell = ConvLSTMCell(cfg.hidden, cfg.hidden, cfg.chunk, cfg.kernel, cfg.conv)
        self.out = nn.Conv1d(cfg.hidden, VOCAB, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n = z.shape[0]
        z = Encoder.last_state(z, cfg).reshape(n, cfg.hidden, cfg.chunk)  # [N, H*W] -> [N, H, W]
        gx = self.cell.conv_x(z)  # the same input at every step -> [N, 4H, W]
        h = torch.zeros_like(z)
        c = torch.zeros_like(z)
        logits = []
        for _ in range(cfg.steps):
            h, c = self.cell(gx, h, c)
            logits.append(self.out(h))  # [N, V, W]
        return torch.stack(logits, 2).reshape(n, VOCAB, cfg.max_len)  # -> [N, V, T, W] -> [N, V, L]


class EmbeddingNet(nn.Module):
    """f_phi: packet encoding -> prototype space. No biases, so f_phi(0) = 0: the Null prototype."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.normalize = cfg.normalize
        self.fc1 = nn.Linear(cfg.encoding_dim, cfg.embed_hidden, bias=False)
        self.fc2 = nn.Linear(cfg.embed_hidden, cfg.embed_dim, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.relu(self.fc1(z)))  # [N, encoding_dim] -> [N, D]
        if self.normalize:
            # Every packet at the same distance from the Null prototype: a text the training never
            # saw cannot fall near the origin, where any prototype would score it 0.5. 0 stays 0.
            x = x / (x.norm(dim=1, keepdim=True) + 1e-6)
        return x


class PrototypeNet(nn.Module):
    """The Target prototype from S sequenced support embeddings.

    With proto_net, the support packets are read as a time series (after Huang et al.'s deep
    prototypical networks for time series): a residual temporal convolution, then the mean. The
    convolution starts at zero, so training begins from the plain mean.
    """

    def __init__(self, cfg: Config):
        super().__init__()
        self.enabled = cfg.proto_net
        if self.enabled:
            self.conv = nn.Conv1d(cfg.embed_dim, cfg.embed_dim, 3, padding=1, bias=False)
            nn.init.zeros_(self.conv.weight)

    def forward(self, support: torch.Tensor) -> torch.Tensor:
        # support [B, S, D] -> [B, D]
        if self.enabled:
            x = support.transpose(1, 2)  # [B, D, S]
            support = (x + self.conv(x)).transpose(1, 2)
        return support.mean(dim=1)


def match(queries: torch.Tensor, prototypes: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """p(Target | query) for every query and Target prototype; the Null prototype is the origin.

    softmax(-s * [d(q, target), d(q, null)])[0] = sigmoid(s * (|q|^2 - |q - target|^2))
    """
    # queries [N, D], prototypes [K, D] -> [N, K]
    d_target = torch.cdist(queries, prototypes).pow(2)
    d_null = queries.pow(2).sum(1, keepdim=True)
    return torch.sigmoid(log_scale.exp() * (d_null - d_target))


class DeepNetPrint(nn.Module):
    """The whole network; phase 1 uses encoder + decoder, phase 2 encoder + embed + proto + scale."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.embed = EmbeddingNet(cfg)
        self.proto = PrototypeNet(cfg)
        self.log_scale = nn.Parameter(torch.zeros(()))

    def reconstruct(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(ids))  # [N, L] -> [N, V, L]

    def embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(self.encoder(ids))  # [N, L] -> [N, D]

    def match(self, queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return match(queries, prototypes, self.log_scale)


# Integer hashing of byte n-grams, exact in int64 on every runtime. The hash of an n-gram is its
# polynomial in the byte values (base 257), times two Lehmer multipliers, modulo the prime 2^31 - 1.
# Modulo p that is one linear form in the n bytes, sum_k x_k * (257^(n-1-k) * 48271 * 69621 mod p):
# each term is below 2^40 and the sum below 2^43, so one int64 product and one remainder give the
# same hash the polynomial and the two Lehmer steps gave (the idf tables of earlier models hold).
# Every operand is non-negative, so the C remainder and division (fmod, trunc) are the mathematical
# ones, and they export to plain ONNX Mod and Div without the sign corrections of floor semantics.
_HASH_BASE = 257
_HASH_PRIME = 2147483647
_HASH_MULTIPLIERS = (48271, 69621)


def hash_coefficients(min_n: int, max_n: int) -> torch.Tensor:
    """[max_n, max_n - min_n + 1] int64: column j holds the linear form of the (min_n + j)-grams'
    hash, the coefficient of the n-gram's k-th byte in row k (0 for k >= n)."""
    multiplier = 1
    for m in _HASH_MULTIPLIERS:
        multiplier = multiplier * m % _HASH_PRIME
    coefficients = torch.zeros(max_n, max_n - min_n + 1, dtype=torch.int64)
    for j, n in enumerate(range(min_n, max_n + 1)):
        for k in range(n):
            coefficients[k, j] = pow(_HASH_BASE, n - 1 - k, _HASH_PRIME) * multiplier % _HASH_PRIME
    return coefficients


class LexicalChannel(nn.Module):
    """A packet's rare tokens, kept visible: hashed byte n-grams weighted by rarity, fixed, not learnt.

    From the same input bytes as the ConvLSTM ([N, L] int64, byte + 1, 0 padding), lower-cased: every
    n-gram of lexical_min_n..lexical_max_n bytes without padding is hashed to an integer; its idf
    weight is looked up in a table of lexical_buckets entries (the `idf` buffer, computed from the
    training hosts' texts: an n-gram no training host sent gets the highest weight); the weights are
    summed into lexical_dim signed buckets by a second part of the hash (the hashing trick: a sparse
    random projection, so that no dense table has to ship), and the sum is put on the unit sphere.
    The cosine of two such vectors approximates that of their TF-IDF vectors.
    """

    def __init__(self, cfg: Config, idf: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        if idf is None:
            idf = torch.ones(cfg.lexical_buckets)
        if idf.shape != (cfg.lexical_buckets,):
            raise ValueError(f"idf must have {cfg.lexical_buckets} entries, got {list(idf.shape)}")
        self.register_buffer("idf", idf.to(torch.float32))
        self.register_buffer("coefficients", hash_coefficients(cfg.lexical_min_n, cfg.lexical_max_n))

    def hashes(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every n-gram's hash [N, L * G] (in [0, 2^31 - 1)) and whether it is a real n-gram, G the
        number of n-gram lengths: the n-grams at each position, padding included, each length."""
        cfg = self.cfg
        n, length = ids.shape
        x = torch.where((ids >= 66) & (ids <= 91), ids + 32, ids)  # 'A'..'Z' (byte + 1) lower-cased
        # The bytes at i, i+1, ..., i+max_n-1 of every position i [N, L, max_n], zero past the end.
        # Padding (0) only trails the text: the n-gram at i is real when its last byte is.
        padded = F.pad(x, (0, cfg.lexical_max_n - 1))
        window = torch.stack([padded[:, k : k + length] for k in range(cfg.lexical_max_n)], 2)
        h = torch.fmod(window @ self.coefficients, _HASH_PRIME)  # [N, L, G]
        real = window[:, :, cfg.lexical_min_n - 1 :] > 0
        return h.reshape(n, -1), real.reshape(n, -1)

    def buckets(self, hashes: torch.Tensor) -> torch.Tensor:
        """The idf table's entry of each hash."""
        return torch.fmod(hashes, self.cfg.lexical_buckets)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        h, real = self.hashes(ids)
        # The bits above the bucket's: the lowest log2(lexical_dim) pick the dimension, the next one
        # the sign. Summed into 2 x lexical_dim slots, the negative ones after the positive ones, and
        # subtracted: the signed sum, without a sign to compute per n-gram.
        high = torch.div(h, cfg.lexical_buckets, rounding_mode="trunc")
        slot = torch.fmod(high, 2 * cfg.lexical_dim)
        weight = self.idf[self.buckets(h)] * real.float()
        out = torch.zeros(ids.shape[0], 2 * cfg.lexical_dim, dtype=torch.float32).scatter_add(1, slot, weight)
        out = out[:, : cfg.lexical_dim] - out[:, cfg.lexical_dim :]
        return out / (out.norm(dim=1, keepdim=True) + 1e-6)


def idf_table(channel: LexicalChannel, ids: torch.Tensor, documents: list[list[int]]) -> torch.Tensor:
    """The idf of every bucket over `documents` (each a list of rows of `ids` that make one document):
    log((1 + D) / (1 + df)) + 1, as scikit-learn smooths it; a bucket no document has gets the most."""
    with torch.no_grad():
        h, ok = channel.hashes(ids)
        b = channel.buckets(h)
    df = torch.zeros(channel.cfg.lexical_buckets, dtype=torch.float64)
    for rows in documents:
        present = torch.unique(b[rows][ok[rows]])
        df[present] += 1
    return (torch.log((1.0 + len(documents)) / (1.0 + df)) + 1.0).float()


class ExportEncoder(nn.Module):
    """What encoder.onnx computes: bytes [N, L] int64 -> embeddings [N, D].

    With a lexical channel, D = embed_dim + lexical_dim: the learnt embedding and the lexical vector,
    both unit length, weighted so that the fused vector has unit length and the cosine of two fused
    vectors is (1 - w) times the learnt cosine plus w times the lexical one (w = lexical_weight).
    """

    def __init__(self, net: DeepNetPrint, lexical: LexicalChannel | None = None):
        super().__init__()
        self.net = net
        self.lexical = lexical

    def learnt(self, ids: torch.Tensor) -> torch.Tensor:
        """The learnt embedding [N, embed_dim]: the network as trained."""
        return self.net.embedding(ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        learnt = self.learnt(ids)
        if self.lexical is None:
            return learnt
        w = float(self.lexical.cfg.lexical_weight)
        return torch.cat([math.sqrt(1.0 - w) * learnt, math.sqrt(w) * self.lexical(ids)], dim=1)


class InferenceEncoder(ExportEncoder):
    """ExportEncoder's function, laid out for onnxruntime on one core: encoder.onnx is exported from it.

    The same arithmetic in another order, so the embeddings agree to float rounding (onnx_export
    checks every export against ExportEncoder), and 1.15x as fast on one core for the 16-channel
    ConvLSTM (benchmarks/bench_encoder.py), where the convolutions over 16 characters and 16
    channels were the cost: the input convolution of a byte's embedding is a table of VOCAB rows
    per kernel tap, so it becomes three lookups; the state convolution is one matrix product of the
    state beside its neighbours; states are kept characters-first so no step transposes. 1-D only.
    """

    def __init__(self, net: DeepNetPrint, lexical: LexicalChannel | None = None):
        super().__init__(net, lexical)
        cfg = net.cfg
        if not self.lays_out(cfg):
            raise ValueError("InferenceEncoder lays out the 1-D ConvLSTM with kernel 3 only")
        self.cfg = cfg
        cell = net.encoder.cell
        with torch.no_grad():
            # [V + 1, 4H] each: a byte's embedding times one tap of the kernel; the last row, 0, is
            # the convolution's zero padding at a chunk's edge (not the embedding of padding bytes)
            embed = torch.cat([net.encoder.embed.weight, torch.zeros(1, cfg.char_dim)])
            tap = [embed @ cell.conv_x.weight[:, :, k].T for k in range(3)]
            self.register_buffer("tap_before", tap[0].clone())
            self.register_buffer("tap_at", (tap[1] + cell.conv_x.bias).clone())
            self.register_buffer("tap_after", tap[2].clone())
            # [3H, 4H]: the state at i-1, at i and at i+1, side by side, times the kernel's taps
            state_taps = torch.cat([cell.conv_h.weight[:, :, k].T for k in range(3)], 0)
            self.register_buffer("state_taps", state_taps)
            for name in ("w_ci", "w_cf", "w_co"):
                self.register_buffer(name, getattr(cell, name).T.contiguous())  # [W, H]
            fc1 = net.embed.fc1.weight  # [hidden, (T,) H, W] -> rows in the order (T,) W, H
            steps = cfg.steps if cfg.readout == "all" else 1
            fc1 = fc1.reshape(-1, steps, cfg.hidden, cfg.chunk).permute(0, 1, 3, 2).reshape(fc1.shape[0], -1)
            self.register_buffer("fc1", fc1.T.contiguous())
            self.register_buffer("fc2", net.embed.fc2.weight.T.contiguous())

    @staticmethod
    def lays_out(cfg: Config) -> bool:
        """Whether this layout computes a network of these settings (else export ExportEncoder)."""
        return cfg.conv == "1d" and cfg.kernel == 3

    def learnt(self, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n, steps, width, hidden = ids.shape[0], cfg.steps, cfg.chunk, cfg.hidden
        x = ids.reshape(n, steps, width)
        before = F.pad(x[:, :, :-1], (1, 0), value=VOCAB)  # the byte at i-1 in its chunk, or the edge
        after = F.pad(x[:, :, 1:], (0, 1), value=VOCAB)
        gx = self.tap_before[before] + self.tap_at[x] + self.tap_after[after]  # [N, T, W, 4H]
        h = torch.zeros(n, width, hidden)
        c = torch.zeros(n, width, hidden)
        states = []
        for t in range(steps):
            beside = torch.cat([F.pad(h[:, :-1], (0, 0, 1, 0)), h, F.pad(h[:, 1:], (0, 0, 0, 1))], 2)
            gi, gf, gc, go = (gx[:, t] + beside @ self.state_taps).split(hidden, 2)
            i = torch.sigmoid(gi + self.w_ci * c)
            f = torch.sigmoid(gf + self.w_cf * c)
            c = f * c + i * torch.tanh(gc)
            o = torch.sigmoid(go + self.w_co * c)
            h = o * torch.tanh(c)
            states.append(h)
        z = torch.stack(states, 1).reshape(n, -1) if cfg.readout == "all" else h.reshape(n, -1)
        e = F.relu(z @ self.fc1) @ self.fc2
        if self.cfg.normalize:
            e = e / (e.norm(dim=1, keepdim=True) + 1e-6)
        return e


class ExportHead(nn.Module):
    """What head.onnx computes: support [S, D] -> (prototype [D], match scale []).

    The scale travels with the prototype network so that one file (head_sha256) pins both; the
    runtime computes match() from it in numpy.
    """

    def __init__(self, net: DeepNetPrint):
        super().__init__()
        self.net = net

    def forward(self, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prototype = self.net.proto(support.unsqueeze(0))[0]
        return prototype, self.net.log_scale.exp()
