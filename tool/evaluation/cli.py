"""dnp-eval: the dnp-23 or lab2 evaluation of the shipped model (../shared/EVALUATION.md), with baselines."""

from __future__ import annotations

import json
import math
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import click

from tool.cli.common import host_score_option, run

EXAMPLE = """
Examples:

  dnp-eval

  dnp-eval --protocol lab2 --baselines

  dnp-eval --baselines --json report.json --plot figures/

  dnp-eval --data ~/captures/iot --json - | jq .capture_top1
"""

CONFUSIONS_SHOWN = 12
METHOD_TITLES = {"deepnetprint": "DeepNetPrint", "ngram": "n-gram", "iot_sentinel": "Sentinel*"}


@click.command(epilog=EXAMPLE)
@click.option(
    "--protocol",
    "protocol_name",
    type=click.Choice(["dnp-23", "lab2"]),
    default=None,
    help="dnp-23 (IoT Sentinel's 23 device types) or lab2 (uclouvain-boot's 10 devices) "
    "[default: the one the --data folder holds, else dnp-23].",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False),
    help="Data folder, one sub-folder per device type with _iotdevice-mac.txt (default: the protocol's "
    "lab under ../shared/data from the working folder; for dnp-23 $DNP_DATA first).",
)
@click.option(
    "--json", "json_path", metavar="PATH", help="Write the report as JSON ('-': only JSON, to stdout)."
)
@click.option(
    "--plot", "plot_dir", type=click.Path(file_okay=False), help="Write PNG figures into this folder."
)
@click.option(
    "--baselines",
    is_flag=True,
    help="Also run the n-gram TF-IDF matcher and IoT Sentinel, side by side (needs scikit-learn).",
)
@click.option(
    "--models", type=click.Path(exists=True, file_okay=False), help="Model folder (default: shipped)."
)
@click.option(
    "--half",
    type=click.Choice(["test", "dev"]),
    default="test",
    show_default=True,
    help="test: the protocol's test half (captures 11-20); dev: captures 2-10, where settings are chosen.",
)
@click.option(
    "--wire",
    is_flag=True,
    help="Also scan every test position's merge with the router (EVALUATION.md's every host on the "
    "wire): router verdicts, own and false verdicts, measured against stated false-match rate.",
)
@host_score_option(
    "The host score measured (as dnp-scan's --host-score); first20 is the paper's mean p(Target)."
)
def command(
    protocol_name: str | None,
    data: str | None,
    json_path: str | None,
    plot_dir: str | None,
    baselines: bool,
    models: str | None,
    half: str,
    wire: bool,
    host_score: str,
) -> int:
    """Measure the model on the dnp-23 or lab2 protocol: enroll each device from the first 20
    packets of its first capture, then identify its test captures (11-20) among all devices'
    fingerprints.

    Devices outside the 12 seen by the paper's training count as unseen (every lab2 device). A
    device with fewer than 11 captures is tested on the captures after those its enrollment used.
    """
    from tool.evaluation.protocol import (
        EvaluationError,
        ModelScorer,
        evaluate_scorer,
        load_protocol,
        summarise,
    )

    started = time.perf_counter()
    status = _Status(json_path == "-")
    # What can fail fast does: optional packages, the data folder's layout, the model; then the work.
    if baselines:
        _need("sklearn", "--baselines")
    if plot_dir:
        _need("matplotlib", "--plot")
    from tool.files import check_outputs

    check_outputs({"--json": json_path}, {})
    try:
        lab = _lab(protocol_name, data)
        data = data or str(_default_data(lab))
        _check_data(data, lab)
        status.say("loading the model")
        t0 = time.perf_counter()
        scorer = ModelScorer(models, host_score=host_score)
        load_seconds = time.perf_counter() - t0
        status.say("reading the captures")
        t0 = time.perf_counter()
        protocol = load_protocol(data, half, lab)
        read_seconds = time.perf_counter() - t0
        if not protocol.tests:
            raise EvaluationError("no test captures: every device needs captures after its enrollment")
        status.say(f"scoring {sum(len(t.packets) for t in protocol.tests):,} test packets")
        evaluations = [evaluate_scorer(protocol, scorer, curves=True)]
        if baselines:
            evaluations += _run_baselines(protocol, status, scorer.model.fields)
        on_wire = None
        if wire:
            from tool.evaluation.wire import wire_report

            status.say("scanning every test position's merge with the router")
            on_wire = wire_report(protocol, models)
    except EvaluationError as e:
        raise click.ClickException(str(e)) from None
    finally:
        status.stop()

    report = summarise(evaluations[0])
    if len(evaluations) > 1:
        report["baselines"] = {ev.method: summarise(ev) for ev in evaluations[1:]}
    report["half"] = half
    report["lab"] = protocol.lab.name
    report["router"] = protocol.lab.router
    report["data"] = str(Path(protocol.root).resolve()) if protocol.root else str(_default_data(protocol.lab))
    report["devices"] = {
        "all": len(protocol.devices),
        "seen": sum(d.split == "seen" for d in protocol.devices),
        "unseen": sum(d.split == "unseen" for d in protocol.devices),
    }
    trained = list(scorer.model.manifest.get("training_data", {}).get("devices", []))
    report["model_trained_on"] = trained
    # A product model may train on the development half of all 23 devices (docs/evaluation.md): its
    # "unseen" devices are then seen too. The columns keep the protocol's lists, and say so.
    report["unseen_trained"] = sorted(
        d.name for d in protocol.devices if d.split == "unseen" and d.name in trained
    )
    if protocol.empty_tests:
        report["empty_test_captures"] = protocol.empty_tests
    if on_wire is not None:
        report["wire"] = on_wire
    if plot_dir:
        from tool.evaluation.plots import write_host_plots, write_plots

        figures = write_plots(evaluations, plot_dir) + write_host_plots(evaluations[0], report, plot_dir)
        report["figures"] = [str(p) for p in figures]
    report["timing"] = {
        "model_load_seconds": round(load_seconds, 2),
        "read_seconds": round(read_seconds, 2),
        **{f"{ev.method}_seconds": round(ev.seconds, 2) for ev in evaluations},
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
    if json_path == "-":
        sys.stdout.write(text)
        return 0
    if json_path:
        from tool.files import write_text_atomic

        write_text_atomic(Path(json_path), text)
    _print_tables(report)
    return 0


def _lab(protocol_name: str | None, data: str | None) -> Any:
    """The lab measured: the one --protocol names, else the one the --data folder holds."""
    from tool.evaluation.dataset import lab_named, lab_of

    return lab_named(protocol_name) if protocol_name else lab_of(data)


def _check_data(data: str | None, lab: Any) -> None:
    from tool.capture import CaptureError
    from tool.evaluation.dataset import load_devices
    from tool.evaluation.protocol import EvaluationError

    try:
        load_devices(data, lab)
    except CaptureError as e:
        hint = " or the environment variable DNP_DATA" if lab.protocol == "dnp-23" else ""
        raise EvaluationError(f"{e}; give the data set's folder with --data DIR{hint}") from None


def _default_data(lab: Any) -> Path:
    from tool.evaluation.dataset import default_data_dir

    return default_data_dir(lab).resolve()


def _need(module: str, option: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise click.ClickException(f"{option} needs {module}: pip install 'deepnetprint[eval]'")


def _run_baselines(protocol: Any, status: _Status, fields: bool) -> list[Any]:
    """The baselines; the n-gram reads the texts the model reads (with the dissected fields' tag where
    the model's manifest sets config.fields)."""
    from tool.evaluation.baselines import evaluate_ngram, evaluate_sentinel

    status.say("n-gram baseline")
    ngram = evaluate_ngram(protocol, fields)
    status.say("IoT Sentinel baseline (one tshark run, then 23 random forests)")
    return [ngram, evaluate_sentinel(protocol)]


class _Status:
    """A spinner on stderr saying what is running, only for a person at a terminal."""

    def __init__(self, quiet: bool):
        self.status = None
        if not quiet and sys.stderr.isatty():
            from rich.console import Console

            self.status = Console(stderr=True).status("")
            self.status.start()

    def say(self, what: str) -> None:
        if self.status is not None:
            self.status.update(f"dnp-eval: {what}")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _print_tables(report: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    tty = console.is_terminal
    if not tty:
        # Piped output: plain columns, no colour, tables never wrapped at 80 characters; the prose
        # lines between them are wrapped at 100 (see `say`).
        console = Console(highlight=False, no_color=True, width=200, soft_wrap=True)

    def say(text: str) -> None:
        console.print(text if tty else textwrap.fill(text, 100))

    style = box.SIMPLE_HEAD if tty else None
    reports = {report["method"]: report, **report.get("baselines", {})}

    def table(title: str) -> Table:
        return Table(title=title, box=style, title_justify="left", pad_edge=False)

    half = "test captures 11-20" if report.get("half", "test") == "test" else "development captures 2-10"
    t = table(
        f"{report['protocol']}: {report['captures']['all']} {half} of {report['devices']['all']} devices"
    )
    # One row per number, one column per method: the methods side by side, narrow enough for 80 columns.
    t.add_column("metric", no_wrap=True)
    for method in reports:
        t.add_column(METHOD_TITLES.get(method, method), justify="right", no_wrap=True)
    rows = [
        ("capture_top1", "all"),
        ("capture_top1", "seen"),
        ("capture_top1", "unseen"),
        ("brand_top1", "all"),
        ("packet_auc", "all"),
        ("packet_auc", "seen"),
        ("packet_auc", "unseen"),
        ("packet_balanced_accuracy", "all"),
        ("single_packet_top1", "all"),
        ("host_rank1", "all"),
        ("host_rank1", "seen"),
        ("host_rank1", "unseen"),
        ("host_auc", "all"),
        ("host_auc", "seen"),
        ("host_auc", "unseen"),
        ("self_rank1", None),
        ("verdict", "false_match_rate"),
        ("verdict", "miss_rate"),
    ]
    for key, split in rows:
        cells = []
        for r in reports.values():
            value = r.get(key)
            cells.append(_fmt(value.get(split) if isinstance(value, dict) else value))
        t.add_row(f"{key} {split or ''}".strip(), *cells)
    console.print(t)
    if report.get("unseen_trained"):
        say(
            f"The model trained on the development half (captures 1-10) of {len(report['model_trained_on'])}"
            f" devices, {len(report['unseen_trained'])} of the protocol's unseen ones among them: for it "
            "every device is seen, and the seen / unseen rows only follow the protocol's lists. Its figures "
            "on new device types are the held-out ones of the model card."
        )
    verdict = report.get("verdict", {})
    rule = (
        f"false-match rate <= {verdict['max_false_match']:g} against the model's cohort"
        if verdict.get("max_false_match") is not None
        else f"host score >= {verdict.get('threshold')}"
    )
    say(
        f"host score: {report.get('host_score', 'set')}; the verdict rates are DeepNetPrint's at its default "
        f"verdict ({rule}), over (fingerprint, test capture) pairs; the baselines' at a raw 0.5."
    )
    if "wire" in report:
        w = table(f"Every host on the wire: {report['wire']['default']['merges']} merges with the router")
        for header in ("--max-false-match", "router verdicts", "own verdicts", "false: same / other brand",
                       "measured rate"):  # fmt: skip
            w.add_column(header, justify="right", no_wrap=True)
        stated = report.get("verdict", {}).get("max_false_match")
        rows = [(f"{stated:g} (default)" if stated is not None else "default", report["wire"]["default"])]
        rows += [(rate, figures) for rate, figures in report["wire"]["rates"].items()]
        for rate, f in rows:
            false = f"{f['false_verdicts']['same_brand']} / {f['false_verdicts']['other_brand']}"
            w.add_row(str(rate), str(f["router_verdicts"]), _fmt(f["own_verdicts"]), false,
                      _fmt(f["measured_false_match_rate"]))  # fmt: skip
        console.print(w)
    if "iot_sentinel" in reports:
        say(
            "* Sentinel: IoT Sentinel (Miettinen et al., ICDCS 2017) is supervised and trains on captures "
            "1-10 of all devices, the unseen ones included, so its seen/unseen columns only split the device "
            "list; it classifies captures, so it has no packet scores."
        )
    console.print()

    curves = report.get("curves")
    if curves:
        heading = "learning curves: capture_top1 / host_rank1 with n enrollment and m query packets"
        for key, row, column, title in (
            ("enroll_packets", "enrollment", "n={}, m=20", heading),
            ("query_packets", "query", "n=20, m={}", ""),
        ):
            t = table(title)
            t.add_column("packets", no_wrap=True)
            for x in curves[key]:
                t.add_column(column.format(x), justify="right")
            cells = [f"{_fmt(v['capture_top1'])} / {_fmt(v['host_rank1'])}" for v in curves[key].values()]
            t.add_row(row, *cells)
            console.print(t)
        console.print()

    t = table("capture_top1 per device (n: test captures)")
    t.add_column("device", no_wrap=True)
    t.add_column("split")
    t.add_column("n", justify="right")
    for method in reports:
        t.add_column(METHOD_TITLES.get(method, method), justify="right", no_wrap=True)
    t.add_column("packet AUC", justify="right")
    for name, d in report["per_device"].items():
        t.add_row(
            name,
            d["split"],
            str(d["captures"]),
            *(_fmt(r["per_device"][name]["capture_top1"]) for r in reports.values()),
            _fmt(d["packet_auc"]),
        )
    console.print(t)
    console.print()

    t = table("brand_top1 (the predicted device is of the true device's brand)")
    t.add_column("brand", no_wrap=True)
    t.add_column("devices")
    t.add_column("captures", justify="right")
    for method in reports:
        t.add_column(METHOD_TITLES.get(method, method), justify="right")
    for b, entry in report["per_brand"].items():
        t.add_row(
            b,
            ", ".join(entry["devices"]),
            str(entry["captures"]),
            *(_fmt(r["per_brand"][b]["brand_top1"]) for r in reports.values()),
        )
    t.add_row(
        "all", "", str(report["captures"]["all"]), *(_fmt(r["brand_top1"]["all"]) for r in reports.values())
    )
    console.print(t)
    console.print()

    t = table(f"top confusions of {METHOD_TITLES.get(report['method'], report['method'])} (test captures)")
    t.add_column("true device", no_wrap=True)
    t.add_column("predicted", no_wrap=True)
    t.add_column("captures", justify="right")
    for c in report["confusions"][:CONFUSIONS_SHOWN]:
        t.add_row(c["true"], c["predicted"], str(c["count"]))
    if not report["confusions"]:
        t.add_row("(none)", "", "")
    console.print(t)
    timing = report["timing"]
    console.print(f"\nevaluated in {timing['total_seconds']:.0f} s" + (
        f"; figures in {Path(report['figures'][0]).parent}" if report.get("figures") else ""))  # fmt: skip


main = run(command, "dnp-eval")
