"""Build the README's demo from the IoT Sentinel data set: a busy-network capture and an enrollment excerpt.

    python -m examples.make_demo [--data ../shared/data/iot-sentinel]

Writes examples/demo.pcapng: the 11th capture (test half) of the camera and of a few other
devices, shifted to start together and merged in time, as if they shared one network; and
examples/enroll-camera.pcap: the start of the camera's first capture (development half), just
long enough to hold its first 20 packets. The two stay under 200 KB together.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from tool.capture import read_packets
from tool.constants import PACKETS
from tool.evaluation.dataset import load_devices

HERE = Path(__file__).resolve().parent
CAMERA = "D-LinkDayCam"  # an unseen device type: the model never trained on it
OTHERS = ["D-LinkCam", "Withings", "TP-LinkPlugHS110", "Aria", "MAXGateway", "EdnetGateway", "HomeMaticPlug"]
LIMIT = 200_000


def first_capture_excerpt(capture: Path, mac: str, out: Path, packets: int = PACKETS) -> None:
    frames = [p.frame for p in read_packets(capture) if p.eth_src == mac]
    last = frames[packets - 1]
    subprocess.run(["editcap", "-r", str(capture), str(out), f"1-{last}"], check=True, capture_output=True)


def merged_in_time(captures: list[Path], out: Path) -> None:
    start = min(next(read_packets(c)).time for c in captures)
    with tempfile.TemporaryDirectory() as tmp:
        shifted = []
        for i, capture in enumerate(captures):
            offset = start - next(read_packets(capture)).time + i * 0.5
            target = Path(tmp) / f"{i}.pcap"
            subprocess.run(["editcap", "-t", f"{offset:.6f}", str(capture), str(target)], check=True)
            shifted.append(str(target))
        subprocess.run(["mergecap", "-F", "pcapng", "-w", str(out), *shifted], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the data folder (default: ../shared/data/iot-sentinel)")
    args = parser.parse_args()
    devices = {d.name: d for d in load_devices(args.data)}
    camera = devices[CAMERA]
    first_capture_excerpt(camera.captures[0], camera.mac, HERE / "enroll-camera.pcap")
    (HERE / "camera.mac").write_text(camera.mac + "\n")
    merged_in_time([devices[n].captures[10] for n in [CAMERA, *OTHERS]], HERE / "demo.pcapng")
    size = (HERE / "enroll-camera.pcap").stat().st_size + (HERE / "demo.pcapng").stat().st_size
    print(f"demo files: {size} bytes")
    if size >= LIMIT:
        raise SystemExit(f"the demo files take {size} bytes, over {LIMIT}: drop a device")


if __name__ == "__main__":
    main()
