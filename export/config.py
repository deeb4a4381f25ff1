"""The network's settings (export/model.py builds the network from them), free of torch so that
`dnp-train --help`, which lists them as options, starts without loading it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Config:
    max_len: int = 128  # bytes read per packet text; ~89% of the first-20 packets fit entirely
    chunk: int = 16  # W: characters per ConvLSTM time step
    char_dim: int = 16  # E: character embedding = ConvLSTM input channels
    hidden: int = 16  # H: ConvLSTM channels; the encoding has H * W values
    kernel: int = 3  # convolution width along the characters
    embed_hidden: int = 256  # f_phi hidden layer
    embed_dim: int = 64  # D: f_phi output, the space where prototypes live
    uses_length: bool = True  # the frame length, as decimal digits, is prepended to the text
    proto_net: bool = False  # time-series prototype network over the support sequence, else the mean
    readout: str = "all"  # f_phi reads every step's hidden state, or "last": the last one only
    normalize: bool = True  # f_phi's output on the unit sphere (and f_phi(0) = 0 still)
    conv: str = "1d"  # ConvLSTM convolutions along a chunk's characters, or "2d": over a square map of them
    # The lexical channel (LexicalChannel): 0 dims is none. Its share of the fused cosine, its hashed
    # n-gram table's size and the n-gram lengths; the table's idf comes from the training texts.
    # Chosen across labs (python -m export.crosslab, model card); the paper model has none.
    lexical_dim: int = 256
    lexical_weight: float = 0.5
    lexical_buckets: int = 1 << 17
    lexical_min_n: int = 2
    lexical_max_n: int = 5
    # The packet text carries the dissected fields' tag (tool.text.field_tag: DHCP parameter list and
    # vendor class, JA3, User-Agent); the runtime reads it where the manifest says so (tool.model).
    fields: bool = False

    @property
    def output_dim(self) -> int:
        """The dimension of what encoder.onnx gives: f_phi's, plus the lexical channel's."""
        return self.embed_dim + self.lexical_dim

    @property
    def encoding_dim(self) -> int:
        return self.hidden * self.chunk * (self.steps if self.readout == "all" else 1)

    @property
    def steps(self) -> int:  # T
        return self.max_len // self.chunk

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.lexical_dim:  # a model without the channel keeps the manifest it always had
            for name in [k for k in out if k.startswith("lexical_")]:
                del out[name]
        else:
            out["output_dim"] = self.output_dim
        if not self.fields:  # likewise a model without the fields' tag
            del out["fields"]
        return out
