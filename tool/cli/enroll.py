"""dnp-enroll: learn a device's fingerprint from a few of its packets."""

from __future__ import annotations

import click

from tool.cli.common import require_stdout, run
from tool.constants import MIN_PACKETS, PACKETS

EXAMPLE = """
Examples:

  dnp-enroll cam.pcap --mac b0:c5:54:25:5b:0e --name cam -o cam.fp

  dnp-enroll monday.pcap tuesday.pcap --mac b0:c5:54:25:5b:0e --count 100 --name cam -o cam.fp
"""


@click.command(epilog=EXAMPLE)
@click.argument("captures", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--mac", help="The device's MAC address: its packets are those it sent.")
@click.option("--filter", "display_filter", metavar="FILTER", help="A Wireshark display filter instead.")
@click.option(
    "--count",
    default=PACKETS,
    show_default=True,
    help=f"How many packets to learn from (at least {MIN_PACKETS}), in capture order, across the captures.",
)
@click.option(
    "--name",
    help="The fingerprint's name: 1 to 64 letters, digits, spaces or ._-+@.  [default: the capture's name]",
)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .fp file to write.")
@click.option(
    "--models", type=click.Path(exists=True, file_okay=False), help="Model folder (default: shipped)."
)
@click.option("--quiet", is_flag=True, help="Print nothing on success.")
def command(
    captures: tuple[str, ...],
    mac: str | None,
    display_filter: str | None,
    count: int,
    name: str | None,
    output: str,
    models: str | None,
    quiet: bool,
) -> None:
    """Learn the fingerprint of the device selected in CAPTURES and write it as a JSON file.

    Takes the device's first --count packets in capture order, from the first capture on: a device
    with fewer packets in one capture continues into the next. More packets than the 20 the model
    is measured with are welcome (the model card's learning curve says what they buy).
    Exit status: 0 on success, 2 on error (fewer packets than --count, a bad capture, a bad MAC or filter).
    """
    from tool.files import check_outputs
    from tool.fingerprint import check_name, enroll
    from tool.model import Model
    from tool.report import console, print_fingerprint

    if (mac is None) == (display_filter is None):
        raise click.UsageError("give exactly one of --mac or --filter")
    if display_filter is not None and not display_filter.strip():
        raise click.UsageError("--filter is empty: it would select every host's packets")
    if name is not None:
        check_name(name)
    check_outputs({"-o": output}, {"the capture": list(captures)})
    if not quiet:
        require_stdout()
    fingerprint = enroll(
        captures, mac=mac, display_filter=display_filter, count=count, name=name, model=Model.load(models)
    )
    fingerprint.save(output)
    if not quiet:
        print_fingerprint(console(), fingerprint, output)


main = run(command, "dnp-enroll")
