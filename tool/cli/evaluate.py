"""dnp-eval: the dnp-23 evaluation of the shipped model (../shared/EVALUATION.md), with baselines."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import click

from tool.cli.common import run

EXAMPLE = """
Examples:

  dnp-eval

  dnp-eval --baselines --json report.json --plot figures/

  dnp-eval --data ~/captures/iot --json - | jq .capture_top1
"""

CONFUSIONS_SHOWN = 12
METHOD_TITLES = {"deepnetprint": "DeepNetPrint", "ngram": "n-gram TF-IDF", "iot_sentinel": "IoT Sentinel *"}


@click.command(epilog=EXAMPLE)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False),
    help="Data folder, one sub-folder per device type with _iotdevice-mac.txt "
    "(default: $DNP_DATA, else ../shared/data/iot-sentinel).",
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
def command(
    data: str | None, json_path: str | None, plot_dir: str | None, baselines: bool, models: str | None
) -> int:
    """Measure the model on the dnp-23 protocol: enroll each device from the first 20 packets of
    its first capture, then identify its test captures (11-20) among all devices' fingerprints.

    Devices outside the 12 seen by training count as unseen. A device with fewer than 11
    captures is tested on the captures after those its enrollment used.
    """
    from tool.evaluate import EvaluationError, ModelScorer, evaluate_scorer, load_protocol, summarise

    started = time.perf_counter()
    status = _Status(json_path == "-")
    try:
        # The data folder's layout first (instant), the model next, the captures last (seconds).
        _check_data(data)
        status.say("loading the model")
        scorer = ModelScorer(models)
        status.say("reading the captures")
        t0 = time.perf_counter()
        protocol = load_protocol(data)
        read_seconds = time.perf_counter() - t0
        if not protocol.tests:
            raise EvaluationError("no test captures: every device needs captures after its enrollment")
        status.say(f"scoring {sum(len(t.packets) for t in protocol.tests):,} test packets")
        evaluations = [evaluate_scorer(protocol, scorer)]
        if baselines:
            evaluations += _run_baselines(protocol, status)
    except EvaluationError as e:
        raise click.ClickException(str(e)) from None
    finally:
        status.stop()

    report = summarise(evaluations[0])
    if len(evaluations) > 1:
        report["baselines"] = {ev.method: summarise(ev) for ev in evaluations[1:]}
    report["data"] = str(Path(protocol.root).resolve()) if protocol.root else str(_default_data())
    report["devices"] = {
        "all": len(protocol.devices),
        "seen": sum(d.split == "seen" for d in protocol.devices),
        "unseen": sum(d.split == "unseen" for d in protocol.devices),
    }
    if protocol.empty_tests:
        report["empty_test_captures"] = protocol.empty_tests
    report["timing"] = {
        "read_seconds": round(read_seconds, 2),
        **{f"{ev.method}_seconds": round(ev.seconds, 2) for ev in evaluations},
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    figures = []
    if plot_dir:
        try:
            from tool.plots import write_plots
        except ImportError:
            raise click.ClickException("--plot needs matplotlib: pip install 'deepnetprint[eval]'") from None
        figures = write_plots(evaluations, plot_dir)
        report["figures"] = [str(p) for p in figures]
    text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
    if json_path == "-":
        sys.stdout.write(text)
        return 0
    if json_path:
        from tool.fingerprint import write_atomic

        write_atomic(Path(json_path), text)
    _print_tables(report)
    return 0


def _check_data(data: str | None) -> None:
    from tool.capture import CaptureError
    from tool.dataset import load_devices
    from tool.evaluate import EvaluationError

    try:
        load_devices(data)
    except CaptureError as e:
        raise EvaluationError(str(e)) from None


def _default_data() -> Path:
    from tool.dataset import default_data_dir

    return default_data_dir().resolve()


def _run_baselines(protocol: Any, status: _Status) -> list[Any]:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise click.ClickException(
            "--baselines needs scikit-learn: pip install 'deepnetprint[eval]'"
        ) from None
    from tool.baselines import NgramScorer, evaluate_sentinel, ngram_fit_texts
    from tool.evaluate import evaluate_scorer

    status.say("n-gram baseline")
    ngram = evaluate_scorer(protocol, NgramScorer(ngram_fit_texts(protocol)))
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
        # Piped output: plain columns, no colour, never wrapped at 80 characters.
        console = Console(highlight=False, no_color=True, width=200, soft_wrap=True)
    style = box.SIMPLE_HEAD if tty else None
    reports = {report["method"]: report, **report.get("baselines", {})}

    def table(title: str) -> Table:
        return Table(title=title, box=style, title_justify="left", pad_edge=False)

    t = table(f"dnp-23: {report['captures']['all']} test captures of {report['devices']['all']} devices")
    for col in ("method", "capture all", "seen", "unseen", "brand all", "packet AUC", "seen", "unseen",
                "bal. acc.", "1-packet"):  # fmt: skip
        t.add_column(col, justify="left" if col == "method" else "right")
    for method, r in reports.items():
        t.add_row(
            METHOD_TITLES.get(method, method),
            *(_fmt(r["capture_top1"][k]) for k in ("all", "seen", "unseen")),
            _fmt(r["brand_top1"]["all"]),
            *(_fmt(r["packet_auc"][k]) for k in ("all", "seen", "unseen")),
            _fmt(r["packet_balanced_accuracy"]["all"]),
            _fmt(r["single_packet_top1"]["all"]),
        )
    console.print(t)
    if "iot_sentinel" in reports:
        console.print(
            "* IoT Sentinel is supervised: it trains on captures 1-10 of all devices, the unseen ones "
            "included,\n  so its seen/unseen columns only split the device list; it classifies captures, "
            "so it has no packet scores."
        )
    console.print()

    t = table("capture_top1 per device")
    t.add_column("device")
    t.add_column("split")
    t.add_column("captures", justify="right")
    for method in reports:
        t.add_column(METHOD_TITLES.get(method, method), justify="right")
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
    t.add_column("brand")
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
    t.add_column("true device")
    t.add_column("predicted")
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
