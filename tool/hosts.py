"""Hosts: which packets make a host, and what a scan, a watch or a hunt keeps of each one.

Every mode counts hosts here, the same way: `host_of` says who sent a packet, `Host.count` counts
it (packets, addresses, first and last time) and says whether it is one of the host's first
`host_packets`, the packets its set score reads (tool.scores.set_scores). A change to what a host
is (a router's forwarded packets, say) goes in `host_of`; scan, watch and hunt follow.

    >>> tally = HostTally(host_packets=20)
    >>> firsts = tally.add(packets)            # each packet's host where its score reads it, else None
    >>> [(h.address, h.packets, h.ips) for h in tally.hosts.values()]   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tool.capture import Packet, Sender
from tool.constants import PACKETS
from tool.routers import ROUTER_SOURCES, is_answer, lan_ipv4, off_link, serves
from tool.text import text_of

if TYPE_CHECKING:
    from tool.model import Model

# The IP addresses kept per host: a router's would be hundreds, and a device uses one or two.
MAX_HOST_IPS = 8
# What a DHCP client says before it has an address, not an address it uses.
NO_ADDRESS = ("0.0.0.0", "::")


def host_of(packet: Packet | Sender) -> tuple[str, str]:
    """Which host sent the packet: (its address, what the address is: "mac", "wlan", "sll" or "ip").

    The best address the link layer offers (tool.capture.source_host); ("", "") for a packet with
    none, which belongs to no host: lumped together, such packets would make one bogus host.
    """
    return packet.host, packet.host_kind


def add_ips(ips: list[str], more: Sequence[str]) -> None:
    """Add the addresses of `more` not yet in `ips`, in order, keeping at most MAX_HOST_IPS."""
    ips += [ip for ip in more if ip not in ips]
    del ips[MAX_HOST_IPS:]


@dataclass
class Host:
    """One sending host: what it sent, and its first packets (those its set score reads)."""

    address: str  # the host's address (host_of): a MAC, or an IP address where the link has none
    kind: str = "mac"  # what the address is: "mac", "wlan", "sll" or "ip" (Packet.host_kind)
    number: int = 0  # its place among the hosts of its tally, in order of first packet
    ips: list[str] = field(default_factory=list)  # its IP sources, up to MAX_HOST_IPS, first used first
    packets: int = 0  # packets it sent
    first_count: int = 0  # how many of them count as its first ones (up to host_packets)
    first_seen: float = 0.0  # the time of its first and last packets (epoch seconds)
    last_seen: float = 0.0
    # Its first packets, as the mode keeps them: their embeddings [E] (scan, watch, hunt after the
    # encoder), or the packets themselves until they are embedded (a hunt's worker).
    firsts: list[Any] = field(default_factory=list, repr=False)
    forwarded: int = 0  # packets it forwarded for hosts off this link (tool.routers): in no set
    # The off-link sources (IPv4 addresses, IPv6 /64s) it has sent from, up to ROUTER_SOURCES.
    off_link: set[str] = field(default_factory=set, repr=False)
    lan_ipv4: bool = False  # it has sent from a private (on-link) IPv4 address
    nat: bool = False  # it has sent a packet from an off-link source to a private IPv4 address
    server: bool = False  # it has answered others' DNS or DHCP, or advertised a route (tool.routers.serves)

    @property
    def router(self) -> bool:
        """Whether the host forwards other hosts' packets or serves them (tool.routers)."""
        forwarding = len(self.off_link) >= ROUTER_SOURCES or self.nat
        return forwarding or self.server or (self.lan_ipv4 and any("/" not in s for s in self.off_link))

    def forwards(self, ip_src: str, ip_dst: str = "") -> bool:
        """Whether a packet from `ip_src` to `ip_dst` is one the host forwards (and learn from it):
        from its second off-link source on, from its first where it has sent from a private IPv4
        address or sends it to one (a host behind NAT never sends from a public address, and a host
        with a public one does not reach private ones; an IPv6 host has global addresses of its own,
        so there a second /64 is needed)."""
        if not ip_src:
            return False
        source = off_link(ip_src)
        if source is None:
            if lan_ipv4(ip_src):
                self.lan_ipv4 = True
            return False
        if ip_dst and lan_ipv4(ip_dst):
            self.nat = True
        if len(self.off_link) < ROUTER_SOURCES:
            self.off_link.add(source)
        if self.router and self.ips:  # it forwards: an off-link address it was seen with is not its own
            self.ips[:] = [a for a in self.ips if off_link(a) is None]
        return self.router

    def count(self, packet: Packet | Sender, host_packets: int, use_all: bool = False) -> bool:
        """Count one of the host's packets; whether its score reads it: one of its first
        `host_packets` (with `use_all`, any), never a packet it forwarded, nor, once it is a router,
        its answers to its clients (tool.routers)."""
        self.packets += 1
        self.last_seen = packet.time
        ip = packet.ip_src
        if self.forwards(ip, packet.ip_dst):
            self.forwarded += 1
            return False  # nor is its source one of the host's addresses
        if ip and len(self.ips) < MAX_HOST_IPS and ip not in self.ips and ip not in NO_ADDRESS:
            self.ips.append(ip)
        if is_answer(packet.protocol, packet.info):
            self.server |= serves(packet.protocol, packet.info)
            if self.router:
                return False
        if self.first_count < host_packets:
            self.first_count += 1
            return True
        return use_all

    def join(self, later: Host, host_packets: int) -> None:
        """Take in the same host's tally from a later part of the capture (a hunt's chunks): its first
        packets are the first `host_packets` of both parts' first packets, in capture order."""
        self.packets += later.packets
        self.forwarded += later.forwarded
        self.off_link = set(sorted(self.off_link | later.off_link)[:ROUTER_SOURCES])
        self.lan_ipv4 |= later.lan_ipv4
        self.nat |= later.nat
        self.server |= later.server
        self.last_seen = later.last_seen
        add_ips(self.ips, later.ips)
        if len(self.firsts) < host_packets:
            self.firsts = np.concatenate([self.firsts, later.firsts])[:host_packets]
        self.first_count = len(self.firsts)


class HostTally:
    """The sending hosts of a capture as its packets stream by, in capture order."""

    def __init__(self, host_packets: int = PACKETS, use_all: bool = False):
        self.hosts: dict[str, Host] = {}  # by address, in order of first packet
        self.host_packets = host_packets
        self.use_all = use_all  # every packet counts (set-all, mean), not only a host's first ones

    def add(self, batch: Sequence[Packet | Sender]) -> list[Host | None]:
        """Count a batch of packets: each one's host where its host score reads it, else None."""
        hosts, host_packets, use_all = self.hosts, self.host_packets, self.use_all
        counted: list[Host | None] = []
        for packet in batch:
            address, kind = host_of(packet)
            if not address:
                counted.append(None)
                continue
            host = hosts.get(address)
            if host is None:
                host = hosts[address] = Host(address, kind, len(hosts), first_seen=packet.time)
            counted.append(host if host.count(packet, host_packets, use_all) else None)
        return counted


def joined(parts: Sequence[Sequence[Host]], host_packets: int = PACKETS) -> list[Host]:
    """The hosts of a whole capture from those of its consecutive parts, in order of first packet."""
    merged: dict[str, Host] = {}
    for part in parts:
        for h in part:
            m = merged.get(h.address)
            if m is None:
                merged[h.address] = Host(
                    h.address, h.kind, len(merged), list(h.ips), h.packets, h.first_count,
                    h.first_seen, h.last_seen, h.firsts, h.forwarded, set(h.off_link), h.lan_ipv4, h.nat,
                    h.server,
                )  # fmt: skip
            else:
                m.join(h, host_packets)
    return list(merged.values())


def host_packets_embedded(
    model: Model, hosts: Sequence[Sequence[Packet]], host_packets: int | None
) -> list[np.ndarray]:
    """The embeddings [n, E] of each host's first `host_packets` packets (None: all), each of length 1;
    each distinct model input is encoded once."""
    from tool.model import unit

    keys: dict[Hashable, int] = {}
    inputs: list[tuple[str, int]] = []
    rows: list[list[int]] = []
    for packets in hosts:
        packets = list(packets) if host_packets is None else list(packets)[:host_packets]
        row = []
        for p in packets:
            text = text_of(p, model.fields)
            key = model.key(text, p.length)
            if key not in keys:
                keys[key] = len(inputs)
                inputs.append((text, p.length))
            row.append(keys[key])
        rows.append(row)
    embedded = unit(model.embed([t for t, _ in inputs], [n for _, n in inputs]))
    return [embedded[row] if row else np.zeros((0, model.embedding_dim)) for row in rows]
