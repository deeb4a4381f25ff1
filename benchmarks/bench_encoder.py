"""Benchmark: the encoder alone on every distinct model input of the data set, on one core.

    python benchmarks/bench_encoder.py [--models DIR [DIR ...]] [--rounds 3] [--threads 1]

The worst case of a scan: nothing memoised, every packet a new input. The inputs are the distinct
(masked text[, frame length]) of all 460 captures of the 23 devices, embedded with
`Model.load(threads=1).embed` (which batches them itself). Goal: at least 10,000 texts/s.

Several model folders are timed in interleaved rounds, so that a shared machine's load falls on
all of them alike, and each is reported as a ratio to the first (for example the 1-D against the
2-D ConvLSTM: `dnp-train --conv 2d --out DIR`; the weights do not change the speed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tool.evaluation.dataset import load_devices, read_captures  # noqa: E402
from tool.model import BATCH, Model  # noqa: E402
from tool.text import memo_info, packet_text  # noqa: E402


def distinct_inputs(model: Model) -> tuple[list[str], list[int], int]:
    """Every distinct model input of the data set: texts, lengths, and how many packets they cover."""
    captures = read_captures([c for d in load_devices() for c in d.captures])
    texts: dict[tuple[str, str], str] = {}
    inputs: dict[object, tuple[str, int]] = {}
    packets = 0
    for capture in captures.values():
        for p in capture:
            packets += 1
            raw = (p.protocol, memo_info(p.info))
            text = texts.get(raw)
            if text is None:
                text = texts[raw] = packet_text(*raw)
            inputs.setdefault(model.key(text, p.length), (text, p.length))
    return [t for t, _ in inputs.values()], [n for _, n in inputs.values()], packets


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=[None], help="model folders (default: shipped)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    args = parser.parse_args()

    models = [Model.load(directory, threads=args.threads) for directory in args.models]
    texts, lengths, packets = distinct_inputs(models[0])
    print(
        f"{len(texts):,} distinct inputs in {packets:,} packets; batch {BATCH}; "
        f"{args.threads} thread(s); load average {os.getloadavg()[0]:.2f}"
    )
    for model in models:
        if model.uses_length != models[0].uses_length or model.max_len != models[0].max_len:
            parser.error(f"{model.directory} reads other inputs than {models[0].directory}")
        model.embed(texts[:BATCH], lengths[:BATCH])  # warm-up: first-run allocations are not throughput
    rates: list[list[float]] = [[] for _ in models]
    for r in range(args.rounds):
        for model, rate in zip(models, rates):
            start = time.perf_counter()
            model.embed(texts, lengths)
            elapsed = time.perf_counter() - start
            rate.append(len(texts) / elapsed)
            print(f"  round {r + 1}: {model.directory}: {elapsed:.2f} s = {rate[-1]:,.0f} texts/s")
    first = statistics.median(rates[0])
    for model, rate in zip(models, rates):
        median = statistics.median(rate)
        print(
            f"encoder {model.directory} ({model.manifest['config'].get('conv', '1d')}), {args.threads} "
            f"thread(s): median {median:,.0f} texts/s (goal >= 10,000), {median / first:.2f}x the first"
        )


if __name__ == "__main__":
    main()
