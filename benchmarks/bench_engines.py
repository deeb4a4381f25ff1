"""Benchmark: what the engine itself costs a hunt, Dask distributed against Ray, on 2 worker processes.

    pip install --target /tmp/ray-site ray        # Ray is a reference, not a dependency
    python benchmarks/bench_engines.py --ray-site /tmp/ray-site

For each engine, in a fresh process: the time to start a local cluster of 2 worker processes, then
to run 460 small tasks (one per capture of the data set, each returning a few host rows' worth of
data: what a hunt's per-capture results weigh) and collect them, then to shut the cluster down; and
the memory of the processes the engine started (workers and their helpers, idle, after the tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TASKS = 460
COMMON = """
import json, os, time
def task(i):
    return [{"host": f"00:00:00:00:00:{i % 256:02x}", "match": {"cam": 0.5}, "ips": ["10.0.0.1"]}] * 3
"""

DASK = (
    COMMON
    + """
if __name__ == "__main__":
    from distributed import Client, LocalCluster
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    t1 = time.perf_counter()
    out = client.gather([client.submit(task, i, pure=False) for i in range(TASKS)])
    t2 = time.perf_counter()
    kids = {p.pid for p in __import__("psutil").Process().children(recursive=True)}
    rss = sum(__import__("psutil").Process(k).memory_info().rss for k in kids)
    client.close(); cluster.close()
    t3 = time.perf_counter()
    print(json.dumps({"start": t1 - t0, "tasks": t2 - t1, "stop": t3 - t2, "rss": rss, "procs": len(kids)}))
"""
)

RAY = (
    COMMON
    + """
if __name__ == "__main__":
    import ray
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    remote = ray.remote(task)
    t1 = time.perf_counter()
    out = ray.get([remote.remote(i) for i in range(TASKS)])
    t2 = time.perf_counter()
    import psutil
    kids = {p.pid for p in psutil.Process().children(recursive=True)}
    rss = sum(psutil.Process(k).memory_info().rss for k in kids if psutil.pid_exists(k))
    ray.shutdown()
    t3 = time.perf_counter()
    print(json.dumps({"start": t1 - t0, "tasks": t2 - t1, "stop": t3 - t2, "rss": rss, "procs": len(kids)}))
"""
)


def run(code: str, env: dict[str, str], tmp: Path, name: str) -> dict:
    script = tmp / f"engine_{name}.py"
    script.write_text(code.replace("TASKS", str(TASKS)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        sys.exit(f"{name} failed: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--ray-site", help="A folder Ray was installed into with pip --target.")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    engines = [("dask", DASK, dict(os.environ))]
    if args.ray_site:
        path = os.pathsep.join([args.ray_site, os.environ.get("PYTHONPATH", "")])
        engines.append(("ray", RAY, dict(os.environ, PYTHONPATH=path)))
    for name, code, env in engines:
        for _ in range(args.rounds):
            r = run(code, env, tmp, name)
            print(
                f"{name}: start {r['start']:.2f} s, {TASKS} tasks {r['tasks']:.2f} s, "
                f"stop {r['stop']:.2f} s; "
                f"{r['procs']} processes started, {r['rss'] / 2**20:.0f} MB resident"
            )


if __name__ == "__main__":
    main()
