"""Bad input, generated: damaged captures and damaged fingerprints never crash the tool.

Captures: 200 files mutated from the data set with a fixed seed (cut short, bytes flipped in the
file, in the file header and in packet headers, empty, random bytes, pcapng with a damaged block).
Every `dnp-scan` run ends within 30 s with exit 0, 1 or 2, never a traceback; on exit 2 it says
one line and leaves no output file behind.

Fingerprints: a few hundred mutations of a real fingerprint file (bytes flipped, values changed,
keys removed, text cut short). Each is refused with a one-line FingerprintError, or, when it still
parses, gives exactly the original fingerprint: a damaged file never passes with changed values.
And generated ones: nesting up to 100,000 deep, sizes at and past the 4 MB limit, every field given
every JSON type with the digest recomputed, numbers Python cannot convert, and paths that are
/dev/zero, a FIFO, a folder, a socket or a dangling link: one line, exit 2, never a hang.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import enroll_device, run_command
from tool.fingerprint import Fingerprint, FingerprintError, load, parse

SEED = 20171
CAPTURE_MUTANTS = 200
FINGERPRINT_MUTANTS = 400
SCAN_TIMEOUT = 30
# Small captures of several vendors, so 200 scans stay within a few minutes.
SOURCES = [
    ("Aria", 0),
    ("D-LinkDayCam", 0),
    ("TP-LinkPlugHS110", 0),
    ("Withings", 0),
    ("EdimaxPlug1101W", 0),
    ("EdnetGateway", 0),
    ("MAXGateway", 0),
    ("TP-LinkPlugHS100", 0),
]
PCAPNG_DAMAGE = ("block length", "trailing length", "block type", "block body", "cut block", "byte order")
PCAP_HEADER = 24
PCAP_RECORD = 16


def pcap_records(data: bytes) -> list[int]:
    """Offsets of the packet record headers of a (little-endian, classic) pcap file."""
    offsets, at = [], PCAP_HEADER
    while at + PCAP_RECORD <= len(data):
        offsets.append(at)
        (incl,) = struct.unpack_from("<I", data, at + 8)
        at += PCAP_RECORD + incl
    return offsets


def pcapng_blocks(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, type, total length) of each block of a little-endian pcapng file."""
    blocks, at = [], 0
    while at + 12 <= len(data):
        kind, length = struct.unpack_from("<II", data, at)
        if length < 12 or at + length > len(data):
            break
        blocks.append((at, kind, length))
        at += length
    return blocks


def flip(data: bytes, rng: random.Random, start: int, end: int, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        i = rng.randrange(start, max(start + 1, min(end, len(out))))
        out[i] ^= rng.randrange(1, 256)
    return bytes(out)


def mutate_pcap(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "flip", "file header", "packet header", "length field", "empty", "random"])
    records = pcap_records(data)
    if kind == "truncate":
        return kind, data[: rng.randrange(1, len(data))]
    if kind == "flip":
        return kind, flip(data, rng, 0, len(data), rng.randint(1, 64))
    if kind == "file header":
        return kind, flip(data, rng, 0, PCAP_HEADER, rng.randint(1, 4))
    if kind == "packet header":
        at = rng.choice(records)
        return kind, flip(data, rng, at, at + PCAP_RECORD, rng.randint(1, 4))
    if kind == "length field":
        # A captured length of zero, one byte short, past the snap length, or huge.
        at = rng.choice(records)
        value = rng.choice([0, 1, 65535, 65536, 262145, 0x7FFFFFFF, 0xFFFFFFFF])
        field = rng.choice([8, 12])
        return kind, data[: at + field] + struct.pack("<I", value) + data[at + field + 4 :]
    if kind == "empty":
        return kind, b""
    size = rng.choice([1, 23, 24, 100, 4096, 65536])
    head = rng.choice([b"", data[:PCAP_HEADER], bytes.fromhex("0a0d0d0a")])
    return kind, head + rng.randbytes(size)


def mutate_pcapng(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    blocks = pcapng_blocks(data)
    at, kind, length = rng.choice(blocks[1:] or blocks)
    how = rng.choice(
        ["block length", "trailing length", "block type", "block body", "cut block", "byte order"]
    )
    out = bytearray(data)
    if how == "block length":
        struct.pack_into("<I", out, at + 4, rng.choice([0, 4, 13, length + 4, length - 4, 0xFFFFFFF0]))
    elif how == "trailing length":
        struct.pack_into("<I", out, at + length - 4, rng.choice([0, length + 8, 0xFFFFFFFF]))
    elif how == "block type":
        struct.pack_into("<I", out, at, rng.choice([0, 0x0A0D0D0A, 0x80000001, rng.getrandbits(32)]))
    elif how == "block body":
        out = bytearray(flip(bytes(out), rng, at + 8, at + min(length - 4, 40), rng.randint(1, 6)))
    elif how == "cut block":
        out = out[: at + rng.randrange(1, length)]
    else:
        struct.pack_into("<I", out, 8, 0xDEADBEEF)  # the section header's byte-order magic
    return f"pcapng {how}", bytes(out)


@pytest.fixture(scope="module")
def corpus(devices, tmp_path_factory) -> list[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(SEED)
    sources = []
    for name, index in SOURCES:
        path = devices[name].captures[index]
        data = path.read_bytes()
        assert data[:4] == bytes.fromhex("d4c3b2a1"), f"{path} is not a little-endian pcap"
        ng = folder / f"{name}.pcapng"
        subprocess.run(["editcap", "-F", "pcapng", str(path), str(ng)], check=True, capture_output=True)
        sources.append((data, ng.read_bytes()))
    mutants = []
    for i in range(CAPTURE_MUTANTS):
        pcap, pcapng = rng.choice(sources)
        kind, data = mutate_pcapng(pcapng, rng) if rng.random() < 0.25 else mutate_pcap(pcap, rng)
        mutant_dir = folder / f"m{i:03d}"
        mutant_dir.mkdir()
        path = mutant_dir / ("capture.pcapng" if kind.startswith("pcapng") else "capture.pcap")
        path.write_bytes(data)
        mutants.append((kind, path))
    return mutants


@pytest.fixture(scope="module")
def fingerprint(devices, tmp_path_factory, clean_env) -> Path:
    dev = devices["D-LinkCam"]
    out = tmp_path_factory.mktemp("fp") / "cam.fp"
    enroll_device(dev, out, clean_env, name="cam")
    return out


def scan_mutant(path: Path, fingerprint: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    outputs = [path.parent / "r.json", path.parent / "p.csv", path.parent / "a.csv"]
    return run_command(
        "dnp-scan",
        str(path),
        "-f",
        str(fingerprint),
        "--json",
        str(outputs[0]),
        "--csv",
        str(outputs[1]),
        "--annotate",
        str(outputs[2]),
        "--quiet",
        env=env,
        timeout=SCAN_TIMEOUT,
    )


def test_damaged_captures_end_cleanly(corpus, fingerprint, clean_env):
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda m: scan_mutant(m[1], fingerprint, clean_env), corpus))
    codes = {}
    for (kind, path), done in zip(corpus, results):
        where = f"{kind}: {path}"
        assert done.returncode in (0, 1, 2), f"{where}: exit {done.returncode}\n{done.stderr}"
        assert "Traceback" not in done.stderr, f"{where}\n{done.stderr}"
        left = sorted(p.name for p in path.parent.iterdir())
        if done.returncode == 2:
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("dnp-scan: error: "), f"{where}\n{done.stderr}"
            assert left == [path.name], f"{where}: exit 2 left {left}"
        else:
            assert left == sorted([path.name, "r.json", "p.csv", "a.csv"]), f"{where}: left {left}"
            report = json.loads((path.parent / "r.json").read_text())
            assert report["packets"] == len((path.parent / "p.csv").read_text().splitlines()) - 1
        codes.setdefault(kind, set()).add(done.returncode)
    # The corpus reaches both sides: captures refused, and damaged captures still read to the end.
    seen = set().union(*codes.values())
    assert 2 in seen and seen & {0, 1}, codes
    assert codes.get("empty") == {2}, codes


def mutate_fingerprint(text: str, rng: random.Random) -> tuple[str, str]:
    data = json.loads(text)
    how = rng.choice(["flip", "flip", "value", "value", "remove", "truncate", "add", "type"])
    if how == "flip":
        raw = bytearray(text.encode("utf-8"))
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        return how, raw.decode("utf-8", "surrogateescape")
    if how == "truncate":
        return how, text[: rng.randrange(len(text))]
    # Structural edits: pick a container and a member of it anywhere in the document.
    containers = [data]
    stack = [data]
    while stack:
        node = stack.pop()
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, (dict, list)) and child:
                containers.append(child)
                stack.append(child)
    node = rng.choice(containers)
    key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
    if how == "remove":
        del node[key]
    elif how == "add":
        if isinstance(node, dict):
            node["extra"] = rng.choice([0, "x", None, [1.0]])
        else:
            node.insert(key, node[key])
    elif how == "type":
        node[key] = rng.choice([None, "1.0", [node[key]], {"v": node[key]}, True])
    else:
        value = node[key]
        if isinstance(value, bool) or value is None:
            node[key] = not value
        elif isinstance(value, (int, float)):
            node[key] = rng.choice([value + 1e-6, -value, value * 2, float("inf"), float("nan"), 0])
        elif isinstance(value, str):
            node[key] = rng.choice(["", value + "x", value[::-1], value.upper(), "0" * 64, "\ud800"])
        else:
            node[key] = []
    return how, json.dumps(data, indent=rng.choice([None, 1]))


def same_values(a: Fingerprint, b: Fingerprint) -> bool:
    return a.payload() == b.payload()


def test_mutated_fingerprints_are_refused_or_unchanged(fingerprint, tmp_path):
    original_text = fingerprint.read_text()
    original = parse(original_text)
    rng = random.Random(SEED)
    outcomes = {"refused": 0, "unchanged": 0}
    for i in range(FINGERPRINT_MUTANTS):
        how, text = mutate_fingerprint(original_text, rng)
        raw = text.encode("utf-8", "surrogateescape")
        try:
            if i % 4 == 0 or raw != text.encode("utf-8", "replace"):
                # Through a file, as a user meets it: bytes that are not UTF-8 are read here.
                path = tmp_path / f"f{i}.fp"
                path.write_bytes(raw)
                got = load(path)
            else:
                got = parse(text, f"mutant {i}")
        except FingerprintError as e:
            message = str(e)
            assert message and "\n" not in message, f"{how} mutant {i}: {message!r}"
            outcomes["refused"] += 1
            continue
        assert same_values(got, original), f"{how} mutant {i} was accepted with changed values:\n{text}"
        outcomes["unchanged"] += 1
    assert outcomes["refused"] >= FINGERPRINT_MUTANTS // 2, outcomes


def test_mutated_fingerprints_against_the_model(fingerprint, tmp_path):
    """load(path, model) also refuses what parses but does not belong to the model, in one line."""
    from tool.model import Model

    model = Model.load()
    original = load(fingerprint, model)
    rng = random.Random(SEED + 1)
    for i in range(60):
        _, text = mutate_fingerprint(fingerprint.read_text(), rng)
        path = tmp_path / f"m{i}.fp"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        try:
            got = load(path, model)
        except FingerprintError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            continue
        assert same_values(got, original)


@pytest.mark.parametrize("case", range(8))
def test_mutated_fingerprint_through_the_cli(fingerprint, devices, tmp_path, clean_env, case):
    rng = random.Random(SEED + 100 + case)
    while True:
        how, text = mutate_fingerprint(fingerprint.read_text(), rng)
        try:
            parse(text)
        except FingerprintError:
            break
    bad = tmp_path / "bad.fp"
    bad.write_bytes(text.encode("utf-8", "surrogateescape"))
    capture = devices["Aria"].captures[10]
    out = tmp_path / "r.json"
    done = run_command("dnp-scan", str(capture), "-f", str(bad), "--json", str(out), env=clean_env)
    assert done.returncode == 2, (how, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, (how, done.stderr)
    assert str(bad) in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.fp"]


# Fingerprints generated to hurt the parser rather than mutated from a real one: deep nesting, sizes
# at and past the limit, every field given every JSON type (digest recomputed, so the type checks
# are reached), numbers Python cannot hold, and paths that are not regular files.
JSON_VALUES = [None, True, 0, -1, 2**64, 1e308, -0.0, "", "x" * 1000, [], {}, [[]], {"": None}]


def _redigested(data: dict) -> str:
    from tool.fingerprint import _digest

    data = {k: v for k, v in data.items() if k != "digest"}
    data["digest"] = _digest(data)
    return json.dumps(data)


def generated_fingerprints(text: str) -> list[tuple[str, str]]:
    from tool.fingerprint import MAX_FILE_BYTES

    rng = random.Random(SEED + 7)
    original = json.loads(text)
    cases = []
    for depth in (64, 1000, 100_000):
        cases.append((f"lists nested {depth}", "[" * depth + "]" * depth))
        cases.append((f"objects nested {depth}", '{"a":' * depth + "0" + "}" * depth))
        cases.append((f"unclosed nesting {depth}", "[{" * depth))
    for value in JSON_VALUES:
        cases.append((f"top level {value!r:.20}", json.dumps(value)))
        for key in original:
            if key != "digest":
                cases.append((f"{key} = {value!r:.20}", _redigested({**original, key: value})))
    for key in ("frame", "length", "text"):
        for value in [*JSON_VALUES, -(2**63), 2**63]:
            data = json.loads(text)
            data["support"][rng.randrange(len(data["support"]))][key] = value
            cases.append((f"support {key} = {value!r:.20}", _redigested(data)))
    digits = "9" * 5000  # past Python's int-string limit
    cases.append(("5000-digit integer", text.replace('"version": 1', f'"version": {digits}', 1)))
    cases.append(
        ("5000-digit prototype", _redigested(original).replace('"prototype": [', f'"prototype": [{digits}, '))
    )
    cases.append(("a million values", _redigested({**original, "prototype": [0.5] * 1_000_000})))
    cases.append(("padded to the limit", text + " " * (MAX_FILE_BYTES - len(text.encode()))))
    cases.append(("one byte over", text + " " * (MAX_FILE_BYTES + 1 - len(text.encode()))))
    cases.append(("NUL bytes", "\0" * 100))
    cases.append(("BOM then JSON", "\ufeff" + text))
    cases.append(("duplicate keys", text.replace("{", '{"name": "other", ', 1)))
    return cases


def test_generated_fingerprints_are_refused_or_unchanged(fingerprint, tmp_path):
    text = fingerprint.read_text()
    original = parse(text)
    refused = 0
    for i, (what, generated) in enumerate(generated_fingerprints(text)):
        path = tmp_path / f"g{i}.fp"
        path.write_text(generated, encoding="utf-8")
        try:
            got = load(path)
        except FingerprintError as e:
            message = str(e)
            assert message and "\n" not in message and str(path) in message, (what, message)
            refused += 1
            continue
        # Anyone can recompute a digest: what passes must at least be well-typed, and round-trip.
        assert all(isinstance(v, str) for v in (got.name, got.created, got.tool_version)), what
        assert isinstance(got.source, dict) and parse(got.to_json()).payload() == got.payload(), what
        if "=" not in what:
            assert same_values(got, original), f"{what} was accepted with changed values"
    assert refused > 100


def _file_kinds(folder: Path) -> dict[str, Path]:
    import socket

    kinds = {"/dev/zero": Path("/dev/zero"), "/dev/null": Path("/dev/null")}
    kinds["fifo"] = folder / "fifo.fp"
    os.mkfifo(kinds["fifo"])
    kinds["folder"] = folder / "folder.fp"
    kinds["folder"].mkdir()
    kinds["symlink to a folder"] = folder / "dirlink.fp"
    kinds["symlink to a folder"].symlink_to(kinds["folder"])
    kinds["dangling symlink"] = folder / "dangling.fp"
    kinds["dangling symlink"].symlink_to(folder / "nowhere")
    kinds["socket"] = folder / "sock.fp"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(kinds["socket"]))
    sock.close()
    kinds["sparse, 5 MB"] = folder / "sparse.fp"
    with open(kinds["sparse, 5 MB"], "wb") as f:
        f.truncate(5 << 20)
    return kinds


def test_generated_fingerprints_through_the_cli(fingerprint, devices, tmp_path, clean_env):
    """File kinds and a sample of the generated texts, as dnp-scan meets them: one line, never a hang."""
    text = fingerprint.read_text()
    cases = dict(_file_kinds(tmp_path))
    rng = random.Random(SEED + 8)
    refused = []
    for what, generated in generated_fingerprints(text):
        try:
            parse(generated)
        except FingerprintError:
            refused.append((what, generated))
    for i, (what, generated) in enumerate(rng.sample(refused, 12)):
        path = tmp_path / f"g{i}.fp"
        path.write_text(generated, encoding="utf-8")
        cases[what] = path
    cases["nested 100,000"] = tmp_path / "nested.fp"
    cases["nested 100,000"].write_text("[" * 100_000 + "]" * 100_000)
    capture = devices["Aria"].captures[10]

    def run(path: Path) -> subprocess.CompletedProcess:
        return run_command(
            "dnp-scan", str(capture), "-f", str(path), "--quiet", env=clean_env, timeout=SCAN_TIMEOUT
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(cases, pool.map(run, cases.values())))
    for what, done in results.items():
        assert done.returncode == 2, (what, done.returncode, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dnp-scan: error: "), (what, done.stderr)
        assert "Traceback" not in done.stderr
