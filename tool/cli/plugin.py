"""dnp-plugin: put the Wireshark plugin where Wireshark finds it, or say where it is.

The plugin (lua/deepnetprint.lua, shipped in the package as tool.lua) shows dnp-scan's scores as the
fields deepnetprint.match and deepnetprint.target; docs/wireshark.md says how to use it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import click

from tool.cli.common import run
from tool.files import atomic_output, check_outputs

PLUGIN = "deepnetprint.lua"
EXTCAP = "deepnetprint-extcap"

# \b keeps click from re-wrapping the example lines.
EXAMPLE = """
\b
Examples:
  dnp-plugin install
  tshark -r cap.pcap -X lua_script:$(dnp-plugin path) -X lua_script1:scores=cap.scores.csv \\
      -T fields -e frame.number -e deepnetprint.match -e deepnetprint.target
"""

AFTER_INSTALL = """\
Restart Wireshark (or Analyze > Reload Lua Plugins), then:
  scores:  dnp-scan CAPTURE -f DEVICE.fp --annotate CAPTURE.scores.csv, and set that file in
           Edit > Preferences > Protocols > DEEPNETPRINT > Scores file (or export DNP_SCORES=FILE)
  column:  Preferences > Appearance > Columns: add a Custom column, field deepnetprint.match_text
  filter:  deepnetprint.host_match > 0.9 (every packet of a matching host), deepnetprint.match > 0.9
  tshark:  tshark -r CAPTURE -o deepnetprint.scores_file:CAPTURE.scores.csv -Y 'deepnetprint.match > 0.9'"""


AFTER_EXTCAP = """\
Restart Wireshark (or Capture > Refresh Interfaces): the capture dialog lists "DeepNetPrint"; its
options (the gear) take the interface to capture on and a fingerprint. Each packet arrives with the
comment deepnetprint.match=... target=... host_match=..., shown as the plugin's fields (dnp-plugin
install). tshark: tshark -i deepnetprint -o extcap.deepnetprint.iface:eth0 \\
  -o extcap.deepnetprint.fingerprint:cam.fp -Y 'deepnetprint.host_match > 0.9'"""


def plugin_file() -> Path:
    """The plugin shipped with the package, else the one in the source tree."""
    try:
        from importlib.resources import files

        # str() of the resource is a real path for a package on disk (regular or namespace package);
        # only such a file can be handed to tshark, so a zipped install falls through.
        resource = Path(str(files("tool.lua") / PLUGIN))
        if resource.is_file():
            return resource
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    here = Path(__file__).resolve().parent.parent.parent / "lua" / PLUGIN
    if here.is_file():
        return here
    raise click.ClickException(f"{PLUGIN} is missing from this installation; reinstall deepnetprint")


def personal_lua_plugins() -> Path:
    """The folder `tshark -G folders` calls "Personal Lua Plugins"."""
    from tool.capture import tshark_path

    done = subprocess.run(
        [tshark_path(), "-G", "folders"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    for line in done.stdout.splitlines():
        label, _, value = line.partition(":")
        if label.strip() == "Personal Lua Plugins" and value.strip():
            return Path(value.strip())
    raise click.ClickException("tshark -G folders does not name a personal Lua plugins folder")


@click.group(epilog=EXAMPLE)
def command() -> None:
    """The DeepNetPrint Wireshark plugin: the fields deepnetprint.match (each packet's match
    probability, the full score), deepnetprint.target (its fingerprint), deepnetprint.host_match (its
    host's score, -1 to 1: filter on it for every packet of a matching host), deepnetprint.router
    (present on the packets of a router: the sending host is a router, its packets are not judged as
    a device's) and deepnetprint.match_text (the match to 3 decimals, for a column)."""


def personal_extcap() -> Path:
    """Wireshark's personal extcap folder: `tshark -G folders` names it from 4.2 on; 4.0 reads the
    extcap folder of the personal configuration (~/.config/wireshark/extcap)."""
    from tool.capture import tshark_path

    done = subprocess.run(
        [tshark_path(), "-G", "folders"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    folders = {}
    for line in done.stdout.splitlines():
        label, _, value = line.partition(":")
        folders.setdefault(label.strip(), value.strip())
    if folders.get("Personal Extcap path"):
        return Path(folders["Personal Extcap path"])
    if folders.get("Personal configuration"):
        return Path(folders["Personal configuration"]) / "extcap"
    raise click.ClickException("tshark -G folders names no personal extcap or configuration folder")


def install_extcap(folder: str | None) -> Path:
    """Write the extcap launcher (tool.cli.extcap) into Wireshark's extcap folder, executable."""
    from tool.cli.extcap import launcher

    target_dir = Path(folder) if folder else personal_extcap()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / EXTCAP
    check_outputs({"--folder": str(target)}, {})
    with atomic_output(target) as out:
        out.write(launcher())
        os.fchmod(out.fileno(), 0o755)  # Wireshark runs only executables it finds there
    return target


@command.command()
@click.option(
    "--folder",
    type=click.Path(file_okay=False),
    help="Install there instead.  [default: tshark's Personal Lua Plugins folder; with --extcap, the "
    "personal extcap folder]",
)
@click.option(
    "--extcap",
    is_flag=True,
    help="Install the DeepNetPrint capture interface for Wireshark's capture dialog instead (extcap).",
)
def install(folder: str | None, extcap: bool) -> None:
    """Copy the plugin into your personal Wireshark Lua plugins folder."""
    if extcap:
        target = install_extcap(folder)
        click.echo(f"Installed the DeepNetPrint capture interface: {target}")
        click.echo(AFTER_EXTCAP)
        return
    source = plugin_file()
    target_dir = Path(folder) if folder else personal_lua_plugins()
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / PLUGIN
    check_outputs({"--folder": str(target)}, {"the shipped plugin": [str(source)]})
    # Copy then rename: a Wireshark starting meanwhile sees the old plugin or the new one, never half.
    with atomic_output(target, "wb") as out, open(source, "rb") as f:
        shutil.copyfileobj(f, out)
    click.echo(f"Installed the DeepNetPrint plugin: {target}")
    click.echo(AFTER_INSTALL)


@command.command()
def path() -> None:
    """Print the plugin's path, for tshark -X lua_script:$(dnp-plugin path)."""
    click.echo(str(plugin_file()))


main = run(command, "dnp-plugin")
