"""Benchmark: dnp-watch on a stream that never ends: memory over millions of packets, speed, alert delay.

    python benchmarks/bench_watch.py                        # 5 million packets, about 10 minutes on 2 cores
    python benchmarks/bench_watch.py --packets 500000 --throughput-packets 200000   # a quick look

The stream is the data set's 460 captures merged in time order, replayed in a loop into
`dnp-watch -r -` as one pcap stream on its stdin. Each round shifts every source MAC (its last two
bytes XORed with the round number) and moves the timestamps on by the merge's span, so every round
brings new hosts and the old ones go idle: the case that would grow memory without bounds.

1. Memory: dnp-watch's RSS (and its tshark's, apart) sampled every second over --packets packets with
   one fingerprint, printed against the packets written so far; flat means bounded. Its packets/s.
2. Speed: sustained packets/s over --throughput-packets with 1 fingerprint and with 10.
3. Alert delay: the test merge of six devices (D-LinkCam enrolled) streamed at --rate packets/s with
   each packet stamped with the time it is written; the delay is from the enrolled host's 20th packet
   (the alert's "time") to the alert line arriving on dnp-watch's --jsonl - output.
4. Drops: a stream on stdin is never dropped (the writer waits); the figures printed are dnp-watch's
   own count, which for -i is what tshark / dumpcap report at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tool.evaluation.dataset import load_devices  # noqa: E402

WATCH = [sys.executable, "-c", "import tool.cli.watch as m; m.main()"]
ENROLL = [sys.executable, "-c", "import tool.cli.enroll as m; m.main()"]
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # microseconds, Ethernet
# The devices enrolled for the ten-fingerprint run (the first is the one-fingerprint run's).
ENROLLED = ["D-LinkCam", "Withings", "Aria", "TP-LinkPlugHS110", "HueBridge", "EdimaxPlug1101W",
            "HomeMaticPlug", "WeMoLink", "D-LinkSwitch", "Lightify"]  # fmt: skip
DELAY_CAPTURES = ["D-LinkCam", "HueBridge", "Withings", "D-LinkDayCam", "TP-LinkPlugHS110", "Aria"]


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """(time, frame) of each packet of a little-endian microsecond pcap, as the data set's are."""
    data = path.read_bytes()
    if data[:4] != b"\xd4\xc3\xb2\xa1":
        raise SystemExit(f"{path}: not a little-endian microsecond pcap")
    out, off = [], 24
    while off + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack_from("<IIII", data, off)
        out.append((sec + usec / 1e6, data[off + 16 : off + 16 + incl]))
        off += 16 + incl
    return out


def merged(paths: list[Path]) -> list[tuple[float, bytes]]:
    packets = [p for path in paths for p in read_pcap(path)]
    packets.sort(key=lambda p: p[0])
    return packets


class Stream(threading.Thread):
    """Writes rounds of `packets` to `out` as one pcap stream, with shifted MACs and times; counts them.

    `rate`: packets per second, each stamped with the time it is written (else the capture's times)."""

    def __init__(self, packets: list[tuple[float, bytes]], out, total: int, rate: float | None = None):
        super().__init__(daemon=True)
        self.packets, self.out, self.total, self.rate = packets, out, total, rate
        self.written = 0

    def run(self) -> None:
        first, span = self.packets[0][0], self.packets[-1][0] - self.packets[0][0] + 3600
        start = time.time()
        try:
            self.out.write(PCAP_HEADER)
            round_ = 0
            while self.written < self.total:
                shift = struct.pack(">H", round_ & 0xFFFF)
                buf = []
                for when, frame in self.packets:
                    if self.written >= self.total:
                        break
                    if self.rate:
                        due = start + self.written / self.rate
                        if due > time.time():
                            if buf:
                                self.out.write(b"".join(buf))
                                self.out.flush()
                                buf = []
                            time.sleep(max(0.0, due - time.time()))
                        when = time.time()
                    else:
                        when = when - first + 1.7e9 + span * round_
                    mac = bytes(a ^ b for a, b in zip(frame[10:12], shift))
                    frame = frame[:10] + mac + frame[12:]
                    sec = int(when)
                    buf.append(
                        struct.pack("<IIII", sec, int((when - sec) * 1e6), len(frame), len(frame)) + frame
                    )
                    self.written += 1
                    if len(buf) >= 256:
                        self.out.write(b"".join(buf))
                        buf = []
                self.out.write(b"".join(buf))
                round_ += 1
            self.out.close()
        except (BrokenPipeError, ValueError):
            pass


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task") for c in
                Path(f"/proc/{pid}/task/{t}/children").read_text().split()]  # fmt: skip
    except OSError:
        return []


def run_watch(
    packets, total: int, fps: list[Path], sample: bool = False, rate: float | None = None, extra=()
):
    """One `dnp-watch -r - -f ... --jsonl -` run fed by a Stream; (wall s, RSS samples, JSONL lines with
    their arrival times)."""
    cmd = [*WATCH, "-r", "-", *[a for f in fps for a in ("-f", str(f))], "--jsonl", "-", "--quiet", *extra]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    lines: list[tuple[float, dict]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.time(), json.loads(line)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stream = Stream(packets, proc.stdin, total, rate)
    start = time.perf_counter()
    stream.start()
    samples = []
    next_print = 0
    while proc.poll() is None:
        time.sleep(1.0)
        if sample:
            kids = children(proc.pid)
            row = (stream.written, rss_kb(proc.pid), sum(rss_kb(k) for k in kids))
            if not row[1]:
                continue  # it has just exited
            samples.append(row)
            if stream.written >= next_print:
                print(f"    {row[0]:>10,} packets written: dnp-watch {row[1] / 1024:6.1f} MB, "
                      f"its tsharks {row[2] / 1024:6.1f} MB", flush=True)  # fmt: skip
                next_print += max(total // 10, 1)
    wall = time.perf_counter() - start
    reader.join(5)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode not in (0, 1):
        raise SystemExit(f"dnp-watch failed ({proc.returncode}): {err.strip()}")
    return wall, samples, lines


def enroll(workdir: Path, names: list[str]) -> list[Path]:
    devices = {d.name: d for d in load_devices()}
    out = []
    for name in names:
        path = workdir / f"{name}.fp"
        if not path.exists():
            d = devices[name]
            cmd = [*ENROLL, str(d.captures[0]), "--mac", d.mac, "--name", name, "-o", str(path), "--quiet"]
            subprocess.run(cmd, check=True, cwd=ROOT)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000, help="the memory run's stream length")
    ap.add_argument("--throughput-packets", type=int, default=500_000)
    ap.add_argument("--rate", type=float, default=2000, help="packets/s of the alert-delay stream")
    ap.add_argument("--delay-seconds", type=float, default=30)
    ap.add_argument("--skip", nargs="*", default=[], choices=["memory", "speed", "delay"])
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="dnp-bench-watch-") as tmp:
        workdir = Path(tmp)
        fps = enroll(workdir, ENROLLED)
        devices = load_devices()
        everything = merged([c for d in devices for c in d.captures])
        print(
            f"stream: {len(everything):,} packets a round (the 460 captures merged in time order)", flush=True
        )

        if "memory" not in args.skip:
            print(f"1. memory over {args.packets:,} packets, 1 fingerprint", flush=True)
            wall, samples, lines = run_watch(everything, args.packets, fps[:1], sample=True)
            stats = lines[-1][1] if lines else {}
            after = [s for s in samples if s[0] >= args.packets // 10]
            print(f"   {stats.get('packets', 0):,} packets in {wall:.0f} s = {args.packets / wall:,.0f}/s; "
                  f"{stats.get('hosts', 0):,} hosts, {stats.get('alerts', 0)} alerts, "
                  f"{stats.get('dropped', 0)} dropped")  # fmt: skip
            if after:
                own = [s[1] / 1024 for s in after]
                print(f"   dnp-watch RSS after the first 10%: min {min(own):.1f} MB, max {max(own):.1f} MB, "
                      f"at the end {own[-1]:.1f} MB; its tsharks (one per segment, the next started ahead) "
                      f"max {max(s[2] for s in after) / 1024:.1f} MB", flush=True)  # fmt: skip

        if "speed" not in args.skip:
            for k in (1, 10):
                print(f"2. speed: {args.throughput_packets:,} packets, {k} fingerprint(s)", flush=True)
                wall, _, _ = run_watch(everything, args.throughput_packets, fps[:k])
                print(f"   {args.throughput_packets / wall:,.0f} packets/s ({wall:.1f} s, "
                      f"load {os.getloadavg()[0]:.2f})", flush=True)  # fmt: skip

        if "delay" not in args.skip:
            by_name = {d.name: d for d in devices}
            small = merged([by_name[n].captures[10] for n in DELAY_CAPTURES])
            total = int(args.rate * args.delay_seconds)
            print(
                f"3. alert delay: {total:,} packets at {args.rate:,.0f} packets/s, rounds of {len(small):,}"
            )
            _, _, lines = run_watch(small, total, fps[:1], rate=args.rate)
            delays = [arrived - line["time"] for arrived, line in lines if line["event"] == "alert"]
            if delays:
                print(f"   {len(delays)} alerts: delay median {statistics.median(delays) * 1000:.0f} ms, "
                      f"max {max(delays) * 1000:.0f} ms", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
