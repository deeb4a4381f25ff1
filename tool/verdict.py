"""The verdict: which fingerprint a host matches best, and whether it matches it at all.

One rule for every mode: a raw threshold on the host score (--threshold, or the fallback where no
cohort calibrates the score), or a false-match rate: measured on labs the model never trained on,
on the scale the model's cohort sets for each fingerprint (tool/cohort.py).
`Verdict.judge` applies it to hosts' scores; scan, watch and hunt all call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tool.cohort import Cohort
from tool.constants import FALLBACK_THRESHOLD, MAX_FALSE_MATCH, SET_SCORES

if TYPE_CHECKING:
    from tool.fingerprint import Fingerprint
    from tool.model import Model


class Judgement(NamedTuple):
    """The verdict on H hosts' scores [H, K]."""

    false_match: np.ndarray | None  # [H, K] each score's false-match rate; None without a cohort
    best: np.ndarray  # [H] each host's best fingerprint
    matched: list[bool]  # [H] whether the verdict holds for it
    # [H] the other fingerprints the host also reaches, best score first: where not empty the verdict
    # is uncertain between them ("HS100 or HS110"); sibling devices of one vendor send the same traffic.
    also: list[list[int]]


@dataclass
class Verdict:
    """The rule that turns a host score into a verdict: a raw threshold, or a false-match rate."""

    threshold: float | None  # raw host score, when given (or when no cohort calibrates the score)
    max_false_match: float | None  # the false-match rate allowed (tool/cohort.py)
    cohort: Cohort | None
    how: str = "set"  # the host score the cohort's hosts are scored by
    # Routers (tool.routers) get a verdict only when asked: their own packets are mostly answers to
    # their clients and address resolution, which look like any device's.
    judge_routers: bool = False
    # The cohort's scores for the fingerprints last judged (see prepare).
    _impostors: tuple[list, list] | None = field(default=None, repr=False, compare=False)

    def matches(self, score: float, false_match: float | None) -> bool:
        """Whether a host's score (and its false-match rate, for a calibrated rule) is a match."""
        if self.threshold is not None:
            return score >= self.threshold
        assert false_match is not None and self.max_false_match is not None
        return false_match <= self.max_false_match

    def prepare(self, fingerprints: Sequence[Fingerprint]) -> list | None:
        """The cohort's scores for the fingerprints (Cohort.impostors), computed once and kept while the
        fingerprints are the same: a watch judges a host at every one of its first packets, a hunt's
        worker thousands of captures. A watch prepares them before its first packet."""
        if self.cohort is None:
            return None
        kept = self._impostors
        if (
            kept is None
            or len(kept[0]) != len(fingerprints)
            or any(a is not b for a, b in zip(kept[0], fingerprints))
        ):
            kept = self._impostors = (list(fingerprints), self.cohort.impostors(fingerprints, self.how))
        return kept[1]

    def judge(
        self, fingerprints: Sequence[Fingerprint], scores: np.ndarray, routers: Sequence[bool] | None = None
    ) -> Judgement:
        """The verdict on hosts' scores [H, K] for the fingerprints: the one place it is decided.
        `routers` [H]: which hosts forward (tool.hosts.Host.router); they match nothing unless the
        rule judges routers."""
        false_match = None
        if self.cohort is not None and len(scores):
            impostors = self.prepare(fingerprints)
            false_match = self.cohort.false_match(fingerprints, scores, self.how, impostors)
        best = best_fingerprint(scores, false_match)
        matched: list[bool] = []
        also: list[list[int]] = []
        for h, k in enumerate(best.tolist()):
            judged = self.judge_routers or routers is None or not routers[h]
            reached = [
                j
                for j in np.argsort(-scores[h], kind="stable").tolist()
                if judged and self.matches(scores[h, j], None if false_match is None else false_match[h, j])
            ]
            matched.append(k in reached)
            also.append([j for j in reached if j != k] if k in reached else [])
        return Judgement(false_match, best, matched, also)

    @property
    def rate_over(self) -> int:
        """How many hosts the rule's false-match rates are counted over (0: no rates)."""
        return 0 if self.cohort is None else self.cohort.rate_over(self.how)

    def describe(self) -> str:
        if self.threshold is not None:
            return f"threshold {self.threshold:.3f}"
        assert self.max_false_match is not None and self.cohort is not None
        if self.cohort.calibration is not None and self.how == "set":
            over = f"measured on {self.rate_over} trials on labs the model never trained on"
        else:
            over = f"{len(self.cohort)} cohort hosts"
        return f"false-match rate <= {self.max_false_match:g} ({over})"


def verdict_rule(
    model: Model,
    host_score: str,
    threshold: float | None = None,
    max_false_match: float | None = None,
    judge_routers: bool = False,
) -> Verdict:
    """The verdict a scan applies: --threshold if given, else the cohort's false-match rate for the set
    scores (default MAX_FALSE_MATCH), else the fallback threshold (the paper's p(Target) scores, or a
    model that ships no cohort); routers judged only with `judge_routers`."""
    if threshold is not None:
        return Verdict(float(threshold), None, None, host_score, judge_routers=judge_routers)
    cohort = Cohort.load(model) if host_score in SET_SCORES else None
    if cohort is None:
        return Verdict(FALLBACK_THRESHOLD, None, None, host_score, judge_routers=judge_routers)
    rate = MAX_FALSE_MATCH if max_false_match is None else float(max_false_match)
    return Verdict(None, rate, cohort, host_score, judge_routers=judge_routers)


def best_fingerprint(scores: np.ndarray, false_match: np.ndarray | None) -> np.ndarray:
    """Each host's best fingerprint [H]: the lowest false-match rate, ties (and no cohort) by score."""
    if false_match is None:
        return scores.argmax(axis=1)
    # lexsort's last key is the primary one.
    return np.asarray([np.lexsort((-s, f))[0] for s, f in zip(scores, false_match)], dtype=np.intp)
