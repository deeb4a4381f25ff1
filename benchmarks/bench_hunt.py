"""Benchmark: dnp-hunt over the data set's 460 captures, and over one large capture, on a Dask local cluster.

    python benchmarks/bench_hunt.py                       # about 4 minutes on 2 cores
    python benchmarks/bench_hunt.py --ten-x --loop-every 1   # also the 10x capture and the full loop

1. The 460 captures as 460 files (the data set's folder): `hunt()` with 1 and with 2 worker processes
   (wall time of a fresh Python process, cluster start included), captures/s and packets/s, against
   a shell loop of `dnp-scan CAPTURE --fingerprint FP --quiet` over the same files (one process, one
   model load and one tshark per capture). The loop runs over every `--loop-every`-th file (default
   10th: 46 files) and its time is scaled to 460; the figure says so.
2. One large capture: the 460 merged in time (mergecap, ~175,000 packets, 59 MB), and with --ten-x
   that merge repeated 10 times: `hunt()` with 2 workers (the capture is cut into chunks with editcap)
   against tshark alone printing the fields dnp-scan reads (`tshark -T fields`, the same -e and -o),
   as a ratio of wall times in one run (goal: below 1.0 on 2 cores).
3. Peak memory of each worker process and of its tshark runs, at 1x (and 10x).
4. What cutting the capture does to the packets' texts: every packet read whole and read chunk by
   chunk (the chunks the hunt cut), compared by (protocol, Info) and by the model's input text; and
   the hosts whose score differs between the chunked hunt and dnp-scan's scan of the whole capture.

Timings depend on the machine and on what else runs on it: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tool.capture import FIELDS, TSHARK_PREFS, read_packets  # noqa: E402
from tool.evaluation.dataset import default_data_dir, load_devices  # noqa: E402

ENROLL_DEVICE = "D-LinkCam"
# hunt() in a fresh process, as dnp-hunt runs it, printing the figures the benchmark reads.
HUNT = (
    "import json, sys\n"
    "from tool.hunt import hunt\n"
    "a = json.loads(sys.argv[1])\n"
    "r = hunt(a['paths'], a['fps'], workers=a['workers'])\n"
    "print(json.dumps({'captures': r.captures, 'failed': len(r.failed), 'packets': r.packets,\n"
    "                  'hosts': len(r.hosts), 'workers': r.workers, 'records': r.records}))\n"
)


def run_hunt(paths: list[str], fingerprint: Path, workers: int, env: dict[str, str]) -> dict:
    args = json.dumps({"paths": paths, "fps": [str(fingerprint)], "workers": workers})
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", HUNT, args], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"hunt failed: {done.stderr.strip()[-2000:]}")
    return {"wall": wall, **json.loads(done.stdout)}


def peaks(result: dict) -> str:
    return ", ".join(
        f"worker {v['worker'] / 2**20:.0f} MB + tshark {v['tshark'] / 2**20:.0f} MB"
        for v in result["workers"].values()
    )


def enroll(workdir: Path, env: dict[str, str]) -> Path:
    device = next(d for d in load_devices() if d.name == ENROLL_DEVICE)
    out = workdir / "cam.fp"
    code = "import tool.cli.enroll as m; m.main()"
    subprocess.run(
        [sys.executable, "-c", code, str(device.captures[0]), "--mac", device.mac, "-o", str(out), "--quiet"],
        check=True,
        env=env,
        cwd=ROOT,
    )
    return out


def shell_loop(files: list[Path], fingerprint: Path, env: dict[str, str]) -> float:
    script = 'for f in "$@"; do "$PY" -c "import tool.cli.scan as m; m.main()" "$f" -f "$FP" --quiet; done'
    start = time.perf_counter()
    subprocess.run(
        ["sh", "-c", script, "sh", *map(str, files)],
        env={**env, "PY": sys.executable, "FP": str(fingerprint)},
        cwd=ROOT,
        check=False,
    )
    return time.perf_counter() - start


def tshark_alone(capture: Path) -> float:
    cmd = ["tshark", "-n", "-r", str(capture), "-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]
    cmd += ["-E", "quote=n", *[a for p in TSHARK_PREFS for a in ("-o", p)]]
    cmd += [a for f in FIELDS for a in ("-e", f)]
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def boundaries(capture: Path, workdir: Path, workers: int) -> dict:
    """Packets whose text differs when the capture is read in the chunks the hunt cuts it into."""
    from tool.engine import read_chunk
    from tool.hunt import split
    from tool.text import packet_text

    pieces = split(str(capture), workdir / "chunks", workers)
    whole = [(p.protocol, p.info) for p in read_packets(capture)]
    cut = [(p.protocol, p.info) for piece, first in pieces for p in read_chunk(piece, first)]
    assert len(whole) == len(cut)
    info = [i for i, (a, b) in enumerate(zip(whole, cut)) if a != b]
    text = [i for i in info if packet_text(*whole[i]) != packet_text(*cut[i])]
    shutil.rmtree(workdir / "chunks")
    examples = [f"{whole[i][0]} {whole[i][1][:60]!r} -> {cut[i][0]} {cut[i][1][:60]!r}" for i in text[:3]]
    return {"chunks": len(pieces), "packets": len(whole), "info": len(info), "text": len(text),
            "examples": examples}  # fmt: skip


def host_differences(capture: Path, fingerprint: Path, record: dict) -> tuple[int, int, float]:
    from tool.fingerprint import load
    from tool.model import Model
    from tool.scan import scan

    model = Model.load()
    expected = {h["host"]: h for h in scan(capture, [load(fingerprint, model)], model).hosts}
    diffs = [
        abs(h["score"] - expected[h["host"]]["score"])
        for h in record["hosts"]
        if h["host"] not in expected or h["score"] != expected[h["host"]]["score"]
    ]
    return len(expected), len(diffs), max(diffs, default=0.0)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--workdir", type=Path, help="Where the merged captures go (default: a temp folder).")
    parser.add_argument("--loop-every", type=int, default=10, help="The dnp-scan loop reads every N-th file.")
    parser.add_argument("--ten-x", action="store_true", help="Also the merge repeated 10 times (590 MB).")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-hunt-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, work in {workdir}")
    fingerprint = enroll(workdir, env)
    data = default_data_dir()
    files = sorted(c for d in load_devices() for c in d.captures)

    print("\n1. the 460 captures as files")
    for workers in (1, 2):
        r = run_hunt([str(data)], fingerprint, workers, env)
        print(
            f"dnp-hunt --workers {workers}: {r['captures']} captures ({r['failed']} failed), "
            f"{r['packets']:,} packets in {r['wall']:.1f} s: {r['captures'] / r['wall']:.1f} captures/s, "
            f"{r['packets'] / r['wall']:,.0f} packets/s; peak {peaks(r)}"
        )
    sample = files[:: args.loop_every]
    loop = shell_loop(sample, fingerprint, env)
    scaled = loop * len(files) / len(sample)
    print(
        f"shell loop of dnp-scan over {len(sample)} of the {len(files)} files: {loop:.1f} s, "
        f"{len(sample) / loop:.2f} captures/s; scaled to {len(files)}: {scaled:.0f} s"
    )

    print(f"\n2. one large capture, load average {os.getloadavg()[0]:.1f}")
    merged = workdir / "merged.pcapng"
    if not merged.exists():
        subprocess.run(["mergecap", "-w", str(merged), *map(str, files)], check=True)
    sizes = [(1, merged)]
    if args.ten_x:
        big = workdir / "merged-x10.pcapng"
        if not big.exists():
            subprocess.run(["mergecap", "-a", "-w", str(big), *[str(merged)] * 10], check=True)
        sizes.append((10, big))
    for times, capture in sizes:
        t = tshark_alone(capture)
        r = run_hunt([str(capture)], fingerprint, 2, env)
        print(
            f"{times}x ({capture.stat().st_size / 2**20:.0f} MB, {r['packets']:,} packets): tshark -T fields "
            f"{t:.1f} s, dnp-hunt --workers 2 {r['wall']:.1f} s, ratio {r['wall'] / t:.2f}; peak {peaks(r)}"
        )
        if times == 1:
            hosts, differ, worst = host_differences(capture, fingerprint, r["records"][0])
            print(f"   hosts whose score differs from dnp-scan's on the whole capture: {differ} of {hosts}"
                  f" (largest difference {worst:.6f})")  # fmt: skip

    print("\n4. what the chunk boundaries change")
    b = boundaries(merged, workdir, 2)
    print(
        f"{b['chunks']} chunks of {b['packets']:,} packets: {b['info']} packets' (protocol, Info) differ "
        f"from the whole capture's, {b['text']} of them in the text the model reads"
    )
    for line in b["examples"]:
        print(f"   {line}")


if __name__ == "__main__":
    main()
