"""Figures of a dnp-23 evaluation: confusion matrices, per-device accuracy, ROC curves (PNG files).

matplotlib is the optional extra "eval"; it is imported inside `write_plots`, with the Agg backend,
so plotting needs no display and `dnp-eval --help` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tool.evaluation import metrics
from tool.evaluation.protocol import Evaluation

SEEN_COLOUR = "#1f77b4"
UNSEEN_COLOUR = "#d62728"


def _device_order(ev: Evaluation) -> list[str]:
    """Seen devices first, then unseen, each alphabetical: the split reads off the axes."""
    return sorted(ev.names, key=lambda n: (ev.splits[n] != "seen", n.lower()))


def write_plots(evaluations: Sequence[Evaluation], directory: str | os.PathLike) -> list[Path]:
    """Write the figures of one or more methods' evaluations into `directory`; return their paths.

    - `confusion-<method>.png`: capture-level confusion matrix, rows = true device.
    - `per_device.png`: capture_top1 per device, one bar per method.
    - `roc.png`: each fingerprint's packet-level ROC curve, per method that scores packets.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if not evaluations:
        return written
    order = _device_order(evaluations[0])
    tick_colours = [SEEN_COLOUR if evaluations[0].splits[n] == "seen" else UNSEEN_COLOUR for n in order]

    for ev in evaluations:
        matrix = metrics.confusion_matrix(ev.capture_devices, ev.capture_predicted, order)
        rows = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
        fig, ax = plt.subplots(figsize=(10, 9))
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i, j in zip(*np.nonzero(matrix)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(len(order)), order, rotation=90, fontsize=8)
        ax.set_yticks(range(len(order)), order, fontsize=8)
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            for label, colour in zip(ticks, tick_colours):
                label.set_color(colour)
        ax.set_xlabel("predicted device")
        ax.set_ylabel("true device (blue: seen, red: unseen)")
        accuracy = metrics.accuracy(ev.capture_devices, ev.capture_predicted)
        ax.set_title(f"{ev.method}: test captures, capture_top1 {accuracy:.3f}")
        fig.colorbar(image, ax=ax, fraction=0.046, label="share of the device's captures")
        written.append(_save(fig, out / f"confusion-{ev.method}.png"))

    written.append(_save(per_device_figure(evaluations), out / "per_device.png"))

    scored = [ev for ev in evaluations if ev.packet_scores is not None and ev.packet_labels is not None]
    if scored:
        grid = np.linspace(0, 1, 201)
        fig, axes = plt.subplots(1, len(scored), figsize=(5 * len(scored), 5), squeeze=False)
        for ax, ev in zip(axes[0], scored):
            assert ev.packet_scores is not None and ev.packet_labels is not None
            curves: dict[str, list[np.ndarray]] = {"seen": [], "unseen": []}
            aucs = []
            for k, name in enumerate(ev.names):
                positives = ev.packet_labels == k
                if not positives.any() or positives.all():
                    continue
                fpr, tpr = metrics.roc_curve(ev.packet_scores[:, k], positives)
                aucs.append(metrics.roc_auc(ev.packet_scores[:, k], positives))
                curves[ev.splits[name]].append(np.interp(grid, fpr, tpr))
            # 23 curves cannot be told apart: each split's mean, and the band its devices span.
            for split, colour in (("seen", SEEN_COLOUR), ("unseen", UNSEEN_COLOUR)):
                if not curves[split]:
                    continue
                stack = np.stack(curves[split])
                low, high = np.percentile(stack, [10, 90], axis=0)
                ax.fill_between(grid, low, high, color=colour, alpha=0.15, linewidth=0)
                ax.plot(grid, stack.mean(axis=0), color=colour, linewidth=2,
                        label=f"{split}: mean of {len(stack)} (band: 10th-90th percentile)")  # fmt: skip
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.set_title(
                f"{ev.method}: packet ROC per fingerprint\nmean AUC {np.mean(aucs):.3f}", fontsize=10
            )
            ax.legend(loc="lower right", fontsize=7)
        written.append(_save(fig, out / "roc.png"))
    return written


def per_device_figure(evaluations: Sequence[Evaluation]):  # noqa: ANN201 - a matplotlib Figure
    """capture_top1 per device, one bar per method: the colour says the split, the hatching the method.

    A device none of whose captures is right gets a "0" on its axis, so its bar is not taken for a
    missing one; one method alone is named in the title, and the legend shows only what is drawn.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    order = _device_order(evaluations[0])
    colours = [SEEN_COLOUR if evaluations[0].splits[n] == "seen" else UNSEEN_COLOUR for n in order]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    width = 0.8 / len(evaluations)
    x = np.arange(len(order))
    shades = ("", "//", "..", "xx")
    for m, ev in enumerate(evaluations):
        values = []
        for name in order:
            mine = [(t, p) for t, p in zip(ev.capture_devices, ev.capture_predicted) if t == name]
            acc = metrics.accuracy([t for t, _ in mine], [p for _, p in mine])
            values.append(0.0 if np.isnan(acc) else acc)
        where = x + (m - (len(evaluations) - 1) / 2) * width
        ax.bar(where, values, width, color=colours, hatch=shades[m % len(shades)], edgecolor="white",
               linewidth=0.5)  # fmt: skip
        for at, value, colour in zip(where, values, colours):
            if value == 0:
                ax.text(at, 0.01, "0", ha="center", va="bottom", fontsize=8, color=colour, fontweight="bold")
    ax.set_xticks(x, order, rotation=90, fontsize=8)
    for label, colour in zip(ax.get_xticklabels(), colours):
        label.set_color(colour)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("capture_top1")
    methods = "" if len(evaluations) > 1 else f", {evaluations[0].method}"
    ax.set_title(f"dnp-23: capture accuracy per device{methods} (blue: seen, red: unseen)")
    handles = [Patch(facecolor=SEEN_COLOUR, label="seen"), Patch(facecolor=UNSEEN_COLOUR, label="unseen")]
    if len(evaluations) > 1:
        handles += [
            Patch(
                facecolor="white",
                edgecolor="dimgrey",
                hatch=shades[m % len(shades)],
                label=ev.method + (" (solid)" if not shades[m % len(shades)] else ""),
            )  # fmt: skip
            for m, ev in enumerate(evaluations)
        ]
    # Outside the axes: a legend inside covers bars.
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def det_figure(ev: Evaluation, report: dict):  # noqa: ANN201 - a matplotlib Figure
    """The verdict's trade-off: miss rate against false-match rate, both measured on the test captures.

    A measured rate of 0 has no place on a log axis: it is drawn on a dotted line at half of one
    capture (0.5 / N) that says so, apart from the decades above it.
    """
    import matplotlib.pyplot as plt

    assert ev.capture_scores is not None
    index = {name: k for k, name in enumerate(ev.names)}
    truth = np.asarray([index[d] for d in ev.capture_devices])
    own = truth[:, None] == np.arange(len(ev.names))[None, :]
    # Calibrated methods decide on the false-match rate, the others on the raw score: sweep that.
    decision = -ev.capture_false_match if ev.capture_false_match is not None else ev.capture_scores
    levels = np.unique(decision)
    fmr = np.array([(decision[~own] >= t).mean() for t in levels])
    miss = np.array([(decision[own] < t).mean() for t in levels])
    others, owns = int((~own).sum()), int(own.sum())
    x_floor, y_floor = 0.5 / others, 0.5 / owns
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.step(np.maximum(fmr, x_floor), np.maximum(miss, y_floor), where="post", color=SEEN_COLOUR)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if (miss == 0).any():
        ax.axhline(y_floor, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"miss rate 0 (no own capture missed), drawn at 0.5/{owns}", xy=(0.99, y_floor),
                    xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=7,
                    color="dimgrey")  # fmt: skip
    if (fmr == 0).any():
        ax.axvline(x_floor, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"false-match rate 0, drawn at 0.5/{others}", xy=(x_floor, 0.5),
                    xycoords=("data", "axes fraction"), ha="right", va="center", rotation=90, fontsize=7,
                    color="dimgrey")  # fmt: skip
    verdict = report.get("verdict", {})
    if verdict.get("false_match_rate") is not None:
        rule = (
            f"cohort rate <= {verdict['max_false_match']:g}" if verdict.get("max_false_match") else "default"
        )
        ax.plot(
            max(verdict["false_match_rate"], x_floor),
            max(verdict["miss_rate"], y_floor),
            "o",
            color=UNSEEN_COLOUR,
            # The rule is on the cohort's rate; the dot stands where the test captures put it.
            label=f"default verdict ({rule}): measured here\n"
            f"{verdict['false_match_rate']:.2%} false matches, {verdict['miss_rate']:.1%} misses",
        )
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel(
        "false-match rate measured on the test captures\n(other devices' captures that get the verdict)"
    )
    ax.set_ylabel("miss rate (own test captures that do not)")
    ax.set_title(f"{ev.method}: verdict trade-off, host score {ev.host_score}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def write_host_plots(ev: Evaluation, report: dict, directory: str | os.PathLike) -> list[Path]:
    """The figures of what dnp-scan does with one method's evaluation:

    - `det.png`: the verdict's trade-off on the test captures, miss rate against false-match rate
      (both measured over (fingerprint, capture) pairs), with the default verdict marked;
    - `curves.png`: capture_top1 and host_rank1 against enrollment packets n and query packets m.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if ev.capture_scores is not None:
        written.append(_save(det_figure(ev, report), out / "det.png"))
    curves = report.get("curves")
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, key, label in (
            (axes[0], "enroll_packets", "enrollment packets n (m = 20)"),
            (axes[1], "query_packets", "query packets m per test capture (n = 20)"),
        ):
            xs = list(curves[key])
            for metric, colour in (("capture_top1", SEEN_COLOUR), ("host_rank1", UNSEEN_COLOUR)):
                ys = [curves[key][x][metric] for x in xs]
                ax.plot(
                    range(len(xs)), [np.nan if y is None else y for y in ys], "o-", color=colour, label=metric
                )
            ax.set_xticks(range(len(xs)), xs)
            ax.set_xlabel(label)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("share of test captures / trials")
        axes[0].set_ylim(0, 1.02)
        axes[0].legend(fontsize=8, loc="lower right")
        fig.suptitle(f"{ev.method}: learning curves on the dnp-23 test half", fontsize=10)
        written.append(_save(fig, out / "curves.png"))
    return written


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
    """Lay the figure out, write it as PNG through the one atomic writer, and free it."""
    import matplotlib.pyplot as plt

    from tool.files import atomic_output

    fig.tight_layout()
    with atomic_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
