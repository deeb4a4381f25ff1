"""Leave-lab-out validation, the cross-lab rule of ../shared/EVALUATION.md: `python -m export.crosslab`.

    python -m export.crosslab --ae-steps 400 --proto-steps 400                  # both directions
    python -m export.crosslab --ae-steps 400 --proto-steps 400 --lexical 0,0.3,0.5 --folds

Each trial trains one model with dnp-train's recipe (the same settings and seed) and measures it on a
lab's development half the way dnp-eval does (`--half dev`: every device enrolled on the first 20
packets of its capture 1, its captures 2-10 the hosts), through the runtime's own scoring (the `set`
host score): capture_top1 and host_rank1, with the plain char n-gram of dnp-eval on the same trials.
- `iot-sentinel -> uclouvain-boot`: trained on the development half of iot-sentinel's 23 devices,
  measured on lab2's 10; `uclouvain-boot -> iot-sentinel` the other way round.
- `--folds`: dnp-23's five leave-devices-out folds (export.train.CV23_FOLDS): trained on iot-sentinel's
  development half less the fold, measured on its development half, the fold's fingerprints (host_rank1)
  and captures (capture_top1) only.
`--lexical W,...` measures each trained model again with the lexical channel (export.model.LexicalChannel)
at those fusion weights (0: none, the model as trained); its idf is computed from the trial's training
texts. No test half is read.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from export.config import Config
from export.train import (
    CV23_FOLDS,
    SEED,
    SETTINGS,
    TrainConfig,
    lexical_channel,
    load_data,
    merge_data,
    save_model,
    setting_options,
    train_net,
)
from tool.files import write_text_atomic


@dataclass
class Trial:
    """Train on `train` ({lab name: device names}), measure on `test`'s development half."""

    name: str
    train: dict[str, list[str]]
    test: str
    held_out: list[str] | None = None  # measure these fingerprints and captures only (None: all)


def trials(directions: bool, folds: bool) -> list[Trial]:
    """The leave-lab-out directions and dnp-23's development folds."""
    from tool.evaluation.dataset import IOT_SENTINEL, UCLOUVAIN_BOOT

    out = []
    if directions:
        out.append(Trial("iot-sentinel -> uclouvain-boot", {"iot-sentinel": list(IOT_SENTINEL.devices)},
                         "uclouvain-boot"))  # fmt: skip
        out.append(Trial("uclouvain-boot -> iot-sentinel", {"uclouvain-boot": list(UCLOUVAIN_BOOT.devices)},
                         "iot-sentinel"))  # fmt: skip
    if folds:
        for number, fold in enumerate(CV23_FOLDS, 1):
            kept = [n for n in IOT_SENTINEL.devices if n not in fold]
            out.append(Trial(f"dnp-23 fold {number}", {"iot-sentinel": kept}, "iot-sentinel", list(fold)))
    return out


def training_data(trial: Trial, cfg: Config, other_hosts: bool = False):
    """The development half of the trial's training devices, the labs merged; with `other_hosts`, the
    other hosts of those devices' captures too (export.train.other_host_captures: the held-out
    devices' folders are not read)."""
    from tool.evaluation.dataset import lab_named

    parts = [
        load_data(None, names, cfg.uses_length, True, True, lab_named(lab), cfg.fields, other_hosts)
        for lab, names in trial.train.items()
    ]
    return parts[0] if len(parts) == 1 else merge_data(parts)


def fused_channel(ids, data, cfg: Config, weight: float, dim: int, idf_unit: str, cache: dict):
    """The lexical channel at `weight` for a model trained on `data` (its idf computed once per trial)."""
    from export.model import LexicalChannel

    lcfg = replace(cfg, lexical_dim=dim, lexical_weight=weight)
    if "idf" not in cache:
        cache["idf"] = lexical_channel(lcfg, ids, data, idf_unit).idf
    return LexicalChannel(lcfg, cache["idf"])


class Measure:
    """The development-half protocols of both labs, read once, and the n-gram's figures on them (with
    `fields`, also the n-gram of the texts with the dissected fields' tag, "ngram_fields")."""

    def __init__(self, fields: bool = False):
        self.protocols: dict[str, Any] = {}
        self.ngram: dict[str, Any] = {}
        self.ngram_fields: dict[str, Any] = {}
        self.fields = fields

    def protocol(self, lab: str):
        from tool.evaluation.baselines import evaluate_ngram
        from tool.evaluation.protocol import load_protocol

        if lab not in self.protocols:
            self.protocols[lab] = load_protocol(None, "dev", lab)
            self.ngram[lab] = evaluate_ngram(self.protocols[lab])
            if self.fields:
                self.ngram_fields[lab] = evaluate_ngram(self.protocols[lab], fields=True)
        return self.protocols[lab]

    def references(self, trial: Trial) -> dict[str, dict[str, float]]:
        """The n-gram's numbers on the trial (and the fields' n-gram's, with `fields`)."""
        self.protocol(trial.test)
        out = {"ngram": numbers(self.ngram[trial.test], trial.held_out)}
        if self.fields:
            out["ngram_fields"] = numbers(self.ngram_fields[trial.test], trial.held_out)
        return out

    def __call__(self, model_dir: Path, trial: Trial) -> dict[str, dict[str, float]]:
        from tool.evaluation.protocol import ModelScorer, evaluate_scorer

        protocol = self.protocol(trial.test)
        ev = evaluate_scorer(protocol, ModelScorer(model_dir))
        return {"model": numbers(ev, trial.held_out), **self.references(trial)}


def numbers(ev, held_out: list[str] | None) -> dict[str, float]:
    """capture_top1 (captures of the held-out devices, among every fingerprint) and host_rank1 (the
    held-out fingerprints' trials, among every device's host) of one evaluation."""
    from tool.evaluation import metrics

    names = ev.names
    held = set(held_out or names)
    truth = [names.index(d) for d in ev.capture_devices]
    scores = ev.capture_scores
    mine = [c for c, d in enumerate(ev.capture_devices) if d in held]
    top1 = float(np.mean([scores[c].argmax() == truth[c] for c in mine]))
    ranks = metrics.host_rank1(scores, truth, ev.capture_positions)
    hits = [h for k, v in ranks.items() if names[k] in held for h in v]
    return {
        "capture_top1": round(top1, 4),
        "host_rank1": round(float(np.mean(hits)), 4),
        "captures": len(mine),
    }


def run_trials(chosen: list[Trial], cfg: Config, tc: TrainConfig, seed: int, weights: list[float], dim: int,
               idf_unit: str, models: Path, log) -> list[dict]:  # fmt: skip
    """Train each trial's model once and measure it at every lexical weight; one row per (trial, weight)."""
    measure = Measure(cfg.fields)
    rows = []
    for trial in chosen:
        log(f"{trial.name}: training on {sum(len(v) for v in trial.train.values())} devices")
        start = time.time()
        data = training_data(trial, cfg, tc.other_hosts)
        net, ids, result = train_net(data, cfg, tc, seed, log)
        seconds = time.time() - start
        cache: dict = {}
        for w in weights:
            lexical = fused_channel(ids, data, cfg, w, dim, idf_unit, cache) if w > 0 else None
            out = models / trial.name.replace(" ", "").replace("->", "-to-") / f"lexical{w:g}"
            names = data.devices
            extra = {"training_data": {"labs": trial.train, "captures": "development half (captures 1-10)"}}
            save_model(net, out, data, result, names, tc, seed, seconds, extra, lexical)
            got = measure(out, trial)
            row = {"trial": trial.name, "lexical_weight": w, **got, "train_seconds": round(seconds, 1)}
            rows.append(row)
            log(f"{line(trial, w, got)}   (capture_top1 / host_rank1, {got['model']['captures']} captures)")
    return rows


def fused_model(directory: Path, channel):
    """The plain model in `directory` with `channel` beside it, computed in torch: what encoder.onnx
    gives once the channel is exported into it (tests/test_crosslab.py checks the two agree)."""
    import math

    import torch

    from tool.model import Model, encode_bytes, model_input

    class Fused(Model):
        def embed(self, texts, lengths):
            width, self.embedding_dim = self.embedding_dim, learnt_dim  # Model.embed fills this width
            try:
                learnt = Model.embed(self, texts, lengths)
            finally:
                self.embedding_dim = width
            strings = [model_input(t, n, self.uses_length) for t, n in zip(texts, lengths)]
            with torch.no_grad():
                lexical = channel(torch.from_numpy(encode_bytes(strings, self.max_len))).numpy()
            w = channel.cfg.lexical_weight
            return np.concatenate([math.sqrt(1 - w) * learnt, math.sqrt(w) * lexical], 1).astype(np.float32)

        def prototype(self, support):
            return np.asarray(support, dtype=np.float32).mean(0)  # the head of a --mean-proto model

    model = Model.load(directory)
    if model.manifest["config"].get("proto_net"):
        raise click.UsageError(f"{directory}: a lexical channel needs a --mean-proto model")
    learnt_dim = model.embedding_dim
    model.__class__ = Fused
    model.embedding_dim += channel.cfg.lexical_dim
    return model


def remeasure(chosen: list[Trial], cfg: Config, weights: list[float], dim: int, idf_unit: str, models: Path,
              log, other_hosts: bool = False) -> list[dict]:  # fmt: skip
    """run_trials on the plain models a run with --models kept, without training: each is measured
    with the lexical channel of these settings beside it (fused_model). With `cfg.fields`, the models
    read the texts with the dissected fields' tag (and the channel's idf counts them), trained on it
    or not: what the tag alone does to the same learnt encoder."""
    from tool.evaluation.protocol import ModelScorer, evaluate_scorer

    measure = Measure(cfg.fields)
    rows = []
    for trial in chosen:
        plain = models / trial.name.replace(" ", "").replace("->", "-to-") / "lexical0"
        data = training_data(trial, cfg, other_hosts)  # the idf's documents, as the models trained
        ids = torch_ids(data, cfg)
        cache: dict = {}
        for w in weights:
            scorer = ModelScorer(plain)
            if w > 0:
                scorer.model = fused_model(plain, fused_channel(ids, data, cfg, w, dim, idf_unit, cache))
            if cfg.fields:
                scorer.model.fields = True
            ev = evaluate_scorer(measure.protocol(trial.test), scorer)
            got = {"model": numbers(ev, trial.held_out), **measure.references(trial)}
            rows.append({"trial": trial.name, "lexical_weight": w, **got})
            log(line(trial, w, got))
    return rows


def line(trial: Trial, weight: float, got: dict[str, dict[str, float]]) -> str:
    """One measured row for the log: the model's capture_top1 / host_rank1 and the n-gram's."""

    def pair(who: str) -> str:
        return f"{got[who]['capture_top1']:.3f} / {got[who]['host_rank1']:.3f}"

    out = f"  {trial.name:32s} lexical {weight:<4g} model {pair('model')}   n-gram {pair('ngram')}"
    if "ngram_fields" in got:
        out += f"   n-gram with fields {pair('ngram_fields')}"
    return out


def torch_ids(data, cfg: Config):
    import torch

    from tool.model import encode_bytes

    return torch.from_numpy(encode_bytes(data.strings, cfg.max_len))


REFERENCES = ("model", "ngram", "ngram_fields")  # what a row measures, each capture_top1 / host_rank1


def summary(rows: list[dict]) -> list[dict]:
    """Per lexical weight: each direction, and the mean over the dnp-23 folds (weighted by captures)."""
    out = []
    for w in sorted({r["lexical_weight"] for r in rows}):
        mine = [r for r in rows if r["lexical_weight"] == w]
        entry: dict[str, Any] = {"lexical_weight": w}
        for r in mine:
            if not r["trial"].startswith("dnp-23 fold"):
                entry[r["trial"]] = {k: r[k] for k in REFERENCES if k in r}
        folds = [r for r in mine if r["trial"].startswith("dnp-23 fold")]
        if folds:
            entry["dnp-23 folds"] = {
                who: {
                    m: round(
                        float(
                            np.average(
                                [f[who][m] for f in folds], weights=[f[who]["captures"] for f in folds]
                            )
                        ),
                        4,
                    )
                    for m in ("capture_top1", "host_rank1")
                }
                for who in REFERENCES
                if who in folds[0]
            }
        out.append(entry)
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--directions/--no-directions", default=True, show_default=True, help="The two leave-lab-out directions."
)
@click.option("--only", default=None, help="Run only the trials whose name contains this text.")
@click.option("--folds", is_flag=True, help="Also dnp-23's five leave-devices-out development folds.")
@click.option(
    "--lexical",
    "weights",
    default="0",
    show_default=True,
    help="Comma-separated fusion weights of the lexical channel to measure each model at (0: none).",
)
@click.option(
    "--models",
    "models_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep each trial's models here (default: a temporary folder).",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every row and the summary as JSON here.",
)
@click.option(
    "--from-models",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="No training: measure the plain models an earlier run kept with --models, with the lexical "
    "channel beside them (with --fields: reading the fields' tag, though they trained without it).",
)
@click.option("--seed", type=int, default=SEED, show_default=True)
@setting_options
def main(only, directions, folds, weights, models_dir, report, from_models, seed, **options) -> None:
    """Train on one lab's development half, measure on the other's, both ways (and dnp-23's folds)."""
    import torch

    cfg = Config(**{n: options.pop(n) for _, n, _ in SETTINGS if n in Config.__dataclass_fields__})
    tc = TrainConfig(**options)
    torch.set_num_threads(tc.threads)
    # The models train without the channel; it is fused at each weight afterwards.
    dim = cfg.lexical_dim
    if not dim and any(float(w) > 0 for w in weights.split(",")):
        raise click.UsageError("--lexical weights above 0 need --lexical-dim above 0")
    cfg = replace(cfg, lexical_dim=0)
    chosen = [t for t in trials(directions, folds) if not only or only in t.name]
    ws = [float(w) for w in weights.split(",")]
    settings = {"config": cfg.to_dict(), "train": asdict(tc), "seed": seed, "lexical_dim": dim,
                "lexical_ngrams": f"{cfg.lexical_min_n}-{cfg.lexical_max_n}",
                "lexical_buckets": cfg.lexical_buckets}  # fmt: skip
    click.echo(json.dumps(settings))
    if from_models:
        rows = remeasure(chosen, cfg, ws, dim, tc.lexical_idf, from_models, click.echo, tc.other_hosts)
    else:
        with tempfile.TemporaryDirectory(prefix="dnp-crosslab-") as tmp:
            models = models_dir or Path(tmp)
            rows = run_trials(chosen, cfg, tc, seed, ws, dim, tc.lexical_idf, models, click.echo)
    table = summary(rows)
    for entry in table:
        click.echo(json.dumps(entry))
    if report:
        write_text_atomic(report, json.dumps({**settings, "rows": rows, "summary": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
