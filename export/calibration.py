"""Measure what a verdict's false-match rate is on labs the model never trained on, and ship it.

    python -m export.calibration --held-out MODELS:PROTOCOL [--held-out ...] [--models DIR]

A cohort rate (tool/cohort.py) is counted over the training lab's devices, which the model knows:
on a lab it never saw, many more hosts reach the same score. So the stated rate is measured where
the model had no part, as the cross-lab rule of EVALUATION.md asks: each `--held-out` model was
trained on one lab only (`python -m export.crosslab` keeps them), gets the cohort its own training
captures give (export.cohort, as the shipped model's), and scans the development half of the other
lab (PROTOCOL: dnp-23 or lab2) as "every host on the wire" does (tool.evaluation.wire). Every pair of
a fingerprint with a host of another vendor, or with the router, is a held-out impostor pair; its
margin is its score less the fingerprint's anchor (the score ANCHOR of its cohort's impostors reach).
The margins of all held-out models, pooled, go into the shipped cohort.json as its `calibration`.

It prints, for each held-out model and for the pool, the rate each margin threshold states against
the rate measured there, and, fitted on each held-out model alone, the rate measured on the others:
the check that the calibration carries from one lab to another. Reads development halves only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from tool.cohort import ANCHOR, COHORT, TYPE

RATES = (0.001, 0.003, 0.01, 0.03)


@dataclass
class HeldOut:
    """One held-out model's pairs on a lab it never trained on: margins of its impostor pairs (another
    vendor's host) and of its own pairs, and how many router pairs (never named) it had."""

    name: str
    impostors: np.ndarray
    own: np.ndarray
    routers: int

    @property
    def pairs(self) -> int:
        return len(self.impostors) + self.routers


def held_out(models: str, protocol: str, leave_out: str, same_traffic: float | None) -> HeldOut:
    """Scan `protocol`'s development merges with the held-out model in `models` and keep its margins;
    its cohort leaves out what the shipped one does (`leave_out`, `same_traffic`), so that the anchors
    mean the same."""
    from export.cohort import build
    from tool.cohort import Cohort
    from tool.evaluation.protocol import load_protocol
    from tool.evaluation.wire import OTHER_BRAND, OTHER_HOST, OWN, ROUTER, measure
    from tool.files import write_text_atomic
    from tool.fingerprint import Fingerprint
    from tool.model import Model
    from tool.scan import scan

    model = Model.load(models)
    cohort = Cohort.load(model)
    if cohort is None:  # the cohort its own training captures give, as the shipped model's
        text = json.dumps(build(models, None), separators=(",", ":")) + "\n"
        write_text_atomic(model.directory / COHORT, text)
        cohort = Cohort.load(model)
    assert cohort is not None
    cohort.leave_out, cohort.same_traffic = leave_out, same_traffic
    data = load_protocol(None, "dev", protocol)
    trained = {d for lab in model.manifest["training_data"].get("labs", {}).values() for d in lab}
    # Only the devices the model never trained on are fingerprints: every one on another lab, the
    # fold's on a leave-devices-out model of the same lab (export.crosslab --folds).
    fps = [
        Fingerprint.from_packets(model, data.enrollment[d.name], d.name)
        for d in data.devices
        if d.name not in trained
    ]
    anchor = dict(zip((f.name for f in fps), Cohort.anchors(cohort.impostors(fps), ANCHOR)))
    wire = measure(data, lambda path: scan(path, fps, model).hosts)
    margin = {OWN: [], OTHER_BRAND: [], OTHER_HOST: [], ROUTER: []}
    for p in wire.pairs:
        margin.get(p.relation, []).append(p.score - anchor[p.fingerprint])
    return HeldOut(
        f"{model.encoder_sha256[:12]} on {protocol}",
        np.sort(np.asarray(margin[OTHER_BRAND] + margin[OTHER_HOST])),
        np.asarray(margin[OWN]),
        len(margin[ROUTER]),
    )


def threshold(impostors: np.ndarray, pairs: int, rate: float) -> float:
    """The lowest margin that at most `rate` of the pairs reach."""
    top = np.sort(impostors)[::-1]
    k = int(np.floor(rate * pairs))
    return float(top[k]) + 1e-9 if k < len(top) else -np.inf


def report(sets: list[HeldOut], checks: list[HeldOut] = ()) -> list[str]:
    """Stated against measured rates: fitted on the pool, measured on each set and on the `checks`
    (held out, not fitted on), and fitted on each set alone, measured on the others ("measured /
    stated, own hosts reaching it")."""
    impostors = np.sort(np.concatenate([s.impostors for s in sets]))
    pool = HeldOut("pooled", impostors, np.array([]), sum(s.routers for s in sets))
    lines = []
    fits = [(pool, [*sets, *checks])] + [(s, [t for t in sets if t is not s]) for s in sets if len(sets) > 1]
    for fit, measured in fits:
        cells = []
        for rate in RATES:
            t = threshold(fit.impostors, fit.pairs, rate)
            on = [
                f"{(m.impostors >= t).sum() / m.pairs / rate:.1f}x, own {(m.own >= t).mean():.2f}"
                for m in measured
            ]
            cells.append(f"{rate:g}: " + "; ".join(on))
        lines.append(f"fitted on {fit.name}, measured on " + ", ".join(m.name for m in measured))
        lines.append("  " + " | ".join(cells))
    return lines


def model_and_protocol(item: str, option: str) -> tuple[str, str]:
    folder, _, protocol = item.rpartition(":")
    if not folder or protocol not in ("dnp-23", "lab2"):
        raise click.BadParameter(f"{item}: give MODELS:PROTOCOL (dnp-23, lab2)", param_hint=option)
    return folder, protocol


@click.command()
@click.option(
    "--held-out",
    "held",
    multiple=True,
    required=True,
    metavar="MODELS:PROTOCOL",
    help="A model folder trained on one lab, and the other lab's protocol (dnp-23, lab2).",
)
@click.option(
    "--check",
    multiple=True,
    metavar="MODELS:PROTOCOL",
    help="Measured with the calibration, not fitted on: a leave-devices-out model of one lab (its "
    "held-out devices' fingerprints) and that lab's protocol.",
)
@click.option(
    "--models", type=click.Path(exists=True, file_okay=False), help="Model folder (default: shipped)."
)
def main(held: tuple[str, ...], check: tuple[str, ...], models: str | None) -> None:
    """Measure the false-match rate on labs each held-out model never saw; write it into the model's
    cohort.json as its calibration."""
    from tool.files import write_text_atomic
    from tool.model import models_dir

    path = (Path(models) if models else models_dir()) / COHORT
    cohort = json.loads(path.read_text(encoding="utf-8"))
    rule = cohort.get("leave_out", TYPE), cohort.get("same_traffic")
    sets = [held_out(*model_and_protocol(item, "--held-out"), *rule) for item in held]
    checks = [held_out(*model_and_protocol(item, "--check"), *rule) for item in check]
    for line in report(sets, checks):
        click.echo(line)
    cohort["calibration"] = {
        "anchor": ANCHOR,
        "pairs": sum(s.pairs for s in sets),
        "measured_on": [f"{s.name}: {s.pairs} pairs ({s.routers} of the router)" for s in sets],
        "margins": [round(float(m), 6) for m in np.sort(np.concatenate([s.impostors for s in sets]))],
    }
    write_text_atomic(path, json.dumps(cohort, separators=(",", ":")) + "\n")
    click.echo(f"{path}: calibration of {cohort['calibration']['pairs']} held-out pairs")


if __name__ == "__main__":
    main()
