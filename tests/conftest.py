"""Shared fixtures: the real data set, a clean tshark environment, and the real commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tool.evaluation.dataset import default_data_dir, load_devices

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if not path.is_dir():
        pytest.fail(f"the IoT Sentinel data set is missing at {path} (set DNP_DATA)")
    return path


@pytest.fixture(scope="session")
def devices(data_dir):
    return {d.name: d for d in load_devices(data_dir)}


@pytest.fixture(scope="session", autouse=True)
def _tools_present():
    for tool in ("tshark", "mergecap", "editcap", "capinfos"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: the README's test command installs it")


@pytest.fixture(scope="session")
def clean_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose HOME holds no personal Wireshark plugins or preferences."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    env["DNP_CACHE"] = os.environ.get("DNP_CACHE", str(home / ".cache" / "deepnetprint"))
    return env


def run_command(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300, **kw):
    """Run one of the project's console scripts as a user would, through its entry point."""
    module = {
        "dnp-enroll": "tool.cli.enroll",
        "dnp-scan": "tool.cli.scan",
        "dnp-eval": "tool.evaluation.cli",
        "dnp-plugin": "tool.cli.plugin",
        "dnp-hunt": "tool.cli.hunt",
        "dnp-watch": "tool.cli.watch",
    }[name]
    code = f"import {module} as m; m.main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=kw.pop("cwd", ROOT),
        stdin=subprocess.DEVNULL,
        **kw,
    )


def enroll_device(device, out: Path, env: dict[str, str], name: str | None = None) -> Path:
    """Enroll a data-set device from its first capture with the real dnp-enroll."""
    done = run_command(
        "dnp-enroll",
        str(device.captures[0]),
        "--mac",
        device.mac,
        "--name",
        name or device.name,
        "-o",
        str(out),
        "--quiet",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return out


# The devices move to another network: every unicast address changes, consistently. (tcprewrite's
# --seed would also turn 0.0.0.0 into a host address, which changes what an ARP probe means.) Private
# addresses stay private: a host sending from a public address beside its private one forwards
# (tool.routers), so moving a LAN into public space would change what a host is.
PNAT = "--pnat=10.0.0.0/8:172.16.0.0/12,192.168.0.0/16:172.20.0.0/16"


def rewrite_addresses(source: Path, out: Path) -> set[int]:
    """Rewrite every IP and MAC address (and TCP sequence numbers) of a capture with tcprewrite.

    Returns the 0-based indexes of the frames whose IP length tcprewrite changed as well: tcprewrite
    4.4.3 grows the IP length of frames with Ethernet padding to cover the padding, so their TCP
    "Len=" changes. That is its own artefact, not an address change; callers leave those out.
    """
    if shutil.which("tcprewrite") is None:
        pytest.fail("tcprewrite is not installed: the README's test command installs tcpreplay")
    subprocess.run(
        ["tcprewrite", PNAT, "--enet-mac-seed=7", "--tcp-sequence=99", "-i", str(source), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    pairs = zip(_ip_lengths(source), _ip_lengths(out))
    return {i for i, (a, b) in enumerate(pairs) if a != b}


def _ip_lengths(path: Path) -> list[str]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "ip.len"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def not_a_file(kind: str, path: Path, too_large: int) -> Path:
    """What an input path may be instead of a readable file of sane size: "/dev/zero", "fifo",
    "folder", or "too large" (a sparse file of `too_large` bytes, no disk used). Returns the path."""
    if kind == "/dev/zero":
        return Path("/dev/zero")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "too large":
        with open(path, "wb") as f:
            f.truncate(too_large)
    else:
        raise ValueError(f"no such kind of path: {kind!r}")
    return path
