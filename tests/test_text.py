"""Masking: addresses and ids go, behaviour stays, and rewritten addresses change nothing."""

from __future__ import annotations

import pytest

from conftest import rewrite_addresses
from tool.capture import Packet, read_many, read_packets
from tool.text import AGENT_CHARS, PRL_CHARS, VENDOR_CHARS, field_tag, packet_text, text_of

CASES = [
    # (protocol, raw Info, what must be gone, what must stay)
    ("ARP", "Who has 10.10.10.1? Tell 10.10.10.37", ["10.10.10"], ["Who has", "Tell"]),
    ("ARP", "10.10.10.1 is at 28:b2:bd:c3:41:79", ["28:b2", "10.10"], ["is at"]),
    ("DHCP", "DHCP Request  - Transaction ID 0x391675c3", ["391675c3"], ["DHCP Request", "Transaction ID"]),
    (
        "TCP",
        "51585 → 443 [ACK] Seq=1773544796 Ack=167007766 Win=14048 Len=0 TSval=4294949358 TSecr=241616295",
        ["51585", "1773544796", "167007766", "14048", "4294949358", "241616295"],
        ["→ 443", "[ACK]", "Len=0"],
    ),
    ("UDP", "49158 → 80 Len=210", ["49158"], ["→ 80", "Len=210"]),
    ("TCP", "10000 → 34781 [SYN, ACK]", ["34781"], ["10000 →", "[SYN, ACK]"]),
    (
        "MDNS",
        "Standard query 0x0000 ANY f.6.d.3.9.a.e.f.f.f.8.7.d.8.2.9.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.ip6.arpa, "
        '"QM" question ANY dsp3D6F.local, "QM" question ANY 176.10.10.10.in-addr.arpa, "QM" question A '
        "10.10.10.176 PTR dsp3D6F.local AAAA fe80::928d:78ff:fea9:3d6f PTR dsp.local",
        ["3D6F", "176.10", "fe80", "f.6.d.3"],
        ["dsp.local", "in-addr.arpa", "ip6.arpa", "Standard query"],
    ),
    (
        "MDNS",
        "Standard query response 0x0000 A, cache flush 192.168.0.20 PTR, cache flush "
        "DCS-935L-B0C554255B0E.local SRV, cache flush 0 0 80 dcs-935l5b0e.local",
        ["B0C554255B0E", "5b0e", "192.168"],
        ["DCS-935L-", "dcs-935l", "cache flush 0 0 80"],
    ),
    # Model numbers and service names are behaviour (EVALUATION.md: the D-Link sensors differ there).
    (
        "MDNS",
        "Standard query 0x0000 ANY D-Link DCH-S150 Configuration Utility._http._tcp.local",
        [],
        ["DCH-S150 Configuration Utility"],
    ),
    (
        "HTTP",
        "GET /router/firmware/query.aspx?model=DCH-S220 HTTP/1.1",
        [],
        ["/router/firmware/query.aspx?model=DCH-S220"],
    ),
    ("IGMPv3", "Membership Report / Join group 239.255.255.250 for any sources", [], ["239.255.255.250"]),
    ("DNS", "Standard query 0x0003 A ntp1.dlink.com", ["0x0003"], ["A ntp1.dlink.com"]),
]


@pytest.mark.parametrize("protocol,info,gone,kept", CASES)
def test_masking(protocol, info, gone, kept):
    text = packet_text(protocol, info)
    for g in gone:
        assert g not in text, text
    for k in kept:
        assert k in text, text
    assert text.startswith(protocol + "\t")


def test_repeated_records_are_counted_not_listed():
    text = packet_text("TLSv1", ", ".join(["Application Data"] * 37))
    assert text == "TLSv1\tApplication Data (x37)"


def test_same_texts_when_read_alone_or_merged(devices):
    paths = [devices[n].captures[i] for n, i in (("D-LinkCam", 0), ("D-LinkCam", 1), ("TP-LinkPlugHS100", 2))]
    merged = [packet_text(p.protocol, p.info) for p in read_many(paths)]
    alone = [packet_text(p.protocol, p.info) for path in paths for p in read_packets(path)]
    assert merged == alone


@pytest.mark.parametrize("device", ["D-LinkCam", "D-LinkSensor", "HueBridge", "TP-LinkPlugHS110"])
def test_rewritten_addresses_give_the_same_texts(devices, tmp_path, device):
    source = devices[device].captures[10]
    rewritten = tmp_path / "rewritten.pcap"
    altered = rewrite_addresses(source, rewritten)
    before = list(read_packets(source))
    after = list(read_packets(rewritten))
    assert len(before) == len(after)
    # The rewrite really changed the addresses, so the equality below means something.
    assert {p.eth_src for p in before}.isdisjoint({p.eth_src for p in after})
    assert [p.ip_src for p in before if p.ip_src] != [p.ip_src for p in after if p.ip_src]
    assert len(altered) <= len(before) // 20  # tcprewrite's own padded-length artefact
    texts_before = [packet_text(p.protocol, p.info) for i, p in enumerate(before) if i not in altered]
    texts_after = [packet_text(p.protocol, p.info) for i, p in enumerate(after) if i not in altered]
    assert texts_before == texts_after
    # The dissected fields' tag (a model with config.fields reads it) is as address-blind.
    tagged_before = [text_of(p, True) for i, p in enumerate(before) if i not in altered]
    tagged_after = [text_of(p, True) for i, p in enumerate(after) if i not in altered]
    assert tagged_before == tagged_after
    assert any(field_tag(p) for p in before)  # every one of these devices sends DHCP or TLS


def test_field_tag_reads_every_dissected_field(devices):
    # A udhcp client (parameter list and vendor class), a TLS client (JA3), an HTTP client (User-Agent).
    tags = {}
    for name in ("HueBridge", "TP-LinkPlugHS110", "Withings"):
        for p in read_packets(devices[name].captures[0]):
            if p.eth_src == devices[name].mac and field_tag(p):
                tags.setdefault(name, []).append(text_of(p, True))
    hue = tags["HueBridge"]
    # Every item of the list, in the client's order, not only the first (tshark's -E occurrence=f).
    assert "DHCP\t{prl=1,3,6,12,15,28,42 vc=udhcp 1.19.4} DHCP Discover - Transaction ID 0xID" in hue
    tls = tags["TP-LinkPlugHS110"]
    assert any(t.startswith("TLSv1") and "{ja3=cc847787e180} Client Hello" in t for t in tls)
    assert any("ua=Withings UserAgent} " in t for t in tags["Withings"])
    # Without config.fields the text is the plain one, as before the fields were read.
    p = next(p for p in read_packets(devices["HueBridge"].captures[0]) if p.dhcp_prl)
    assert text_of(p, False) == packet_text(p.protocol, p.info) == "DHCP\tDHCP Discover - Transaction ID 0xID"


def test_field_tag_masks_units_and_keeps_each_field_short():
    long = Packet(
        1, 0.0, "", "", "", "", 590, "DHCP", "DHCP Request  - Transaction ID 0x5a3e0b21",
        dhcp_prl=",".join(str(i) for i in range(1, 40)), dhcp_vendor="dhcpcd-9:b0:c5:54:25:5b:0e",
        user_agent="Dalvik/2.1.0 (Linux; U; Android 11; SM-G991B Build/RP1A.200720.012) serial 0a1b2c3d4e5f",
    )  # fmt: skip
    tag = field_tag(long)
    assert "b0:c5:54" not in tag and "vc=dhcpcd-9:MACADDR" in tag
    assert len(tag) <= len("prl= vc= ua=") + PRL_CHARS + VENDOR_CHARS + AGENT_CHARS
    assert field_tag(Packet(1, 0.0, "", "", "", "", 60, "ARP", "Who has 10.0.0.1? Tell 10.0.0.2")) == ""
    ja3 = Packet(1, 0.0, "", "", "", "", 571, "TLSv1.2", "Client Hello", ja3="cc847787e1803cc91adeecfc721d1f")
    assert text_of(ja3, True) == "TLSv1.2\t{ja3=cc847787e180} Client Hello"


def test_linear_unit_masking_does_what_the_regex_says():
    # _UNIT_RE is the specification; _mask_units is its linear-time implementation.
    import random

    from tool.text import _UNIT_RE, _mask_unit, _mask_units

    rng = random.Random(5)
    alphabet = "0123456789abcdefABCDEFxyz-_.,) '\"\t"
    for _ in range(20000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert _mask_units(s) == _UNIT_RE.sub(_mask_unit, s), s


def test_repeat_precheck_never_skips_a_repeat():
    import random

    from tool.text import _REPEAT_RE, _collapse_repeats, _may_repeat

    rng = random.Random(6)
    words = ["Data", "Application Data", "A", "B", " ", "x,y"]
    for _ in range(5000):
        s = ", ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        if not _may_repeat(s):
            assert _REPEAT_RE.sub(_collapse_repeats, s) == s, s
