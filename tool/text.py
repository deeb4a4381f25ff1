"""The packet text the model reads: Wireshark's Protocol and Info columns, with addresses masked.

Addresses are not behaviour: a model that reads IP or MAC addresses, DHCP transaction ids, TCP
sequence numbers or ephemeral ports learns the network it was trained on, not the device. This
module is the one place that decides what the model may see; training (`export/`) and the
runtime (`tool/`) both call `packet_text`, so the two cannot drift apart.

What is kept is behaviour: protocol names, message types, well-known ports, HTTP paths, DNS and
mDNS names (model numbers included), multicast groups a device joins, payload lengths.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Protocol

# Placeholders are upper-case words the Info column never prints on its own.
IP4 = "IPV4"
IP6 = "IPV6"
MAC = "MACADDR"
HEXID = "0xID"
NUM = "N"
PORT = "EPORT"
UNIT = "UNITID"

_MAC_RE = re.compile(r"\b[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}\b")
_IP6_ARPA_RE = re.compile(r"\b(?:[0-9A-Fa-f]\.){32}ip6\.arpa\b", re.IGNORECASE)
_IP4_ARPA_RE = re.compile(r"\b(?:\d{1,3}\.){4}in-addr\.arpa\b", re.IGNORECASE)
# Candidate IPv6 addresses: hex groups and at least two colons; validated before masking.
_IP6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])")
_IP4_RE = re.compile(r"(?<![\w.])(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?![\w]|\.\d)")
_HEX_RE = re.compile(r"\b0x[0-9A-Fa-f]{3,}\b")
# TCP counters that restart at random values on every connection.
_COUNTERS = ("Seq", "Ack", "Win", "TSval", "TSecr", "SLE", "SRE")
_COUNTER_RE = re.compile(rf"\b({'|'.join(_COUNTERS)})=\d+")
_PORTS = r"(\d{1,5}) (→|->) (\d{1,5})\b"  # the port pair that opens a TCP or UDP Info
_PORTS_RE = re.compile(r"\b" + _PORTS)
# A trailing run of hex digits on a host-name label, as in dcs-935l5b0e or Lightify-017b5f6b:
# units derive these from their MAC or serial, so they tell one unit from another, not a type.
_UNIT_RE = re.compile(r"(?<=[A-Za-z0-9-])([0-9A-Fa-f]{4,})(?=$|[.\s,\"'_)])")
_HEX_RUN_RE = re.compile(r"[0-9A-Fa-f]{4,}")
_UNIT_END = frozenset(".,\"'_)")  # and whitespace, as \s: what may follow a unit id
_UNIT_BEFORE = re.compile(r"[A-Za-z0-9-]").fullmatch
_REPEAT_RE = re.compile(r"(?P<item>[^,]+)(?:, (?P=item)){2,}")

EPHEMERAL_MIN = 32768  # Linux's lowest ephemeral port; IANA's range starts at 49152


def _is_unit_id(run: str) -> bool:
    # Model numbers (DCH-S150, HS110) are short or all digits; unit ids mix letters and digits.
    has_digit = any(c.isdigit() for c in run)
    has_letter = any(c.isalpha() for c in run)
    return (has_digit and has_letter) or len(run) >= 8


def _mask_ip4(match: re.Match[str]) -> str:
    octets = [int(g) for g in match.groups()]
    if any(o > 255 for o in octets):
        return match.group(0)
    # Multicast groups and the all-zero / broadcast addresses name a protocol, not a host.
    if 224 <= octets[0] <= 239 or match.group(0) in ("0.0.0.0", "255.255.255.255"):
        return match.group(0)
    return IP4


def _mask_ip6(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        addr = ipaddress.IPv6Address(text.split("%")[0])
    except ValueError:
        return text
    return text if addr.is_multicast else IP6


def mask_ports(match: re.Match[str]) -> str:
    src, arrow, dst = int(match.group(1)), match.group(2), int(match.group(3))

    # The client side of a flow is the higher port; any port in the ephemeral range is a client's.
    def masked(port: int, other: int) -> str:
        if port >= EPHEMERAL_MIN or (port >= 1024 and port > other):
            return PORT
        return str(port)

    return f"{masked(src, dst)} {arrow} {masked(dst, src)}"


def _mask_unit(match: re.Match[str]) -> str:
    run = match.group(1)
    return UNIT if _is_unit_id(run) else run


def _may_repeat(text: str) -> bool:
    # _REPEAT_RE tries every start position and backtracks (quadratic on a long Info); a run needs a
    # comma-separated item that recurs right after itself, which one split finds in linear time.
    parts = text.split(",")
    return any(
        len(b) > 1 and b[0] == " " and c.startswith(b) and a.endswith(b[1:])
        for a, b, c in zip(parts, parts[1:], parts[2:])
    )


def _mask_units(text: str) -> str:
    # What _UNIT_RE.sub(_mask_unit, text) does, in linear time: the lookahead's characters are not
    # hex digits, so a match always ends where its run of hex digits ends; it starts at the run's
    # first digit when the lookbehind allows, else at the second.
    out, last = [], 0
    for m in _HEX_RUN_RE.finditer(text):
        start, end = m.span()
        if end < len(text) and text[end] not in _UNIT_END and not text[end].isspace():
            continue
        if start == 0 or not _UNIT_BEFORE(text[start - 1]):
            start += 1
            if end - start < 4:
                continue
        out.append(text[last:start])
        run = text[start:end]
        out.append(UNIT if _is_unit_id(run) else run)
        last = end
    out.append(text[last:])
    return "".join(out)


def _collapse_repeats(match: re.Match[str]) -> str:
    item = match.group("item")
    count = match.group(0).count(", " + item.strip()) + 1
    return f"{item} (x{count})"


def mask_info(info: str) -> str:
    """Mask addresses, ids and per-connection counters in an Info text; keep the behaviour.

    >>> mask_info("Who has 10.10.10.1? Tell 10.10.10.37")
    'Who has IPV4? Tell IPV4'
    >>> mask_info("49158 → 80 Len=210")
    'EPORT → 80 Len=210'
    """
    text = _MAC_RE.sub(MAC, info)
    text = _IP6_ARPA_RE.sub(f"{IP6}.ip6.arpa", text)
    text = _IP4_ARPA_RE.sub(f"{IP4}.in-addr.arpa", text)
    text = _IP6_RE.sub(_mask_ip6, text)
    text = _IP4_RE.sub(_mask_ip4, text)
    text = _HEX_RE.sub(HEXID, text)
    text = _COUNTER_RE.sub(lambda m: f"{m.group(1)}={NUM}", text)
    text = _PORTS_RE.sub(mask_ports, text)
    text = _mask_units(text)
    if _may_repeat(text):
        text = _REPEAT_RE.sub(_collapse_repeats, text)
    return " ".join(text.split())


def packet_text(protocol: str, info: str, tag: str = "") -> str:
    """The text the model reads for one packet: its protocol, a tab, its masked Info; with a `tag`
    (`field_tag`: dissected fields the Info does not show), the tag in braces before the Info.

    >>> packet_text("DHCP", "DHCP Discover - Transaction ID 0x391675c3")
    'DHCP\\tDHCP Discover - Transaction ID 0xID'
    >>> packet_text("DHCP", "DHCP Discover - Transaction ID 0x391675c3", "prl=1,3,6,15 vc=udhcp 1.19.4")
    'DHCP\\t{prl=1,3,6,15 vc=udhcp 1.19.4} DHCP Discover - Transaction ID 0xID'
    """
    if tag:
        return f"{protocol.strip()}\t{{{tag}}} {mask_info(info)}"
    return f"{protocol.strip()}\t{mask_info(info)}"


class Dissected(Protocol):
    """What `field_tag` and `text_of` read of a packet (a tool.capture.Packet)."""

    protocol: str
    info: str
    dhcp_prl: str
    dhcp_vendor: str
    ja3: str
    user_agent: str


# Each field's share of the 128 bytes the encoder reads (with the frame length, the protocol and a DHCP
# Info, the longest tag of both labs still fits whole). The tag goes before the Info: a long HTTP path
# or mDNS Info is cut at its end, not the tag.
PRL_CHARS = 48  # about 16 option numbers; Fingerbank's lists rarely run longer
VENDOR_CHARS = 32  # "udhcp 1.21.1--LSDK-10.2-00082-4" is 31
JA3_CHARS = 12  # of the MD5's 32 hex digits: enough to tell a few thousand TLS stacks apart
AGENT_CHARS = 40  # the product tokens open a User-Agent; the rest is platform detail


def field_tag(packet: Dissected) -> str:
    """The fields Wireshark dissects but the Info column does not show, as a short tag: the DHCP
    parameter request list and vendor class (what Fingerbank identifies a client by), the TLS client's
    JA3 hash, the HTTP User-Agent; "" where a packet has none (most packets).

    These are behaviour: a client's software stack picks them, not its network. The vendor class and
    User-Agent are masked as the Info is (a serial or MAC in them is a unit, not a type); no DHCP host
    name is read (units derive theirs from their MAC). The JA3 hash is not masked: it is the value.

    >>> from tool.capture import Packet
    >>> dhcp = Packet(1, 0.0, "", "", "", "", 342, "DHCP", "", dhcp_prl="1,3,6,15", dhcp_vendor="udhcp 1.1")
    >>> field_tag(dhcp)
    'prl=1,3,6,15 vc=udhcp 1.1'
    """
    prl, vendor, ja3, agent = packet.dhcp_prl, packet.dhcp_vendor, packet.ja3, packet.user_agent
    if not (prl or vendor or ja3 or agent):
        return ""
    parts = []
    if prl:
        parts.append(f"prl={prl[:PRL_CHARS]}")
    if vendor:
        parts.append(f"vc={mask_info(vendor)[:VENDOR_CHARS]}")
    if ja3:
        parts.append(f"ja3={ja3[:JA3_CHARS]}")
    if agent:
        parts.append(f"ua={mask_info(agent)[:AGENT_CHARS]}")
    return " ".join(parts)


def text_of(packet: Dissected, fields: bool) -> str:
    """`packet_text` of a tool.capture.Packet, with its `field_tag` where `fields` (a model's
    config.fields, tool.model.Model.fields) asks for it."""
    tag = field_tag(packet) if fields else ""
    return packet_text(packet.protocol, packet.info, tag)


# Per-connection numbers that packet_text masks anyway: TCP counters, and the port pair that opens
# a TCP or UDP Info. Blanking them before the memo lookup turns the merged data set's 105,000
# distinct raw Infos into 7,900 memo keys, so packet_text runs once per key, not once per packet.
# A counter is blanked only where it is a whole token (no '.', ':' or '-' after it), so no address
# pattern that packet_text applies before its counter rule can have read those digits; leading
# ports are masked by packet_text's own rule. tests/test_robustness.py checks on every packet of the
# data set that packet_text of the blanked Info is packet_text of the raw one.
# The counter's name is checked behind the '=' so that the replacement is a literal string: re
# calls back into Python for a template or a function, once per counter, 421,000 times here.
_COUNTERS_RE = re.compile("=(?:" + "|".join(rf"(?<=\b{c}=)" for c in _COUNTERS) + r")\d+(?![\w.:-])")
_LEADING_PORTS_RE = re.compile(_PORTS)


@functools.lru_cache(maxsize=1 << 14)
def _masked_ports(head: str) -> str:
    match = _LEADING_PORTS_RE.match(head)
    assert match is not None
    return mask_ports(match)


def memo_info(info: str) -> str:
    """The Info with per-connection numbers blanked: packet_text(p, memo_info(i)) == packet_text(p, i).

    >>> memo_info("49158 → 80 [ACK] Seq=17735 Ack=1670 Win=14048 Len=0")
    'EPORT → 80 [ACK] Seq=0 Ack=0 Win=0 Len=0'
    """
    if info[:1].isdigit():
        m = _LEADING_PORTS_RE.match(info)
        if m is not None:
            info = _masked_ports(m.group(0)) + info[m.end() :]
    if "=" in info:
        info = _COUNTERS_RE.sub("=0", info)
    return info
