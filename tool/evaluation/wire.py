"""Every host on the wire: the verdict measured on merged captures that hold the router too.

../shared/EVALUATION.md's "every host on the wire" figures, for either lab: for each position k,
the k-th captures of all the lab's devices (of the test half, or of the development half past the
enrollment capture), each cut to the packets of the device and of the router, are concatenated
(`mergecap -a`) and scanned with every device's fingerprint, as dnp-scan does. Every (fingerprint,
host) pair of every merge is kept with its score, its false-match rate and what the host is to the
fingerprint (its own device, a device of the same brand, of another brand, the router, another
host), so the figures can be read at any verdict rule:

- router_verdicts: merges where the router gets any verdict;
- own_verdicts: the share of device hosts whose verdict names their own device;
- false_verdicts: device hosts whose verdict names another device, same brand or other brand;
- the measured false-match rate: the share of (fingerprint, host that is not its device) pairs,
  router included, whose rate reaches the rule, beside the rate the rule states;
- the measured other-vendor rate, what a calibrated rate states (tool/cohort.py): the same, less the
  pairs of a same-brand sibling, which sends the device's own traffic.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from tool.evaluation.protocol import ProtocolData

OWN, SAME_BRAND, OTHER_BRAND, ROUTER, OTHER_HOST = "own", "same brand", "other brand", "router", "other host"


@dataclass
class Pair:
    """One fingerprint against one host of one merge."""

    merge: int
    host: str
    fingerprint: str
    relation: str  # what the host is to the fingerprint: OWN, SAME_BRAND, OTHER_BRAND, ROUTER, OTHER_HOST
    score: float
    rate: float | None  # its false-match rate (None on a raw threshold)
    verdict: list[str]  # the names the host's verdict gives (empty: none), best first


@dataclass
class Wire:
    """Every pair of every merge."""

    merges: int = 0
    pairs: list[Pair] = field(default_factory=list)

    def figures(self, max_false_match: float | None = None) -> dict[str, Any]:
        """The figures at the scans' own verdicts, or, given a rate, at the verdict that rate gives
        (a host's verdict: the fingerprints whose rate reaches it, best score first)."""
        hosts: dict[tuple[int, str], list[Pair]] = {}
        for p in self.pairs:
            hosts.setdefault((p.merge, p.host), []).append(p)
        router_merges: set[int] = set()
        device_hosts = own = same = other = 0
        reached = impostor_pairs = 0
        other_reached = other_pairs = 0  # what a stated rate counts: other vendors' hosts and routers
        for (merge, _), pairs in hosts.items():
            names = self._verdict(pairs, max_false_match)
            owners = {p.fingerprint for p in pairs if p.relation == OWN}
            relations = {p.relation for p in pairs}
            if ROUTER in relations:
                if names:
                    router_merges.add(merge)
            elif owners:
                device_hosts += 1
                if owners & set(names):
                    own += 1
                elif names:
                    brands = {p.relation for p in pairs if p.fingerprint in names}
                    same += SAME_BRAND in brands and OTHER_BRAND not in brands
                    other += OTHER_BRAND in brands
            reaching = self._reaching(pairs, max_false_match)
            for p in pairs:
                if p.relation != OWN:
                    impostor_pairs += 1
                    reached += p.fingerprint in reaching
                if p.relation not in (OWN, SAME_BRAND):
                    other_pairs += 1
                    other_reached += p.fingerprint in reaching
        return {
            "merges": self.merges,
            "router_verdicts": len(router_merges),
            "device_hosts": device_hosts,
            "own_verdicts": own / max(device_hosts, 1),
            "false_verdicts": {"same_brand": same, "other_brand": other},
            "measured_false_match_rate": reached / max(impostor_pairs, 1),
            "measured_other_vendor_rate": other_reached / max(other_pairs, 1),
        }

    @staticmethod
    def _reaching(pairs: list[Pair], max_false_match: float | None) -> set[str]:
        """The fingerprints whose verdict the host reaches; a router's are the scan's (none, unless
        routers are judged)."""
        if max_false_match is None or any(p.relation == ROUTER for p in pairs):
            return set(pairs[0].verdict)
        return {p.fingerprint for p in pairs if p.rate is not None and p.rate <= max_false_match}

    @classmethod
    def _verdict(cls, pairs: list[Pair], max_false_match: float | None) -> list[str]:
        if max_false_match is None or any(p.relation == ROUTER for p in pairs):
            return pairs[0].verdict
        reaching = cls._reaching(pairs, max_false_match)
        return [p.fingerprint for p in sorted(pairs, key=lambda p: -p.score) if p.fingerprint in reaching]


def cut(capture: Path, macs: Sequence[str], out: Path) -> None:
    """The capture's packets sent by one of `macs`, written to `out`."""
    expr = " || ".join(f"eth.src == {m}" for m in macs)
    command = ["tshark", "-r", str(capture), "-Y", expr, "-w", str(out), "-F", "pcap"]
    subprocess.run(command, check=True, capture_output=True)


def merge(captures: Sequence[tuple[Path, str]], router: str, out: Path, work: Path) -> None:
    """The captures, each cut to its device's (the MAC beside it) and the router's packets, one after
    the other (`mergecap -a`)."""
    parts = []
    for i, (capture, mac) in enumerate(captures):
        part = work / f"part-{i}.pcap"
        cut(capture, [mac, router], part)
        parts.append(str(part))
    subprocess.run(["mergecap", "-a", "-F", "pcap", "-w", str(out), *parts], check=True, capture_output=True)


def measure(
    data: ProtocolData,
    scan_merge: Callable[[Path], list[dict[str, Any]]],
) -> Wire:
    """Scan the merge of each test position of `data` with `scan_merge` (dnp-scan's host rows, with
    every device's fingerprint named by its device) and keep every pair."""
    lab = data.lab
    owners: dict[str, list[str]] = {}
    for d in data.devices:
        owners.setdefault(d.mac, []).append(d.name)
    macs = {d.name: d.mac for d in data.devices}
    by_position: dict[int, list[tuple[Path, str]]] = {}
    for test in data.tests:
        by_position.setdefault(test.position, []).append((Path(test.path), macs[test.device]))
    wire = Wire()
    with tempfile.TemporaryDirectory(prefix="dnp-wire-") as tmp:
        work = Path(tmp)
        for k, captures in sorted(by_position.items()):
            merged = work / f"merge-{k}.pcap"
            merge(captures, lab.router, merged, work)
            wire.merges += 1
            for row in scan_merge(merged):
                host = row.get("mac") or row["host"]
                mine = owners.get(host, [])
                verdict = [row["verdict"], *row.get("alternatives", [])] if row["verdict"] else []
                for name, score in row["match"].items():
                    if host == lab.router or row.get("router"):
                        relation = ROUTER
                    elif name in mine:
                        relation = OWN
                    elif not mine:
                        relation = OTHER_HOST
                    elif any(lab.brand(name) == lab.brand(o) for o in mine):
                        relation = SAME_BRAND
                    else:
                        relation = OTHER_BRAND
                    rate = (row.get("false_match") or {}).get(name)
                    wire.pairs.append(Pair(k, host, name, relation, score, rate, verdict))
    return wire


def scanned(data: ProtocolData, models: str | None, max_false_match: float | None = None) -> Wire:
    """The merges of `data` scanned as dnp-scan scans them, with every device's fingerprint (its
    protocol enrollment), on the model set in `models` (default: shipped)."""
    from tool.fingerprint import Fingerprint
    from tool.model import Model
    from tool.scan import scan

    model = Model.load(models)
    fps = [Fingerprint.from_packets(model, data.enrollment[d.name], d.name) for d in data.devices]
    return measure(data, lambda path: scan(path, fps, model, max_false_match=max_false_match).hosts)


RATES = (0.001, 0.003, 0.01, 0.03)


def wire_report(data: ProtocolData, models: str | None) -> dict[str, Any]:
    """The figures at the default verdict and at each of RATES, as dnp-eval --wire reports them."""
    wire = scanned(data, models)
    return {"default": wire.figures(), "rates": {str(r): wire.figures(r) for r in RATES}}


@click.command()
@click.option("--protocol", "lab", type=click.Choice(["dnp-23", "lab2"]), default="dnp-23", show_default=True)
@click.option("--half", type=click.Choice(["dev", "test"]), default="test", show_default=True,
              help="dev: the development half's captures after enrollment (to choose settings).")  # fmt: skip
@click.option("--data", type=click.Path(exists=True, file_okay=False), help="The lab's data folder.")
@click.option(
    "--models", type=click.Path(exists=True, file_okay=False), help="Model folder (default: shipped)."
)
@click.option("--json", "json_path", metavar="PATH", help="Write the figures as JSON.")
def main(lab: str, half: str, data: str | None, models: str | None, json_path: str | None) -> None:
    """Every host on the wire: the verdict on merges that hold the router, at the default verdict and
    at other --max-false-match rates (EVALUATION.md)."""
    from tool.evaluation.protocol import load_protocol
    from tool.files import write_text_atomic

    report = {"protocol": lab, "half": half, **wire_report(load_protocol(data, half, lab), models)}
    click.echo(f"{lab} {half} half, {report['default']['merges']} merges")
    click.echo(f"  default verdict: {json.dumps(report['default'])}")
    for rate, figures in report["rates"].items():
        click.echo(f"  --max-false-match {rate}: {json.dumps(figures)}")
    if json_path:
        write_text_atomic(Path(json_path), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
