"""The README's set-up command, run as written on a Debian python that refuses `pip install` (PEP 668)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

# Debian's and Ubuntu's own python: its stdlib folder holds the EXTERNALLY-MANAGED marker.
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _externally_managed(python: Path) -> bool:
    if not python.is_file():
        return False
    stdlib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return bool(stdlib) and (Path(stdlib) / "EXTERNALLY-MANAGED").is_file()


def _fresh_checkout(dest: Path) -> Path:
    """The repository's tracked files as they are in the working tree, as a fresh clone has them."""
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / os.fsdecode(name))
    return dest


@pytest.mark.slow
def test_make_demo_works_on_an_externally_managed_system_python(tmp_path, clean_env):
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.skip("make or git is missing")
    if not _externally_managed(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} is not an externally managed (PEP 668) python")
    checkout = _fresh_checkout(tmp_path / "deepnetprint")
    # No venv active, and none of the caller's commands on PATH: what a user of a fresh machine has.
    env = {k: v for k, v in clean_env.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    done = subprocess.run(
        ["make", "demo", f"PYTHON={SYSTEM_PYTHON}"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (checkout / ".venv" / "bin" / "dnp-scan").is_file()
    assert (checkout / "examples" / "camera.fp").is_file()
    camera = next(line for line in done.stdout.splitlines() if "b0:c5:54:1c:71:85" in line)
    assert "camera" in camera.split("b0:c5:54:1c:71:85", 1)[1]
    # The venv is the system python's, not the one running the tests.
    assert (checkout / ".venv" / "bin" / "python").resolve() == SYSTEM_PYTHON.resolve()
