"""Write the cohort that calibrates dnp-scan's verdicts: `python -m export.cohort [--models DIR]`.

The cohort (tool/cohort.py) is windows of 20 consecutive packets of the devices the model was
trained on, from their development captures only (captures 1-10; the test half is never read), as
indexes into a table of their distinct packet embeddings. Every capture gives its first window and
then one every 20 packets, at most MAX_WINDOWS per capture so that a chatty device does not
outweigh a quiet one; windows that repeat another of the same device are kept once. Every other host
of those captures that a verdict could name (a phone, a laptop; not a router, which is never named)
is a group of its own: a verdict's rate is counted against what a real network holds, not only
against devices. No torch: the
embeddings come from the shipped ONNX encoder through the runtime's own code, so the cohort is what
dnp-scan computes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np

from tool.cohort import COHORT, COHORT_FORMAT, DEVICE, HOST, LEAVE_OUT, SAME_TRAFFIC, TYPE
from tool.constants import MIN_PACKETS, PACKETS

MAX_WINDOWS = 40  # windows per capture


def windows_of(packets: list, size: int = PACKETS, limit: int = MAX_WINDOWS) -> list[list]:
    """Consecutive, non-overlapping windows of `size` packets from the start; a short capture is one."""
    if len(packets) < size:
        return [packets] if len(packets) >= MIN_PACKETS else []
    return [packets[i : i + size] for i in range(0, len(packets) - size + 1, size)][:limit]


def host_windows(captures: list[list], exclude: set[str]) -> dict[str, list[list]]:
    """Windows of every other host of the captures (phones, laptops), by host, of the packets its
    set score reads. Routers are left out: a verdict never names one (tool.routers), so a router's
    score is no false match a rate should count, and its own packets (address resolution that every
    host sends) would raise every fingerprint's rates."""
    from tool.hosts import HostTally

    out: dict[str, list[list]] = {}
    routers: set[str] = set()  # a router in any capture (in some it only answers, and forwards nothing)
    for packets in captures:
        tally = HostTally(host_packets=len(packets) + 1)
        own: dict[str, list] = {}
        for packet, host in zip(packets, tally.add(packets)):
            if host is not None and host.address not in exclude:
                own.setdefault(host.address, []).append(packet)
        routers.update(address for address, host in tally.hosts.items() if host.router)
        for address, sent in own.items():
            if found := windows_of(sent):
                out.setdefault(address, []).extend(found)
    return {address: found for address, found in out.items() if address not in routers}


def build(
    model_dir: str | None,
    data: str | None,
    devices: list[str] | None = None,
    also: Sequence[str] = (),
    leave_out: str = TYPE,
) -> dict:
    """The cohort of a model folder, as the JSON object cohort.json holds: windows of the devices the
    model was trained on (or `devices`) and of every other host of their development captures, plus
    every device and host of the development half of the labs in `also` (data folders)."""
    from tool.evaluation.dataset import brand, device_packets, load_devices, read_captures
    from tool.hosts import host_packets_embedded
    from tool.model import Model

    model = Model.load(model_dir)
    trained = model.manifest["training_data"]
    names = devices or list(
        trained["devices"] if "devices" in trained else [d for lab in trained["labs"].values() for d in lab]
    )
    # A model trained on several labs (dnp-train --labs) has its cohort from each lab's folder.
    folders = (
        [load_devices(data)]
        if data or "labs" not in trained
        else [load_devices(None, lab) for lab in trained["labs"]]
    )
    labs = [*((d, names) for d in folders), *((load_devices(folder), None) for folder in also)]
    table: dict[tuple[float, ...], int] = {}
    windows: list[list[int]] = []
    groups: list[int] = []
    group_names: list[str] = []
    kinds: list[str] = []
    brands: list[str] = []

    def add_group(name: str, kind: str, hosts: list[list]) -> None:
        kept: set[tuple[int, ...]] = set()
        g = len(group_names)
        group_names.append(name)
        kinds.append(kind)
        brands.append(brand(name) if kind == DEVICE else "")
        for embedded in host_packets_embedded(model, hosts, None) if hosts else []:
            rows = [table.setdefault(tuple(v.tolist()), len(table)) for v in np.round(embedded, 5)]
            if tuple(rows) not in kept:  # a window that repeats another of the group's counts once
                kept.add(tuple(rows))
                windows.append(rows)
                groups.append(g)

    for lab_devices, wanted in labs:
        chosen = [d for d in lab_devices if wanted is None or d.name in wanted]
        for d in chosen:
            d.captures = d.dev_captures  # the development half only
        packets = device_packets(chosen)
        for d in chosen:
            add_group(
                d.name, DEVICE, [w for capture in packets[d.name].per_capture for w in windows_of(capture)]
            )
        captures = read_captures([c for d in chosen for c in d.captures])
        others = host_windows(list(captures.values()), {d.mac for d in lab_devices})
        for address, hosts in sorted(others.items()):
            add_group(address, HOST, hosts)
    return {
        "format": COHORT_FORMAT,
        "encoder_sha256": model.encoder_sha256,
        "packets": PACKETS,
        "devices": [n for n, k in zip(group_names, kinds) if k == DEVICE],
        "data": "development half (captures 1-10) of the devices the model was trained on and of every "
        f"other host of their captures, windows of {PACKETS} consecutive packets a host's set score reads, "
        f"at most {MAX_WINDOWS} per capture, repeats dropped",
        "groups": groups,
        "group_names": group_names,
        "group_kinds": kinds,
        "group_brands": brands,
        "leave_out": leave_out,
        "same_traffic": SAME_TRAFFIC,
        "windows": windows,
        "embeddings": [list(v) for v in table],
    }


@click.command()
@click.option(
    "--models", type=click.Path(exists=True, file_okay=False), help="Model folder (default: shipped)."
)
@click.option(
    "--data", type=click.Path(exists=True, file_okay=False), help="Data folder (default: $DNP_DATA)."
)
@click.option(
    "--also",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Another lab's data folder: every device and host of its development half joins the cohort.",
)
@click.option(
    "--leave-out",
    type=click.Choice(LEAVE_OUT),
    default=TYPE,
    show_default=True,
    help="What of the cohort a fingerprint is not compared with: the device type nearest it, or that "
    "type's whole brand (its same-vendor siblings). 'type', chosen across labs: on lab2's development "
    "merges, the shipped model's false-match rate at the default verdict was 6.1 % with 'type' and "
    "14.9 % with 'brand'.",
)
def main(models: str | None, data: str | None, also: tuple[str, ...], leave_out: str) -> None:
    """Compute the model's cohort from its training devices and write it beside the model."""
    from tool.files import write_text_atomic
    from tool.model import models_dir

    cohort = build(models, data, also=also, leave_out=leave_out)
    path = Path(models) if models else models_dir()
    if (path / COHORT).is_file():
        # The calibration measures the training recipe on labs it never saw (export/calibration.py),
        # not this encoder's cohort: it stays until export.calibration measures it again.
        kept = json.loads((path / COHORT).read_text(encoding="utf-8")).get("calibration")
        if kept is not None:
            cohort["calibration"] = kept
    text = json.dumps(cohort, separators=(",", ":")) + "\n"
    write_text_atomic(path / COHORT, text)
    groups = len(cohort["group_names"])
    click.echo(
        f"{path / COHORT}: {len(cohort['windows'])} cohort hosts of {len(cohort['devices'])} devices "
        f"and {groups - len(cohort['devices'])} other hosts"
    )


if __name__ == "__main__":
    main()
