"""The verdict measured on fingerprints no model trained on: `python -m tool.evaluation.calibrate --cv DIR`.

    dnp-train --cv --fold-models folds/ && python -m tool.evaluation.calibrate --cv folds/

Reads only the development half (captures 1-10) of the data, as EVALUATION.md asks for choosing
settings. Each fold model of `dnp-train --cv --fold-models` gets the cohort its own training
devices give (export.cohort, as dnp-train ships one), enrolls every device from its capture 1 and
scores the captures 2-10 of every device as hosts. Only the fingerprints of the devices that fold
never trained on are counted, pooled over the folds: each device is then a new device type, as an
investigator's is. For every host score it prints what the model card reports:

- host_rank1, host_auc and capture_top1 of those held-out fingerprints (EVALUATION.md 1, 5);
- the verdict's false-match and miss rates at several cohort rates (--max-false-match), where the
  false matches are (held-out fingerprint, other device's capture) pairs and the misses the
  fingerprint's own captures.

No torch, no test half.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from tool.cohort import COHORT
from tool.constants import HOST_SCORES, SET_SCORES
from tool.evaluation import metrics

RATES = (0.0001, 0.001, 0.003, 0.01, 0.03, 0.1)


def fold_dirs(folds: Path) -> list[Path]:
    """The fold model folders under `folds` (fold1, fold2, ...), each with its held-out devices."""
    dirs = sorted(p for p in folds.iterdir() if (p / "manifest.json").is_file())
    if not dirs:
        raise click.ClickException(f"{folds}: no fold models (run dnp-train --cv --fold-models {folds})")
    return dirs


def measure(folds: Path, data: str | None, host_score: str) -> dict:
    """Held-out figures of one host score, pooled over the fold models."""
    from export.cohort import build
    from tool.evaluation.protocol import ModelScorer, evaluate_scorer, load_protocol
    from tool.files import write_text_atomic

    protocol = load_protocol(data, half="dev")
    ranks: list[float] = []
    aucs: list[float] = []
    top1: list[bool] = []
    matched = {a: [] for a in RATES}
    own_all: list[np.ndarray] = []
    for directory in fold_dirs(folds):
        manifest = json.loads((directory / "manifest.json").read_text())
        held = [n for n in manifest["held_out"] if n in protocol.names]
        if host_score in SET_SCORES and not (directory / COHORT).is_file():
            # The fold model's own cohort, from its own training devices, as dnp-train ships one.
            write_text_atomic(directory / COHORT, json.dumps(build(str(directory), data)) + "\n")
        scorer = ModelScorer(directory, host_score=host_score)
        ev = evaluate_scorer(protocol, scorer)
        names = ev.names
        truth = np.asarray([names.index(d) for d in ev.capture_devices])
        cols = [names.index(n) for n in held]
        assert ev.capture_scores is not None
        scores = ev.capture_scores
        per_fp = metrics.host_rank1(scores, truth, ev.capture_positions)
        for k in cols:
            ranks += per_fp.get(k, [])
            aucs.append(metrics.roc_auc(scores[:, k], truth == k))
        mine = np.isin(truth, cols)
        top1 += list(scores[mine].argmax(axis=1) == truth[mine])
        own = truth[:, None] == np.asarray(cols)[None, :]
        own_all.append(own)
        for a in RATES:
            if ev.capture_false_match is not None:
                matched[a].append(ev.capture_false_match[:, cols] <= a)
    result: dict = {
        "host_score": host_score,
        "fingerprints": len(aucs),
        "host_rank1": float(np.mean(ranks)),
        "host_auc": float(np.nanmean(aucs)),
        "capture_top1": float(np.mean(top1)),
    }
    if matched[RATES[0]]:
        own = np.concatenate([o.ravel() for o in own_all])
        result["verdict"] = {}
        for a in RATES:
            m = np.concatenate([x.ravel() for x in matched[a]])
            result["verdict"][str(a)] = {
                "false_match_rate": float(m[~own].mean()),
                "miss_rate": float((~m[own]).mean()),
            }
    return result


@click.command()
@click.option("--cv", "folds", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The fold models of dnp-train --cv --fold-models DIR.")  # fmt: skip
@click.option(
    "--data", type=click.Path(exists=True, file_okay=False), help="Data folder (default: $DNP_DATA)"
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the figures as JSON.")
def main(folds: Path, data: str | None, json_path: str | None) -> None:
    """Measure every host score and the verdict on the fold models' held-out fingerprints."""
    results = [measure(folds, data, how) for how in HOST_SCORES]
    for r in results:
        click.echo(
            f"{r['host_score']:8s} host_rank1 {r['host_rank1']:.3f}  host_auc {r['host_auc']:.3f}  "
            f"capture_top1 {r['capture_top1']:.3f}  ({r['fingerprints']} held-out fingerprints)"
        )
    for r in results:
        for rate, v in r.get("verdict", {}).items():
            click.echo(
                f"{r['host_score']:8s} --max-false-match {rate:<7s} false_match_rate "
                f"{v['false_match_rate']:.4f}  miss_rate {v['miss_rate']:.4f}"
            )
    if json_path:
        from tool.files import write_text_atomic

        write_text_atomic(Path(json_path), json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
