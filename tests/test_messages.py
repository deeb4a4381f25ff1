"""What a new user's slips get: one line on stderr that points to what was meant."""

from __future__ import annotations

import pytest

from conftest import ROOT, run_command


def test_a_folder_given_to_dnp_scan_points_to_dnp_hunt(clean_env):
    # Any existing file as the fingerprint: the capture is refused before a fingerprint is read.
    done = run_command("dnp-scan", str(ROOT / "examples"), "-f", str(ROOT / "README.md"), env=clean_env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a folder" in lines[0] and "dnp-hunt" in lines[0], done.stderr


@pytest.mark.parametrize(
    "command,given,meant",
    [
        ("dnp-scan", "--fp", "--fingerprint"),
        ("dnp-hunt", "--fp", "--fingerprint"),
        ("dnp-watch", "--fp", "--fingerprint"),
        ("dnp-enroll", "--nme", "--name"),
    ],
)
def test_a_shorthand_option_suggests_the_option_it_abbreviates(command, given, meant, clean_env):
    done = run_command(command, given, "x", env=clean_env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"Did you mean '{meant}'?" in lines[0], done.stderr
    assert "--help" not in lines[0]
