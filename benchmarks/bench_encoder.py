"""Benchmark: the encoder alone on every distinct model input of the data set, on one core.

    python benchmarks/bench_encoder.py [--models DIR] [--rounds 3] [--threads 1]

The worst case of a scan: nothing memoised, every packet a new input. The inputs are the distinct
(masked text[, frame length]) of all 460 captures of the 23 devices, embedded with
`Model.load(threads=1).embed` (which batches them itself). Goal: at least 10,000 texts/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tool.dataset import load_devices, read_captures  # noqa: E402
from tool.model import BATCH, Model  # noqa: E402
from tool.scan import memo_info  # noqa: E402
from tool.text import packet_text  # noqa: E402


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
    parser.add_argument("--models", help="model folder (default: the shipped one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    args = parser.parse_args()

    model = Model.load(args.models, threads=args.threads)
    texts, lengths, packets = distinct_inputs(model)
    print(
        f"{len(texts):,} distinct inputs in {packets:,} packets; model {model.directory} "
        f"(max_len {model.max_len}, uses_length {model.uses_length}); batch {BATCH}; "
        f"{args.threads} thread(s); load average {os.getloadavg()[0]:.2f}"
    )
    model.embed(texts[:BATCH], lengths[:BATCH])  # warm-up: first-run allocations are not throughput
    rates = []
    for r in range(args.rounds):
        start = time.perf_counter()
        model.embed(texts, lengths)
        elapsed = time.perf_counter() - start
        rates.append(len(texts) / elapsed)
        print(f"  round {r + 1}: {elapsed:.2f} s = {rates[-1]:,.0f} texts/s")
    print(
        f"encoder, {args.threads} thread(s): median {statistics.median(rates):,.0f} texts/s (goal >= 10,000)"
    )


if __name__ == "__main__":
    main()
