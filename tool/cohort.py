"""The cohort: other devices' traffic, shipped with the model, that turns a host score into a verdict.

A raw set score does not mean the same for every fingerprint: a device whose join traffic looks
like everybody's scores high against every host. As speaker verification does, each
fingerprint is therefore compared with a cohort of other devices' hosts, and a host's score is
reported with its **false-match rate**: how many other hosts reach it, on the scale the cohort sets
for that fingerprint (the calibration below says how many they are on a new network).

The cohort is `cohort.json` beside the model: windows of `packets` consecutive packets from the
training devices' development captures, each a list of indexes into a table of distinct packet
embeddings, with the index of its device (`group`) and the encoder hash it was computed with.
`python -m export.cohort` writes it. A window is scored as a host is (tool.scores.set_scores for
`set`, the cosine of the mean embeddings for `set-all`).

A fingerprint of a device type the model was trained on has its own type in the cohort, which would
count the device's own traffic as false matches. The cohort group nearest the fingerprint (highest
mean score) is therefore always left out: for a trained type it is the type itself, for a new type
its closest relative, and the held-out measurements in the model card include that choice. Only a
device group is ever left out: the other hosts of the captures (a phone, a laptop; not routers,
which no verdict names) always count as impostors. With `leave_out` "brand" (cohort.json, `python -m
export.cohort --leave-out`), the nearest type's whole brand is left out with it: its same-vendor
siblings send the same join traffic, so against them no score is unusual, and a rate counted over
them would withhold the verdict from the device itself. The siblings then reach the verdict as the
device does, and the verdict names them together ("HS100 or HS110", tool.verdict).

A cohort rate is counted over the training lab's devices, which the model knows well: on a network it
never saw, the share of other hosts that reach a score is 8 to 60 times higher (the model card). So the
cohort only sets each fingerprint's scale, and the rate a verdict states is measured where the model
had no part: cohort.json's `calibration` (export/calibration.py) holds, for held-out models (each
trained on one lab, its own cohort from that lab), the margins by which the other lab's hosts beat
their fingerprint's anchor: the score that ANCHOR of its cohort's impostors reach. A host's stated
rate is the share of those held-out (fingerprint, host) pairs whose margin is at least its own.
Those pairs are every pair of a fingerprint with a host of another vendor (and the routers, which no
verdict names); a same-vendor sibling is not counted, since it sends the device's own traffic: it
reaches the verdict as the device does, and a scan with both fingerprints names them together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tool.model import ModelError

if TYPE_CHECKING:
    from tool.fingerprint import Fingerprint
    from tool.model import Model

COHORT = "cohort.json"
COHORT_FORMAT = "deepnetprint-cohort"
# What a cohort group is (cohort.json's "group_kinds"): a device type, or another host of the
# captures (a phone, a laptop), never left out as the fingerprint's own type.
DEVICE, HOST = "device", "host"
# What is left out of the cohort for a fingerprint (cohort.json's "leave_out"): the device type nearest
# it, or that type and every type of its brand (its same-vendor siblings, which send the same traffic).
TYPE, BRAND = "type", "brand"
LEAVE_OUT = (TYPE, BRAND)
# A cohort window that scores at least this against a fingerprint sends the fingerprint's own traffic
# (a twin type of the same vendor, whose join is the device's): it is no impostor to count the
# fingerprint's scale against (cohort.json's "same_traffic"). Chosen across labs with the calibration:
# from 0.95 to 0.88 the held-out rates are the same as with no such rule, and the learnt twins of the
# labs the model trained on get their verdicts; at 0.85 the calibration no longer carries (model card).
SAME_TRAFFIC = 0.9
# The cohort rate whose score is a calibrated margin's zero: chosen with the margins across labs
# (the model card's calibration table), where it carried the rate from one lab to the other within 2x.
ANCHOR = 0.001


class CohortError(ModelError):
    """A cohort file that is damaged or made with another encoder (one line for the user): a cohort is
    part of the model set, so the commands report it as they report a damaged model."""


@dataclass(frozen=True)
class Calibration:
    """A host score's margin over its fingerprint's anchor, read as the share of held-out other
    vendors' hosts that reach it (module docstring): `margins` of every held-out impostor pair that
    could be named, ascending, out of `pairs` pairs (routers included, which are never named)."""

    margins: np.ndarray
    pairs: int
    anchor: float = ANCHOR

    def rate(self, margins: np.ndarray) -> np.ndarray:
        """The measured share of held-out impostor pairs whose margin is at least each of `margins`
        (0 where none was: a rate below 1 / pairs)."""
        at_or_above = len(self.margins) - np.searchsorted(self.margins, margins - 1e-9, side="left")
        return at_or_above / self.pairs

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        margins = np.sort(np.asarray(data["margins"], dtype=np.float64))
        pairs, anchor = int(data["pairs"]), float(data["anchor"])
        if margins.ndim != 1 or not np.isfinite(margins).all() or len(margins) > pairs or not 0 < anchor < 1:
            raise ValueError("calibration")
        return cls(margins, pairs, anchor)


@dataclass
class Cohort:
    """Other devices' hosts: a table of distinct packet embeddings [D, E], each host's packets as
    indexes into it, the device group of each host [C], and the window size."""

    table: np.ndarray
    windows: list[np.ndarray]
    groups: np.ndarray
    packets: int
    encoder_sha256: str
    devices: np.ndarray | None = None  # [G] whether each group is a device type (None: all are)
    brands: list[str] | None = None  # [G] each device group's brand, where the cohort knows them
    leave_out: str = TYPE
    calibration: Calibration | None = None  # what a rate is on networks the model never saw
    same_traffic: float | None = None  # windows scoring this or more are no impostors (SAME_TRAFFIC)

    def rate_over(self, how: str = "set") -> int:
        """How many hosts a stated rate of the `how` score is counted over: the held-out pairs where
        the calibration applies (the set score), else the cohort's hosts."""
        return self.calibration.pairs if self.calibration is not None and how == "set" else len(self.windows)

    def __len__(self) -> int:
        return len(self.windows)

    @classmethod
    def load(cls, model: Model) -> Cohort | None:
        """The cohort beside `model`, or None when it ships none; CohortError when it is unusable."""
        path = model.directory / COHORT
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            table = np.asarray(data["embeddings"], dtype=np.float64)
            windows = [np.asarray(w, dtype=np.intp) for w in data["windows"]]
            groups = np.asarray(data["groups"], dtype=np.int64)
            packets = int(data["packets"])
            sha = str(data["encoder_sha256"])
            kinds = data.get("group_kinds")
            devices = None if kinds is None else np.asarray([k == DEVICE for k in kinds], dtype=bool)
            brands = data.get("group_brands")
            leave_out = data.get("leave_out", TYPE)
            if leave_out not in LEAVE_OUT or (brands is not None and len(brands) != len(kinds or ())):
                raise ValueError("leave_out or group_brands")
            calibration = Calibration.from_json(data["calibration"]) if "calibration" in data else None
            same_traffic = None if data.get("same_traffic") is None else float(data["same_traffic"])
            ok = data.get("format") == COHORT_FORMAT
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CohortError(f"{path}: not a DeepNetPrint cohort ({e!r})") from None
        shaped = table.ndim == 2 and table.shape[1] == model.embedding_dim and len(groups) == len(windows)
        indexed = all(len(w) and w.min() >= 0 and w.max() < len(table) for w in windows)
        if devices is not None:
            indexed = indexed and len(groups) > 0 and groups.min() >= 0 and groups.max() < len(devices)
        if not ok or not shaped or not indexed:
            raise CohortError(f"{path}: not a DeepNetPrint cohort for this model")
        if len(np.unique(groups)) < 2 or not np.isfinite(table).all():
            raise CohortError(f"{path}: a cohort needs at least two device groups of finite vectors")
        if sha != model.encoder_sha256:
            raise CohortError(
                f"{path}: computed with encoder {sha[:12]}, the model is {model.encoder_sha256[:12]}: "
                "run python -m export.cohort"
            )
        rules = (leave_out, calibration, same_traffic)
        return cls(table, windows, groups, packets, sha, devices, brands, *rules)

    def scores(self, fingerprints: Sequence[Fingerprint], how: str = "set") -> np.ndarray:
        """Every cohort host's host score (`set` or `set-all`) for each fingerprint: [C, K], each window
        scored as a host is (tool.scores.set_scores, the same function to the last bit)."""
        from tool.model import unit
        from tool.scores import set_scores

        if how == "set-all":
            means = unit(np.stack([self.table[w].sum(axis=0) for w in self.windows]))
            return means @ np.stack([f.vector for f in fingerprints]).T
        # A block of windows at a time: all of them as arrays at once are 3,000 x 20 packets x D floats
        # (160 MB for the shipped model), and a host's score depends on its own packets only.
        block = 256
        return np.concatenate(
            [
                set_scores([self.table[w] for w in self.windows[i : i + block]], fingerprints)
                for i in range(0, len(self.windows), block)
            ]
            or [np.zeros((0, len(fingerprints)))]
        )

    def impostors(
        self, fingerprints: Sequence[Fingerprint], how: str = "set"
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each fingerprint, the cohort hosts that count as other devices: (scores ascending, the
        weight of each). Every cohort device weighs the same, however many windows it gave, so the
        rate is "the share of other devices' hosts", not the share of the chattiest device's windows."""
        scores = self.scores(fingerprints, how)
        names = np.unique(self.groups)
        # Only a device type can be the fingerprint's own: a router or a phone stays an impostor.
        device = np.ones(len(names), dtype=bool) if self.devices is None else self.devices[names]
        out = []
        for k in range(scores.shape[1]):
            column = scores[:, k]
            means = np.array(
                [column[self.groups == g].mean() if d else -np.inf for g, d in zip(names, device)]
            )
            nearest = names[int(means.argmax())]
            left_out = [nearest]
            if self.leave_out == BRAND and self.brands is not None and self.brands[nearest]:
                left_out = [g for g in names if self.brands[g] == self.brands[nearest]]
            keep = ~np.isin(self.groups, left_out)
            if self.same_traffic is not None and (kept := keep & (column < self.same_traffic)).any():
                keep = kept
            sizes = {g: int((self.groups[keep] == g).sum()) for g in np.unique(self.groups[keep])}
            weights = np.array([1.0 / (len(sizes) * sizes[g]) for g in self.groups[keep]])
            order = np.argsort(column[keep], kind="stable")
            out.append((column[keep][order], weights[order]))
        return out

    @staticmethod
    def anchors(impostors: list[tuple[np.ndarray, np.ndarray]], rate: float = ANCHOR) -> np.ndarray:
        """Each fingerprint's anchor [K]: the lowest impostor score that at most `rate` of the cohort's
        impostor weight reaches (the score a cohort rate of `rate` needs)."""
        out = []
        for scores, weights in impostors:
            at_or_above = np.cumsum(weights[::-1])[::-1]
            i = int(np.searchsorted(-at_or_above, -rate, side="left"))
            out.append(scores[min(i, len(scores) - 1)])
        return np.asarray(out, dtype=np.float64)

    def false_match(
        self,
        fingerprints: Sequence[Fingerprint],
        host_scores: np.ndarray,
        how: str = "set",
        impostors: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> np.ndarray:
        """Each host score's false-match rate [H, K]: with a calibration and the `set` score, the share
        of held-out other vendors' hosts that reached its margin over the fingerprint's anchor;
        otherwise the weighted share of impostor cohort hosts at or above it (0 when none reaches
        it). `how` is the host score the scores are (set or set-all).
        `impostors`, from `impostors(fingerprints, how)`, spares scoring the cohort again: a live watch
        asks for a rate at every packet of a host's first ones."""
        host_scores = np.atleast_2d(np.asarray(host_scores, dtype=np.float64))
        if impostors is None:
            impostors = self.impostors(fingerprints, how)
        if self.calibration is not None and how == "set":
            margins = host_scores - self.anchors(impostors, self.calibration.anchor)[None, :]
            return self.calibration.rate(margins)
        out = np.empty_like(host_scores)
        for k, (impostors_k, weights) in enumerate(impostors):
            # Weight at or above each score: the total less what lies strictly below.
            above = np.r_[np.cumsum(weights[::-1])[::-1], 0.0]
            below = np.searchsorted(impostors_k, host_scores[:, k] - 1e-9, side="left")
            out[:, k] = np.clip(above[below], 0.0, 1.0)
        return out
