"""How much the deepnetprint Lua plugin slows tshark down, on the whole data set merged into one capture.

All 460 captures of the 23 devices are concatenated (174,822 frames) and every frame gets a score, as
dnp-scan's --annotate gives every packet one: the plugin's worst case. tshark then prints the capture
four ways, interleaved round by round so that a busy machine slows each alike:
  plain          tshark -n -r all.pcapng                                      (no plugin)
  plugin         the same, with the plugin and the sidecar loaded
  plain+column   no plugin, a custom column (%Cus:frame.len) after Info
  plugin+column  the plugin, and the Match column (%Cus:deepnetprint.match) after Info
(a custom column makes tshark build each packet's tree, so each column run has its own baseline).
It prints the median wall and CPU (user+sys) seconds of each and the ratio to its baseline.

    python benchmarks/lua_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tool.evaluation.dataset import load_devices  # noqa: E402
from tool.sidecar import write_sidecar  # noqa: E402

PLUGIN = ROOT / "lua" / "deepnetprint.lua"
COLUMNS = 'gui.column.format:"No.","%m","Info","%i","Match","%Cus:deepnetprint.match"'
PLAIN_COLUMNS = 'gui.column.format:"No.","%m","Info","%i","Length","%Cus:frame.len"'


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run, its output thrown away as a pipe reader would."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="runs of each variant (default 5)")
    parser.add_argument("--data", help="the IoT Sentinel folder (default: the shared data set)")
    args = parser.parse_args()

    import numpy as np

    devices = load_devices(args.data)
    with tempfile.TemporaryDirectory(prefix="dnp-bench-") as tmp:
        tmp = Path(tmp)
        capture = tmp / "all.pcapng"
        paths = [str(p) for d in devices for p in d.captures]
        subprocess.run(["mergecap", "-a", "-w", str(capture), *paths], check=True, capture_output=True)
        count = int(
            subprocess.run(
                ["capinfos", "-c", "-M", "-T", "-r", str(capture)], capture_output=True, text=True, check=True
            ).stdout.split("\t")[-1]
        )
        rng = np.random.default_rng(0)
        names = [d.name for d in devices]
        sidecar = tmp / "all.scores.csv"
        rows = ((f, float(rng.random()), names[int(rng.integers(len(names)))]) for f in range(1, count + 1))
        write_sidecar(sidecar, rows)
        # A fresh HOME: no personally installed plugin or preference takes part.
        env = dict(os.environ, HOME=str(tmp), XDG_CONFIG_HOME=str(tmp / ".config"))
        env.pop("DNP_SCORES", None)
        base = ["tshark", "-n", "-r", str(capture)]
        lua = ["-X", f"lua_script:{PLUGIN}", "-X", f"lua_script1:scores={sidecar}"]
        variants = {
            "plain": base,
            "plugin": base + lua,
            "plain+column": base + ["-o", PLAIN_COLUMNS],
            "plugin+column": base + lua + ["-o", COLUMNS],
        }
        baseline = {
            "plain": "plain",
            "plugin": "plain",
            "plain+column": "plain+column",
            "plugin+column": "plain+column",
        }
        print(f"{len(paths)} captures, {count} frames, all scored; tshark {tshark_version()}", flush=True)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
        for r in range(args.rounds):
            for name, cmd in variants.items():
                times[name].append(timed(cmd, env))
            line = "  ".join(f"{k} {v[-1][0]:.2f}s" for k, v in times.items())
            print(f"round {r + 1}: {line}", flush=True)
    medians = {
        name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for name, runs in times.items()
    }
    print(f"\nmedian of {args.rounds} interleaved rounds   wall s   cpu s   wall ratio   cpu ratio")
    for name, (wall, cpu) in medians.items():
        base_wall, base_cpu = medians[baseline[name]]
        print(f"{name:<36} {wall:6.2f}  {cpu:6.2f}   {wall / base_wall:9.2f}   {cpu / base_cpu:9.2f}")


def tshark_version() -> str:
    out = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"\d+\.\d+\.\d+", out)
    return found.group(0) if found else "?"


if __name__ == "__main__":
    main()
