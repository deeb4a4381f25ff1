"""Benchmark: dnp-scan against tshark alone on the whole data set in one capture, and its memory.

    python benchmarks/bench_scan.py                 # everything, about 15 minutes on 2 cores
    python benchmarks/bench_scan.py --rounds 5 --no-10x --pyshark /tmp/pyshark-site

1. The 460 captures of the 23 devices merged in time order (mergecap, about 175,000 packets).
2. Speed: `tshark -r merged -T fields -e frame.number -e eth.src -e _ws.col.Protocol -e _ws.col.Info`
   against `dnp-scan merged --fingerprint X --json OUT`, interleaved (A B A B ...), packets/s each
   and the ratio of the medians (goal: dnp-scan at most 1.25x tshark's wall time). dnp-scan runs
   through its entry point with an exit hook that records its own CPU time and its tshark's apart:
   on a machine whose other work leaves less than two cores free, the wall time is about the sum of
   the two, and their ratio says whether the Python side would keep pace with two cores free.
3. Peak memory of the dnp-scan process (its own, RUSAGE_SELF at exit; tshark's printed apart) on
   that capture and on the merge repeated 10 times with `mergecap -a` (goals: 250 MB, 1.2x).
4. `dnp-scan --help` wall time (goal: under 0.5 s).
5. Optionally pyshark 0.6 (a reference, not a dependency: install it outside the repo with
   `pip install --target /tmp/pyshark-site pyshark==0.6` and pass --pyshark /tmp/pyshark-site).

Timings depend on the machine and on what else runs on it: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tool.evaluation.dataset import load_devices  # noqa: E402

TSHARK_FIELDS = ["-e", "frame.number", "-e", "eth.src", "-e", "_ws.col.Protocol", "-e", "_ws.col.Info"]
ENROLL_DEVICE = "D-LinkCam"
# dnp-scan's entry point, writing at exit its own peak RSS (KB) and CPU seconds, and its children's
# (tshark's), so that the scan's Python and its tshark are accounted apart.
PROBE = (
    "import atexit, json, os, resource\n"
    "def _usage():\n"
    "    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))\n"
    "    out = {'self_kb': me.ru_maxrss, 'self_cpu': me.ru_utime + me.ru_stime,\n"
    "           'tshark_kb': kids.ru_maxrss, 'tshark_cpu': kids.ru_utime + kids.ru_stime}\n"
    "    open(os.environ['DNP_BENCH_USAGE'], 'w').write(json.dumps(out))\n"
    "atexit.register(_usage)\n"
    "import tool.cli.scan as m\n"
    "m.main()\n"
)


def entry_point(name: str, module: str) -> list[str]:
    """The installed console script, else the same entry point through this checkout."""
    path = shutil.which(name)
    return [path] if path else [sys.executable, "-c", f"import {module} as m; m.main()"]


def packet_count(capture: Path) -> int:
    out = subprocess.run(["capinfos", "-c", "-M", str(capture)], capture_output=True, text=True, check=True)
    return int(out.stdout.split("Number of packets:")[1].split()[0])


def merge(workdir: Path) -> Path:
    merged = workdir / "merged.pcapng"
    if not merged.exists():
        paths = [str(c) for d in load_devices() for c in d.captures]
        subprocess.run(["mergecap", "-w", str(merged), *paths], check=True)
        print(f"merged {len(paths)} captures into {merged}")
    return merged


def repeat(merged: Path, times: int) -> Path:
    big = merged.with_name(f"merged-x{times}.pcapng")
    if not big.exists():
        subprocess.run(["mergecap", "-a", "-w", str(big), *[str(merged)] * times], check=True)
    return big


def enroll(workdir: Path, env: dict[str, str]) -> Path:
    device = next(d for d in load_devices() if d.name == ENROLL_DEVICE)
    out = workdir / "cam.fp"
    cmd = entry_point("dnp-enroll", "tool.cli.enroll")
    subprocess.run(
        [*cmd, str(device.captures[0]), "--mac", device.mac, "-o", str(out), "--quiet"], check=True, env=env
    )
    return out


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        sys.exit(f"{cmd[0]} failed ({done.returncode}): {done.stderr.strip()}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return elapsed, cpu


def probed_scan(capture: Path, fingerprint: Path, env: dict[str, str]) -> dict:
    """One `dnp-scan CAPTURE --fingerprint FP --json OUT` run: wall time, CPU and peak RSS, apart."""
    usage = capture.with_suffix(".usage.json")
    cmd = [sys.executable, "-c", PROBE, str(capture), "--fingerprint", str(fingerprint)]
    cmd += ["--json", str(capture.with_suffix(".scan.json"))]
    wall, _ = timed(cmd, {**env, "DNP_BENCH_USAGE": str(usage)})
    return {"wall": wall, **json.loads(usage.read_text())}


def speed(merged: Path, fingerprint: Path, rounds: int, packets: int, env: dict[str, str]) -> dict:
    tshark = ["tshark", "-r", str(merged), "-T", "fields", *TSHARK_FIELDS]
    runs: dict[str, list[dict]] = {"tshark": [], "dnp-scan": []}
    for r in range(rounds):
        wall, cpu = timed(tshark, env)
        runs["tshark"].append({"wall": wall, "cpu": cpu})
        scan = probed_scan(merged, fingerprint, env)
        runs["dnp-scan"].append({**scan, "cpu": scan["self_cpu"] + scan["tshark_cpu"]})
        print(
            f"  round {r + 1}: tshark {wall:6.2f} s ({cpu:5.2f} s CPU) | dnp-scan {scan['wall']:6.2f} s "
            f"(CPU: python {scan['self_cpu']:5.2f} s + its tshark {scan['tshark_cpu']:5.2f} s) "
            f"| load {os.getloadavg()[0]:.2f}"
        )
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall", "cpu")} for k, v in runs.items()}
    med["dnp-scan"]["python"] = statistics.median(r["self_cpu"] for r in runs["dnp-scan"])
    med["dnp-scan"]["its tshark"] = statistics.median(r["tshark_cpu"] for r in runs["dnp-scan"])
    ratio = med["dnp-scan"]["wall"] / med["tshark"]["wall"]
    for name, m in med.items():
        rate = packets / m["wall"]
        print(f"{name:8s} median {m['wall']:6.2f} s = {rate:8,.0f} packets/s, {m['cpu']:.2f} s CPU")
    print(f"dnp-scan / tshark wall time: {ratio:.2f}  (goal <= 1.25)")
    cpu_ratio = med["dnp-scan"]["python"] / med["dnp-scan"]["its tshark"]
    print(
        f"dnp-scan's Python CPU / its tshark's CPU: {cpu_ratio:.2f} "
        "(under 1, the Python side keeps pace with tshark wherever two cores are free)"
    )
    report = json.loads(merged.with_suffix(".scan.json").read_text())
    print(f"distinct model inputs encoded: {report['distinct_inputs']} of {report['packets']} packets")
    return {"runs": runs, "median": med, "ratio": ratio}


def overlap(merged: Path, pause: float = 0.1, every: int = 4096) -> dict:
    """read_packets with and without a pause every `every` packets: how much of the pauses tshark
    fills by running ahead (all of it when the reader thread keeps tshark's pipe drained)."""
    from tool.capture import read_packets

    out = {}
    for name, wait in (("plain", 0.0), ("paused", pause)):
        start = time.perf_counter()
        n = 0
        for _ in read_packets(merged):
            n += 1
            if wait and n % every == 0:
                time.sleep(wait)  # as a scan does while it scores a chunk: busy, not reading
        out[name] = time.perf_counter() - start
    out["pauses"] = n // every * pause
    return out


def peak_rss(capture: Path, fingerprint: Path, env: dict[str, str]) -> dict:
    scan = probed_scan(capture, fingerprint, env)
    return {"self_mb": scan["self_kb"] / 1024, "tshark_mb": scan["tshark_kb"] / 1024, "seconds": scan["wall"]}


def help_time(env: dict[str, str], runs: int = 7) -> float:
    cmd = [*entry_point("dnp-scan", "tool.cli.scan"), "--help"]
    return statistics.median(timed(cmd, env)[0] for _ in range(runs))


def pyshark_rate(capture: Path, small: Path, site: str, limit: int) -> dict:
    """pyshark reading the first `limit` packets of `capture`, and what only_summaries returns on `small`."""
    code = (
        "import sys, time, json\n"
        f"sys.path.insert(0, {site!r})\n"
        "import pyshark\n"
        f"cap = pyshark.FileCapture({str(capture)!r}, keep_packets=False)\n"
        "start = time.perf_counter(); n = 0\n"
        "for p in cap:\n"
        "    n += 1\n"
        "    _ = (p.frame_info.number, p.eth.src if 'ETH' in p else '', p.highest_layer)\n"
        f"    if n >= {limit}: break\n"
        "elapsed = time.perf_counter() - start\n"
        "cap.close()\n"
        f"one = pyshark.FileCapture({str(small)!r}, only_summaries=True)\n"
        "summaries = sum(1 for _ in one); one.close()\n"
        "print(json.dumps({'packets': n, 'seconds': elapsed, 'only_summaries': summaries, "
        "'version': pyshark.__version__ if hasattr(pyshark, '__version__') else '0.6'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of each command (default 3)"
    )
    parser.add_argument("--workdir", help="where the merged captures go (default: a temporary folder)")
    parser.add_argument("--no-10x", action="store_true", help="skip the capture 10 times larger")
    parser.add_argument(
        "--pyshark", metavar="SITE", help="a folder where pyshark 0.6 is installed (--target)"
    )
    parser.add_argument(
        "--pyshark-packets", type=int, default=20000, help="packets pyshark reads (default 20000)"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    env = dict(os.environ)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dnp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    load = os.getloadavg()[0]
    print(f"{version}; {os.cpu_count()} CPUs; load average {load:.2f}; python {sys.version.split()[0]}")

    merged = merge(workdir)
    packets = packet_count(merged)
    print(f"{merged}: {packets:,} packets, {merged.stat().st_size / 1e6:.0f} MB")
    fingerprint = enroll(workdir, env)

    print(f"\n== speed: {args.rounds} interleaved rounds")
    result = speed(merged, fingerprint, args.rounds, packets, env)

    print("\n== tshark runs ahead while the scan is busy")
    lap = overlap(merged)
    print(
        f"read_packets alone {lap['plain']:.2f} s; with {lap['pauses']:.1f} s of pauses while reading "
        f"{lap['paused']:.2f} s: {max(0.0, lap['paused'] - lap['plain']):.2f} s of the pauses not hidden"
    )

    print("\n== peak memory")
    one = peak_rss(merged, fingerprint, env)
    print(
        f"1x  ({packets:,} packets): dnp-scan {one['self_mb']:.0f} MB, its tshark {one['tshark_mb']:.0f} MB"
    )
    ten = None
    if not args.no_10x:
        big = repeat(merged, 10)
        ten = peak_rss(big, fingerprint, env)
        print(
            f"10x ({10 * packets:,} packets): dnp-scan {ten['self_mb']:.0f} MB "
            f"({ten['self_mb'] / one['self_mb']:.2f}x), its tshark {ten['tshark_mb']:.0f} MB, "
            f"{ten['seconds']:.0f} s = {10 * packets / ten['seconds']:,.0f} packets/s"
        )

    print("\n== dnp-scan --help")
    help_s = help_time(env)
    print(f"median of 7: {help_s:.2f} s (goal < 0.5)")

    shark = None
    if args.pyshark:
        print(f"\n== pyshark, first {args.pyshark_packets:,} packets of the merged capture")
        small = next(d for d in load_devices() if d.name == ENROLL_DEVICE).captures[0]
        shark = pyshark_rate(merged, small, args.pyshark, args.pyshark_packets)
        if "error" in shark:
            print(f"pyshark failed: {shark['error']}")
        else:
            print(
                f"{shark['packets']:,} packets in {shark['seconds']:.1f} s = "
                f"{shark['packets'] / shark['seconds']:,.0f} packets/s; "
                f"only_summaries=True on {small.name} ({packet_count(small)} packets) returned "
                f"{shark['only_summaries']}"
            )

    med = result["median"]
    print("\n| what | figure | goal |")
    print("|---|---|---|")
    t, d = med["tshark"], med["dnp-scan"]
    print(f"| tshark fields, merged data set | {packets / t['wall']:,.0f} packets/s ({t['wall']:.1f} s) | |")
    print(f"| dnp-scan --json, same capture | {packets / d['wall']:,.0f} packets/s ({d['wall']:.1f} s) | |")
    print(f"| dnp-scan / tshark wall time | {result['ratio']:.2f}x | <= 1.25x |")
    print(
        f"| CPU: dnp-scan's Python, its tshark | {d['python']:.1f} s, {d['its tshark']:.1f} s "
        f"= {d['python'] / d['its tshark']:.2f}x | < 1x |"
    )
    print(
        f"| dnp-scan peak RSS, 1x | {one['self_mb']:.0f} MB (tshark {one['tshark_mb']:.0f} MB) | <= 250 MB |"
    )
    if ten:
        print(
            f"| dnp-scan peak RSS, 10x | {ten['self_mb']:.0f} MB = {ten['self_mb'] / one['self_mb']:.2f}x "
            f"(tshark {ten['tshark_mb']:.0f} MB) | <= 1.2x |"
        )
    print(
        f"| read_packets with {lap['pauses']:.1f} s of pauses | {lap['paused']:.1f} s "
        f"(alone {lap['plain']:.1f} s) | pauses hidden |"
    )
    print(f"| dnp-scan --help | {help_s:.2f} s | < 0.5 s |")
    if shark and "error" not in shark:
        print(
            f"| pyshark 0.6 FileCapture | {shark['packets'] / shark['seconds']:,.0f} packets/s | reference |"
        )


if __name__ == "__main__":
    main()
