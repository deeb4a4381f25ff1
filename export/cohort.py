"""Write the cohort that calibrates dnp-scan's verdicts: `python -m export.cohort [--models DIR]`.

The cohort (tool/cohort.py) is windows of 20 consecutive packets of the devices the model was
trained on, from their development captures only (captures 1-10; the test half is never read), as
indexes into a table of their distinct packet embeddings. Every capture gives its first window and
then one every 20 packets, at most MAX_WINDOWS per capture so that a chatty device does not
outweigh a quiet one; windows that repeat another of the same device are kept once. No torch: the
embeddings come from the shipped ONNX encoder through the runtime's own code, so the cohort is what
dnp-scan computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from tool.cohort import COHORT, COHORT_FORMAT
from tool.constants import MIN_PACKETS, PACKETS

MAX_WINDOWS = 40  # windows per capture


def windows_of(packets: list, size: int = PACKETS, limit: int = MAX_WINDOWS) -> list[list]:
    """Consecutive, non-overlapping windows of `size` packets from the start; a short capture is one."""
    if len(packets) < size:
        return [packets] if len(packets) >= MIN_PACKETS else []
    return [packets[i : i + size] for i in range(0, len(packets) - size + 1, size)][:limit]


def build(model_dir: str | None, data: str | None, devices: list[str] | None = None) -> dict:
    """The cohort of a model folder, as the JSON object cohort.json holds."""
    from tool.evaluation.dataset import device_packets, load_devices
    from tool.model import Model
    from tool.scan import host_packets_embedded

    model = Model.load(model_dir)
    trained = model.manifest["training_data"]
    names = devices or list(trained["devices"])
    # A model trained on several labs (dnp-train --labs) has its cohort from each lab's folder.
    labs = [None] if data or "labs" not in trained else list(trained["labs"])
    chosen = [d for lab in labs for d in load_devices(data, lab) if d.name in names]
    for d in chosen:
        d.captures = d.dev_captures  # the development half only
    packets = device_packets(chosen)
    table: dict[tuple[float, ...], int] = {}
    windows: list[list[int]] = []
    groups: list[int] = []
    for g, d in enumerate(chosen):
        hosts = [w for capture in packets[d.name].per_capture for w in windows_of(capture)]
        kept: set[tuple[int, ...]] = set()
        for embedded in host_packets_embedded(model, hosts, None) if hosts else []:
            rows = []
            for vector in np.round(embedded, 5):
                rows.append(table.setdefault(tuple(vector.tolist()), len(table)))
            if tuple(rows) not in kept:  # a window that repeats another of the device's counts once
                kept.add(tuple(rows))
                windows.append(rows)
                groups.append(g)
    return {
        "format": COHORT_FORMAT,
        "encoder_sha256": model.encoder_sha256,
        "packets": PACKETS,
        "devices": [d.name for d in chosen],
        "data": "development half (captures 1-10) of the devices the model was trained on, windows of "
        f"{PACKETS} consecutive device packets, at most {MAX_WINDOWS} per capture, repeats dropped",
        "groups": groups,
        "windows": windows,
        "embeddings": [list(v) for v in table],
    }


@click.command()
@click.option(
    "--models", type=click.Path(exists=True, file_okay=False), help="Model folder (default: shipped)."
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False),
    help="Data folder (default: each lab the model trained on, under ../shared/data; $DNP_DATA for "
    "iot-sentinel).",
)
def main(models: str | None, data: str | None) -> None:
    """Compute the model's cohort from its training devices and write it beside the model."""
    from tool.files import write_text_atomic
    from tool.model import models_dir

    cohort = build(models, data)
    path = Path(models) if models else models_dir()
    text = json.dumps(cohort, separators=(",", ":")) + "\n"
    write_text_atomic(path / COHORT, text)
    click.echo(f"{path / COHORT}: {len(cohort['windows'])} cohort hosts of {len(cohort['devices'])} devices")


if __name__ == "__main__":
    main()
