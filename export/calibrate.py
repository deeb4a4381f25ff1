"""Calibrate dnp-scan's host verdict on the development half: which host score, which threshold.

    python -m export.calibrate [--data DIR] [--models DIR]

Reads only the development half (captures 1-10) of the 12 seen devices, as EVALUATION.md asks.
Each seen device is enrolled from its capture 1, as dnp-23 does; every host of captures 2-10 (the
device itself, and the access point and any other sender in the same capture) is then scored with
each fingerprint. A (host, fingerprint) pair is positive when the host is that fingerprint's device.

For each host score (`first20`: the mean over the host's first 20 packets, what dnp-23 measures;
`mean`: over all its packets) it prints the ROC-AUC of positives against negatives and the capture
accuracy, and it writes the threshold that maximises balanced accuracy for the chosen score to
models/calibration.json, which dnp-scan reads as its default --threshold.

The shipped model was trained on these same captures, so its figures are in-sample and optimistic.
`--cv DIR` measures instead on the fold models of `dnp-train --cv --fold-models DIR`: each fold
model scores only the fingerprints of the 4 devices it never trained on, as an investigator's
device would be, and the threshold is chosen on those pooled held-out pairs. The unseen devices and
the test half are never read here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np

from tool.dataset import SEEN, device_packets, load_devices, read_captures
from tool.fingerprint import Fingerprint, write_atomic
from tool.metrics import roc_auc
from tool.model import Model
from tool.scan import HOST_PACKETS, Matcher

Scores = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def host_scores(model: Model, data: str | None, only: Sequence[str] | None = None) -> Scores:
    """For each host score: (scores [pairs], positive [pairs], capture_correct [device captures]).

    With `only`, just the pairs of those devices' fingerprints, and just their captures' verdicts.
    """
    devices = [d for d in load_devices(data) if d.name in SEEN]
    kept = np.array([only is None or d.name in only for d in devices])
    enrollment = device_packets(devices)
    fps = [Fingerprint.from_packets(model, enrollment[d.name].enrollment(), d.name) for d in devices]
    matcher = Matcher(model, fps)
    captures = read_captures([c for d in devices for c in d.dev_captures[1:]])
    out: dict[str, list] = {"first20": [[], [], []], "mean": [[], [], []]}
    for index, device in enumerate(devices):
        for capture in device.dev_captures[1:]:
            by_host: dict[str, list] = defaultdict(list)
            for packet in captures[capture]:
                by_host[packet.eth_src].append(packet)
            for host, packets in by_host.items():
                probs = matcher.score(packets)
                for how, scores in (("first20", probs[:HOST_PACKETS].mean(0)), ("mean", probs.mean(0))):
                    out[how][0].extend(scores[kept])
                    out[how][1].extend(i == index and host == device.mac for i in range(len(fps)) if kept[i])
                    if host == device.mac and kept[index]:
                        out[how][2].append(int(np.argmax(scores)) == index)
    return {how: tuple(np.asarray(v) for v in lists) for how, lists in out.items()}


def best_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold that maximises balanced accuracy, and that balanced accuracy."""
    best = (0.5, 0.0)
    for t in np.unique(scores):
        tpr = (scores[positive] >= t).mean()
        tnr = (scores[~positive] < t).mean()
        if (tpr + tnr) / 2 > best[1]:
            best = (float(t), float((tpr + tnr) / 2))
    return best


def cv_host_scores(folds: Path, data: str | None) -> Scores:
    """host_scores pooled over the fold models, each on the fingerprints it never trained on."""
    pooled: dict[str, list[list[np.ndarray]]] = {}
    directories = sorted(p.parent for p in folds.glob("*/manifest.json"))
    if not directories:
        raise click.ClickException(f"{folds}: no fold model (run dnp-train --cv --fold-models {folds})")
    for directory in directories:
        held_out = json.loads((directory / "manifest.json").read_text()).get("held_out")
        if not held_out:
            raise click.ClickException(f"{directory}: manifest.json names no held-out devices")
        for how, arrays in host_scores(Model.load(directory), data, held_out).items():
            for i, array in enumerate(arrays):
                pooled.setdefault(how, [[], [], []])[i].append(array)
    return {how: tuple(np.concatenate(a) for a in arrays) for how, arrays in pooled.items()}


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False), help="The data folder.")
@click.option("--models", type=click.Path(exists=True, file_okay=False), help="Model folder.")
@click.option("--host-score", type=click.Choice(["first20", "mean"]), default="first20", show_default=True)
@click.option(
    "--cv",
    "folds",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Measure on these fold models (dnp-train --cv --fold-models) instead of in-sample.",
)
def main(data: str | None, models: str | None, host_score: str, folds: Path | None) -> None:
    """Measure both host scores on the development half and write the calibrated threshold."""
    model = Model.load(models)
    results = cv_host_scores(folds, data) if folds else host_scores(model, data)
    for how, (scores, positive, correct) in results.items():
        threshold, balanced = best_threshold(scores, positive)
        print(
            f"{how:8s} pairs={len(scores)} positives={int(positive.sum())} "
            f"auc={roc_auc(scores, positive):.4f} "
            f"capture_top1={correct.mean():.4f} threshold={threshold:.4f} balanced_accuracy={balanced:.4f}"
        )
    scores, positive, _ = results[host_score]
    threshold, balanced = best_threshold(scores, positive)
    calibration = {
        "threshold": round(threshold, 4),
        "host_score": host_score,
        "balanced_accuracy": round(balanced, 4),
        "data": (
            "development half (captures 2-10) of the 12 seen devices, enrolled from capture 1"
            + (", scored by leave-4-devices-out fold models on their held-out fingerprints" if folds else "")
        ),
        "encoder_sha256": model.encoder_sha256,
    }
    write_atomic(Path(model.directory) / "calibration.json", json.dumps(calibration, indent=1) + "\n")
    print(f"wrote {Path(model.directory) / 'calibration.json'}: threshold {threshold:.4f}")


if __name__ == "__main__":
    main()
