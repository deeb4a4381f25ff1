"""Shared fixtures: the real data set, a clean tshark environment, and the real commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tool.dataset import default_data_dir, load_devices

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
        "dnp-eval": "tool.cli.evaluate",
        "dnp-plugin": "tool.cli.plugin",
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
