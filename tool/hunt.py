"""Hunting: fingerprints searched for across many captures, on the cores of one machine or a Dask cluster.

A hunt scores every capture as dnp-scan does (the `set` host score, the cohort's false-match rate)
and merges the hosts that match into one table: which host, which fingerprint, how well, in how many
captures, first and last seen. The work runs on Dask distributed (tool/engine.py: an embedded local
cluster of one worker process per core, or an existing cluster, whose workers keep the models). Here
is what the client does: find the captures, plan the work (small captures in batches read by one
tshark run; a large capture cut into chunks with `editcap -c`, whose hosts, tool.hosts.Host with
their first packets' embeddings, are joined back in capture order and scored), keep the resume log,
and merge every capture's host rows into the hunt's table.

Every capture's result is a line of `captures.jsonl` in the hunt's folder, written as soon as it is
known and keyed by the capture's sha256, the models' hashes, the fingerprints' digests and the verdict
rule: a hunt run again (after an interrupt, with more captures) scans only what it has not seen.

    >>> result = hunt(["/cases/site-a/"], ["cam.fp"], out="hunt-a")   # doctest: +SKIP
    >>> [(h["mac"], h["fingerprint"], h["captures"]) for h in result.hosts]   # doctest: +SKIP
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tool.capture import CaptureError
from tool.engine import (
    Engine,
    HuntError,
    Part,
    Settings,
    joined_part,
    scan_batch,
    scan_chunk,
    worker_peak_rss,
)
from tool.records import HuntRow
from tool.verdict import Verdict, verdict_rule

if TYPE_CHECKING:
    from tool.fingerprint import Fingerprint
    from tool.model import Model

LOG = "captures.jsonl"  # one line per capture, in the hunt's --out folder
SUMMARY = "hunt.json"  # the merged table, as --json writes it
# The rule for what a host is, in the resume key: a change to it (tool.hosts) makes old results stale.
HOST_RULE = "forwarded packets set aside, routers judged apart (tool.routers)"
# Names a folder's captures go by; other files in a folder count as captures when their first bytes
# are a capture's (tcpdump -C names its files dump, dump1, dump2 ...).
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz")
MAGICS = (
    b"\xd4\xc3\xb2\xa1",
    b"\xa1\xb2\xc3\xd4",
    b"\x4d\x3c\xb2\xa1",
    b"\xa1\xb2\x3c\x4d",  # pcap, both byte orders, micro- and nanosecond
    b"\x0a\x0d\x0d\x0a",  # pcapng
    b"\x1f\x8b",  # gzip: tshark reads compressed captures
)
# Small captures go to a worker together, up to this many bytes: one mergecap and one tshark start
# per batch instead of per capture (tshark starts in ~0.2 s; the data set's captures take ~0.05 s).
BATCH_BYTES = 4 << 20
# A capture above this size is cut into chunks scored in parallel, at least two per worker and as many
# for each worker (a last chunk alone would leave the other cores idle), of at least CHUNK_PACKETS
# packets (a tshark start is worth ~0.2 s) and at most MAX_CHUNK_PACKETS: tshark's memory grows with
# the packets of the file it reads (264 MB at 437,000 packets, 178 MB at 44,000).
CHUNK_BYTES = 32 << 20
CHUNK_PACKETS = 20_000
MAX_CHUNK_PACKETS = 200_000


def _is_capture(path: Path) -> bool:
    if path.name.lower().endswith(CAPTURE_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return any(head.startswith(m) for m in MAGICS)


def find_captures(paths: Iterable[str]) -> tuple[list[str], int]:
    """The capture files named by paths, folders (recursive) and globs, each once, in a stable order;
    and how many other files the folders held. A file named on its own is always taken (a bad one is
    then listed as a failure); in a folder, captures are known by their name or their first bytes."""
    found: list[str] = []
    skipped = 0
    for arg in paths:
        if os.path.lexists(arg):
            names = [arg]
        else:
            names = sorted(glob.glob(arg, recursive=True))
            if not names:
                raise HuntError(f"{arg}: no such file, folder or match")
        for name in names:
            if os.path.isdir(name):
                for folder, dirs, files in os.walk(name):
                    dirs.sort()
                    for f in sorted(files):
                        p = Path(folder, f)
                        if p.is_file() and _is_capture(p):
                            found.append(str(p))
                        else:
                            skipped += 1
            else:
                found.append(name)
    seen: set[str] = set()
    unique = []
    for p in found:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            unique.append(p)
    return unique, skipped


def _sha256(path: str) -> tuple[str | None, int, str | None]:
    """(sha256, size, error) of a capture file; a FIFO or device is refused, never read."""
    import stat

    from tool.files import sha256_file

    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, 0, f"{path}: not a file"
        digest = sha256_file(path)
    except OSError as e:
        return None, 0, f"{path}: {e.strerror or e}"
    if st.st_size == 0:
        return None, 0, f"{path}: empty file, not a capture"
    return digest, st.st_size, None


def hunt_key(model: Model, settings: Settings) -> str:
    """What a capture's result depends on besides its content: the models, the fingerprints, the rule."""
    parts = {
        "encoder": model.encoder_sha256,
        "head": model.head_sha256,
        "fingerprints": [json.loads(t)["digest"] for t in settings.fingerprints],
        "threshold": settings.threshold,
        "max_false_match": settings.max_false_match,
        "judge_routers": settings.judge_routers,
        "host_packets": settings.host_packets,
        # What a host is: results counted before routers were recognised (tool.routers) are not reused.
        "hosts": HOST_RULE,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class Log:
    """The hunt folder's captures.jsonl: a line per capture result, appended as each one is known.

    Lines are appended with one write each and read back tolerantly: a line cut by a crash is left out,
    and its capture scanned again. `compact` rewrites the file atomically, one line per result.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOG
        self.records: dict[tuple[str, str], dict[str, Any]] = {}  # (sha256, key) -> record
        self._fd: int | None = None
        if self.path.is_file():
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self.records[(rec["sha256"], rec["key"])] = rec
                    except (ValueError, KeyError, TypeError):
                        continue

    def get(self, sha256: str, key: str) -> dict[str, Any] | None:
        return self.records.get((sha256, key))

    def append(self, record: dict[str, Any]) -> None:
        self.records[(record["sha256"], record["key"])] = record
        if self._fd is None:
            from tool.files import file_mode

            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
        os.write(self._fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def compact(self) -> None:
        from tool.files import atomic_output

        self.close()
        with atomic_output(self.path) as f:
            for rec in self.records.values():
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")


@dataclass
class Capture:
    """One input of the hunt: its path, content hash and size, or why it cannot be read."""

    path: str
    sha256: str | None
    size: int
    error: str | None = None


def plan(captures: Sequence[Capture], workers: int, batch_bytes: int = BATCH_BYTES) -> list[list[Capture]]:
    """Batches of small captures, in order, of up to `batch_bytes` each, and small enough that every
    worker gets several (the last batches of a hunt would otherwise leave cores idle)."""
    total = sum(c.size for c in captures)
    limit = max(1, min(batch_bytes, total // max(1, 4 * workers)))
    batches: list[list[Capture]] = []
    size = 0
    for c in captures:
        if not batches or size + c.size > limit:
            batches.append([])
            size = 0
        batches[-1].append(c)
        size += c.size
    return batches


def chunk_size(count: int, workers: int, min_packets: int = CHUNK_PACKETS) -> int:
    """How many packets go in each chunk of a capture of `count` packets (see CHUNK_BYTES)."""
    chunks = max(2 * workers, -(-count // MAX_CHUNK_PACKETS))
    chunks = -(-chunks // workers) * workers
    return max(min_packets, -(-count // chunks))


def split(path: str, folder: Path, workers: int, min_packets: int = CHUNK_PACKETS) -> list[tuple[str, int]]:
    """Cut a capture into chunks of consecutive packets with `editcap -c`, as many per worker (within
    the bounds above): each chunk's path and how many frames of the capture come before it, in order."""
    capinfos, editcap = shutil.which("capinfos"), shutil.which("editcap")
    if not capinfos or not editcap:
        raise CaptureError("capinfos / editcap not found: install tshark's tools (apt-get install -y tshark)")
    done = subprocess.run(
        [capinfos, "-M", "-T", "-c", "-r", path], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    try:
        count = int(done.stdout.strip().split("\t")[-1])
    except ValueError:
        raise CaptureError(f"{path}: capinfos cannot count its packets") from None
    per = chunk_size(count, workers, min_packets)
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [editcap, "-c", str(per), "-F", "pcapng", path, str(folder / "chunk.pcapng")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise CaptureError(f"{path}: editcap: {done.stderr.strip().splitlines()[-1:] or 'failed'}")
    # editcap numbers the chunks chunk_00000_<time>.pcapng ...: their order is the capture's.
    return [(str(p), n * per) for n, p in enumerate(sorted(folder.glob("chunk_*.pcapng")))]


@dataclass
class HuntResult:
    """The outcome of a hunt, as plain data (`to_dict` is --json)."""

    captures: int
    packets: int
    fingerprints: list[str]
    rule: str
    cohort_hosts: int
    scanned: int  # captures scanned by this run
    reused: int  # captures whose result the hunt folder already held
    failed: list[dict[str, str]]
    warnings: list[dict[str, str]]
    hosts: list[dict[str, Any]]
    records: list[dict[str, Any]]  # every capture's result, in input order
    skipped: int = 0  # files in the folders that are not captures
    workers: dict[str, dict[str, int]] = field(default_factory=dict)  # peak memory per worker

    @property
    def matched(self) -> bool:
        return any(h["verdict"] is not None for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "captures": self.captures,
            "packets": self.packets,
            "fingerprints": self.fingerprints,
            "rule": self.rule,
            "scanned": self.scanned,
            "reused": self.reused,
            "failed": self.failed,
            "warnings": self.warnings,
            "hosts": self.hosts,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"


Progress = Callable[[int, int, int], None]  # (captures done, bytes done, packets done)


def merge_hosts(
    records: Sequence[dict[str, Any]], names: Sequence[str], rule: Verdict, all_hosts: bool = False
) -> list[dict[str, Any]]:
    """One row (tool.records.HuntRow) per host and fingerprint it matched in some capture, best first,
    over the captures where it matched: best score, lowest false-match rate, how many captures, first
    and last seen, and the capture of the best match. `all_hosts` adds every other host, once, under
    its best fingerprint over every capture it was seen in, with verdict None."""
    matched: dict[tuple[str, str], HuntRow] = {}
    others: dict[str, HuntRow] = {}
    hit: set[str] = set()
    for rec in records:
        capture = rec["capture"]
        for row in rec.get("hosts", []):
            for name in names:
                rate = row["false_match"][name] if "false_match" in row else None
                if rule.matches(row["match"][name], rate):
                    hit.add(row["host"])
                    _add(matched, (row["host"], name), row, name, capture, name)
            if all_hosts:
                _add(others, row["host"], row, row["best"], capture, None)
    rows = list(matched.values()) + [r for h, r in others.items() if h not in hit]
    rows.sort(key=lambda r: (r.verdict is None, r.false_match_rate or 0.0, -r.score, r.host, r.fingerprint))
    return [r.to_dict() for r in rows]


def _add(table: dict, key: Any, row: dict[str, Any], name: str, capture: str, verdict: str | None) -> None:
    if key in table:
        table[key].add(row, name, capture)
    else:
        table[key] = HuntRow.of(row, name, capture, verdict)


def hunt(
    paths: Sequence[str],
    fingerprint_files: Sequence[str],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    out: str | os.PathLike | None = None,
    threshold: float | None = None,
    max_false_match: float | None = None,
    judge_routers: bool = False,
    models: str | None = None,
    all_hosts: bool = False,
    batch_bytes: int = BATCH_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
    chunk_packets: int = CHUNK_PACKETS,
    on_start: Callable[[int, int], None] | None = None,
    on_progress: Progress | None = None,
) -> HuntResult:
    """Scan every capture under `paths` for the fingerprints on a Dask cluster and merge the matches.

    `scheduler` ("tcp://host:8786") uses an existing cluster, whose workers must see the same paths;
    otherwise a local cluster of `workers` processes (default: one per core) runs for the hunt.
    `out` is the hunt's folder (captures.jsonl): results found there are reused, new ones added.
    `on_start(captures, bytes)` and `on_progress(captures, bytes, packets)` follow the work.
    """
    from tool.fingerprint import load_all, read_bounded
    from tool.model import Model

    model = Model.load(models)
    fps = load_all(fingerprint_files, model)
    names = [f.name for f in fps]
    texts = tuple(read_bounded(Path(p)).decode("utf-8") for p in fingerprint_files)
    # Workers start elsewhere (another folder, another machine): the model folder goes as a full path.
    models_path = os.path.abspath(models) if models else None
    settings = Settings(texts, models_path, threshold, max_false_match, judge_routers)
    rule = verdict_rule(model, "set", threshold, max_false_match, judge_routers)
    key = hunt_key(model, settings)
    files, skipped = find_captures(paths)
    if not files:
        raise HuntError(f"no capture found in {', '.join(paths)}")
    log = Log(out) if out is not None else None
    results: dict[str, dict[str, Any]] = {}  # sha256 -> record
    captures = []
    peaks: dict[str, dict[str, int]] = {}
    scanned = 0
    engine = Engine(scheduler, max(1, workers or os.cpu_count() or 1))
    try:
        for path in files:
            c = Capture(path, *_sha256(path))
            captures.append(c)
            if c.sha256 and log is not None and (rec := log.get(c.sha256, key)) is not None:
                results[c.sha256] = rec
            elif c.sha256:
                engine.start()  # there is work: the engine starts while the other captures are hashed
        reused = len(results)
        todo: dict[str, Capture] = {}
        for c in captures:
            if c.sha256 and c.sha256 not in results:
                todo.setdefault(c.sha256, c)
        if on_start is not None:
            on_start(len(todo), sum(c.size for c in todo.values()))
        if todo:
            scanned, peaks = _run(
                list(todo.values()), settings, key, fps, rule, results, log, engine, out,
                batch_bytes, chunk_bytes, chunk_packets, on_progress,
            )  # fmt: skip
    finally:
        engine.close()
    records, failed, warned = [], [], []
    for c in captures:
        rec = results.get(c.sha256) if c.sha256 else {"error": c.error}
        if rec is None:
            rec = {"error": f"{c.path}: not scanned"}
        rec = dict(rec, capture=c.path)
        records.append(rec)
        if "error" in rec:
            failed.append({"capture": c.path, "error": rec["error"]})
        elif rec.get("warning"):
            warned.append({"capture": c.path, "warning": rec["warning"]})
    if log is not None:
        log.compact()
    good = [r for r in records if "error" not in r]
    return HuntResult(
        captures=len(captures),
        packets=sum(r["packets"] for r in good),
        fingerprints=names,
        rule=rule.describe(),
        cohort_hosts=rule.rate_over,
        scanned=scanned,
        reused=reused,
        failed=failed,
        warnings=warned,
        hosts=merge_hosts(good, names, rule, all_hosts),
        records=records,
        skipped=skipped,
        workers=peaks,
    )


def _run(
    todo: list[Capture],
    settings: Settings,
    key: str,
    fingerprints: list[Fingerprint],
    rule: Verdict,
    results: dict[str, dict[str, Any]],
    log: Log | None,
    engine: Engine,
    out: str | os.PathLike | None,
    batch_bytes: int,
    chunk_bytes: int,
    chunk_packets: int,
    on_progress: Progress | None,
) -> tuple[int, dict[str, dict[str, int]]]:
    """Scan the captures on the cluster, writing each result as it comes; (how many, peak memory)."""
    done_captures = done_bytes = done_packets = 0

    def finish(capture: Capture, record: dict[str, Any]) -> None:
        nonlocal done_captures, done_bytes, done_packets
        record = {"key": key, "sha256": capture.sha256, **record, "capture": capture.path}
        if "error" not in record and log is not None:
            log.append(record)  # failures are not kept: the next run tries them again
        results[capture.sha256] = record  # type: ignore[index]
        done_captures += 1
        done_bytes += capture.size
        done_packets += record.get("packets", 0)
        if on_progress is not None:
            on_progress(done_captures, done_bytes, done_packets)

    large = [c for c in todo if c.size > chunk_bytes]
    small = [c for c in todo if c.size <= chunk_bytes]
    # Chunks go in the hunt's folder when there is one: on shared storage, a cluster's workers see them.
    folder = os.path.abspath(out) if out is not None else None
    scratch = Path(tempfile.mkdtemp(prefix=".dnp-hunt-", dir=folder)) if large else None
    splitter = ThreadPoolExecutor(1, thread_name_prefix="split")
    try:
        # A local cluster's workers are known before it is up: the large captures are cut meanwhile.
        splitting = None
        if not engine.scheduler:
            splitting = splitter.submit(_split_all, large, scratch, engine.workers, chunk_packets)
        client = engine.client()  # raises HuntError where Dask is not installed
        from distributed import as_completed

        workers = engine.workers
        futures = {}
        for batch in plan(small, workers, batch_bytes):
            # Full paths: a worker's working folder is not the client's.
            f = client.submit(scan_batch, [os.path.abspath(c.path) for c in batch], settings, pure=False)
            futures[f] = ("batch", batch)
        chunks: dict[str, list[dict[str, Any] | None]] = {}
        cut = splitting.result() if splitting else _split_all(large, scratch, workers, chunk_packets)
        for c, pieces in zip(large, cut):
            if isinstance(pieces, CaptureError):
                finish(c, {"error": str(pieces)})
                continue
            chunks[c.sha256] = [None] * len(pieces)  # type: ignore[index]
            for i, (piece, first) in enumerate(pieces):
                f = client.submit(scan_chunk, piece, first, settings, pure=False)
                futures[f] = ("chunk", (c, i))
        for f in as_completed(list(futures)):
            kind, what = futures.pop(f)
            try:
                value = f.result()
            except Exception as e:  # a task that failed on every worker it ran on
                reason = f"the task failed: {type(e).__name__}: {e}".strip()
                value = None
            if kind == "batch":
                for c, rec in zip(what, value or [{"error": reason}] * len(what)):
                    finish(c, rec)
                continue
            c, i = what
            parts = chunks.get(c.sha256)
            if parts is None:  # an earlier chunk failed the capture
                continue
            parts[i] = value if value is not None else {"error": reason}
            if any(p is not None and "error" in p for p in parts):
                del chunks[c.sha256]
                finish(c, {"error": next(p["error"] for p in parts if p and "error" in p)})
            elif all(p is not None for p in parts):
                del chunks[c.sha256]
                finish(c, _whole(c, parts, fingerprints, rule))  # type: ignore[arg-type]
        peaks = client.run(worker_peak_rss)
    finally:
        splitter.shutdown(wait=True)  # before its folder goes
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if log is not None:
            log.close()
    return done_captures, peaks


def _split_all(
    large: Sequence[Capture], scratch: Path | None, workers: int, chunk_packets: int
) -> list[list[tuple[str, int]] | CaptureError]:
    """Each large capture's chunks (see split), or why it could not be cut."""
    cut: list[list[tuple[str, int]] | CaptureError] = []
    for n, c in enumerate(large):
        try:
            cut.append(split(c.path, scratch / str(n), workers, chunk_packets))  # type: ignore[operator]
        except CaptureError as e:
            cut.append(e)
    return cut


def _whole(
    capture: Capture, pieces: list[dict[str, Any]], fingerprints: list[Fingerprint], rule: Verdict
) -> dict:
    part = joined_part([Part(p["packets"], p["hosts"]) for p in pieces])
    if part.packets == 0:
        return {"error": f"{capture.path}: the capture holds no packets"}
    record: dict[str, Any] = {"packets": part.packets, "hosts": part.rows(fingerprints, rule)}
    if any(p.get("warning") for p in pieces):
        # The chunk's own warning names the chunk; the analyst knows the capture.
        record["warning"] = (
            f"{capture.path}: the capture is cut short in the middle of a packet; "
            "the packets before the cut were read"
        )
    return record
