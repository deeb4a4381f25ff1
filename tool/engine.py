"""The hunt's engine: Dask distributed, and what its workers run.

An embedded local cluster of one worker process per core, or an existing cluster (--scheduler). Each
worker loads the models, the fingerprints and the verdict rule once (`Settings`, kept per worker
thread) and runs tshark itself: small captures travel in batches read by one tshark run
(`scan_batch`, tool.capture.read_many_fields), a large capture's chunks one by one (`scan_chunk`).
A worker counts each capture's hosts (tool.hosts) and embeds their first packets; the hosts of a
whole capture are scored (tool.scores) and judged (tool.verdict) into its record's host rows
(tool.records). What the client does with them, the plan, the merge and the resume log, is
tool/hunt.py's. Everything a task takes and returns is plain data, so any Dask worker can run it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tool.capture import (
    CaptureError,
    CaptureTruncated,
    Packet,
    packet_of,
    read_fields,
    read_many_fields,
    read_packets,
    sender_of,
)
from tool.constants import PACKETS
from tool.fingerprint import Fingerprint
from tool.hosts import Host, HostTally, joined
from tool.records import host_rows
from tool.scores import CHUNK, Matcher, set_scores
from tool.verdict import Verdict, verdict_rule


class HuntError(ValueError):
    """A hunt that cannot start (no capture found, no engine): one line for the user."""


# ---------------------------------------------------------------------------------------------------
# What a worker runs.


@dataclass(frozen=True)
class Settings:
    """What every task needs to score: the fingerprints' texts, the model folder and the verdict rule."""

    fingerprints: tuple[str, ...]  # the fingerprint files' JSON texts (the worker may not see the files)
    models: str | None
    threshold: float | None
    max_false_match: float | None
    judge_routers: bool = False
    host_packets: int = PACKETS


class _Scorer:
    """A worker's models, fingerprints, verdict rule and memo, loaded once and kept for every task."""

    def __init__(self, settings: Settings):
        from tool.fingerprint import parse
        from tool.model import Model

        self.model = Model.load(settings.models)
        self.fingerprints = [parse(text) for text in settings.fingerprints]
        for f in self.fingerprints:
            f.check_model(self.model)
        # The rule keeps the cohort's scores for the fingerprints (tool.verdict.Verdict.judge): they
        # never change during a hunt, so a worker's thousands of captures need them computed once.
        self.rule = verdict_rule(
            self.model, "set", settings.threshold, settings.max_false_match, settings.judge_routers
        )
        self.matcher: Matcher = Matcher(self.model, self.fingerprints)
        self.host_packets = settings.host_packets


# One scorer per worker thread and settings: onnxruntime and the memo are not shared between threads.
_local = threading.local()


def _scorer(settings: Settings) -> _Scorer:
    kept = getattr(_local, "scorers", None)
    if kept is None:
        kept = _local.scorers = {}
    if settings not in kept:
        kept.clear()  # another hunt's models and fingerprints go
        kept[settings] = _Scorer(settings)
    return kept[settings]


@dataclass
class Part:
    """What the packets of one capture, or of one chunk of it, leave: its packet count and its hosts,
    each with the embeddings of its first packets (Host.firsts), in capture order."""

    packets: int = 0
    hosts: list[Host] = field(default_factory=list)

    def rows(self, fingerprints: Sequence[Fingerprint], rule: Verdict) -> list[dict[str, Any]]:
        """The capture's host rows (tool.records.HostRow, with first_seen and last_seen), best first."""
        scores = set_scores([np.asarray(h.firsts) for h in self.hosts], fingerprints)
        return host_rows(self.hosts, fingerprints, scores, rule, times=True)


def joined_part(parts: Sequence[Part], host_packets: int = PACKETS) -> Part:
    """The Part of a whole capture from those of its chunks, in capture order (tool.hosts.joined)."""
    return Part(sum(p.packets for p in parts), joined([p.hosts for p in parts], host_packets))


def _tally(scorer: _Scorer, lines: Iterable[tuple[int, int, list[str]]], sources: int) -> list[Part]:
    """One Part per file from the packets of `sources` files, read as (source, shift, fields): the
    file's index, how much to add to the frame numbers in its Info texts (see shift_references), and
    its line's fields (tool.capture.split_line).

    Only a host's first `host_packets` packets are read past their sender and embedded: the set
    score reads nothing else, and the rest of a large capture only counts packets, addresses and
    times (tool.capture.sender_of costs a fraction of a whole Packet).
    """
    tallies = [HostTally(scorer.host_packets) for _ in range(sources)]
    counts = [0] * sources
    it = iter(lines)
    while batch := list(itertools.islice(it, CHUNK)):
        start = 0
        while start < len(batch):  # the files follow one another: cut the batch where the file changes
            source = batch[start][0]
            end = start + 1
            while end < len(batch) and batch[end][0] == source:
                end += 1
            group = batch[start:end]
            counted = tallies[source].add([sender_of(parts) for _, _, parts in group])
            for host, (_, shift, parts) in zip(counted, group):
                if host is not None:
                    host.firsts.append(shift_references(packet_of(parts), shift))
            counts[source] += end - start
            start = end
    # One encoder call for every file's first packets, through the worker's memo.
    hosts = [h for tally in tallies for h in tally.hosts.values()]
    ordered = [p for h in hosts for p in h.firsts]
    dim = scorer.model.embedding_dim
    embedded = scorer.matcher.score_and_embed(ordered)[1] if ordered else np.zeros((0, dim), np.float32)
    at = 0
    for h in hosts:
        n = len(h.firsts)
        h.firsts = embedded[at : at + n]  # type: ignore[assignment]
        at += n
    return [Part(count, list(tally.hosts.values())) for tally, count in zip(tallies, counts)]


def _record(capture: str, part: Part, scorer: _Scorer, warning: str | None = None) -> dict[str, Any]:
    if part.packets == 0:
        return {"capture": capture, "error": f"{capture}: the capture holds no packets"}
    rows = part.rows(scorer.fingerprints, scorer.rule)
    record = {"capture": capture, "packets": part.packets, "hosts": rows}
    if warning:
        record["warning"] = warning
    return record


# Wireshark names another frame of the capture in some Info texts ("Echo (ping) reply ... (request in
# 4123)"), by its number in the file it reads; a chunk numbers its frames from 1, and a batch's merge
# numbers a capture's frames after the captures before it, so the references are shifted back to the
# capture's own numbers. (The model reads these numbers: tool/text.py leaves them.)
_FRAME_REFERENCE = re.compile(r"\b((?:request|reply|response) in )(\d+)")


def shift_references(packet: Packet, shift: int) -> Packet:
    """The packet with the frame numbers its Info text refers to moved by `shift`."""
    if not shift or " in " not in packet.info:
        return packet
    info = _FRAME_REFERENCE.sub(lambda m: f"{m.group(1)}{int(m.group(2)) + shift}", packet.info)
    return packet if info == packet.info else dataclasses.replace(packet, info=info)


def read_chunk(path: str | os.PathLike, first: int = 0) -> Iterator[Packet]:
    """The packets of a chunk whose first frame is frame `first + 1` of its capture, with the frame
    numbers in their Info texts as the whole capture gives them."""
    for p in read_packets(path):
        yield shift_references(p, first)


def _one(path: str, scorer: _Scorer, first: int = 0) -> tuple[Part | None, str | None, str | None]:
    """(part, warning, error) of one capture (or chunk: see read_chunk) read on its own."""
    try:
        with warnings.catch_warnings(record=True) as held:
            warnings.simplefilter("always", CaptureTruncated)
            part = _tally(scorer, ((0, first, parts) for parts in read_fields(path)), 1)[0]
    except CaptureError as e:
        return None, None, str(e)
    cut = [str(w.message) for w in held if issubclass(w.category, CaptureTruncated)]
    return part, (cut[0] if cut else None), None


def scan_batch(paths: Sequence[str], settings: Settings) -> list[dict[str, Any]]:
    """A task: the records of several small captures, read by one tshark run when they all read.

    A capture that cannot be read (damaged, not a capture, cut short) makes the batch read each of its
    captures on its own, so that only that one fails, with its own reason.
    """
    scorer = _scorer(settings)
    parts: list[Part] | None = None
    if len(paths) > 1:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", CaptureTruncated)
                lines = ((source, -first, fields) for source, first, fields in read_many_fields(paths))
                parts = _tally(scorer, lines, len(paths))
        except (CaptureError, CaptureTruncated):
            parts = None
    if parts is not None:
        return [_record(p, part, scorer) for p, part in zip(paths, parts)]
    records = []
    for path in paths:
        part, warning, error = _one(path, scorer)
        records.append(
            {"capture": path, "error": error} if part is None else _record(path, part, scorer, warning)
        )
    return records


def scan_chunk(path: str, first: int, settings: Settings) -> dict[str, Any]:
    """A task: one chunk of a large capture, whose first frame is frame `first + 1` of the capture, as
    a Part ({"packets", "hosts"}, or {"error"})."""
    part, warning, error = _one(path, _scorer(settings), first)
    if part is None:
        return {"error": error}
    return {"packets": part.packets, "hosts": part.hosts, "warning": warning}


def dask_setup(worker: object) -> None:
    """Run by Dask in each worker process of a hunt's local cluster (its `preload`): the worker ignores
    SIGINT. Ctrl-C reaches every process of the terminal's group; the hunt itself stops the cluster,
    and a worker that died of it would print Dask's tracebacks over the hunt's last words."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_peak_rss() -> dict[str, int]:
    """This worker process's peak resident memory and its children's (tshark), in bytes."""
    import resource

    return {
        "worker": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "tshark": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


# ---------------------------------------------------------------------------------------------------
# The engine, on the client.


class Engine:
    """A hunt's Dask client: connected to `scheduler`, or to a local cluster of `workers` processes.

    `start` starts it in a thread, as soon as the hunt knows it has a capture to scan: a local cluster
    takes about as long to start as the captures take to hash (1 s for 600 MB), and the hunt needs
    both before it sends any work. A hunt whose every result is in its folder starts nothing.
    """

    def __init__(self, scheduler: str | None, workers: int):
        self.scheduler = scheduler
        self.workers = workers
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self._started: Future | None = None

    def start(self) -> None:
        if self._started is None:
            self._started = self._pool.submit(self._start)

    def _start(self) -> tuple[Any, Any]:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise HuntError("Dask is not installed: pip install 'deepnetprint[hunt]'") from None
        import logging

        # Dask logs restarted workers, closed connections and, while a cluster stops, workers' failed
        # heartbeats with their tracebacks: the hunt reports what matters (a task's failure comes back
        # as its result), so the engine's own logs stay silent, here and in the local cluster's workers.
        for name in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if self.scheduler:
            return None, Client(self.scheduler, timeout="20s")
        cluster = LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
            preload=["tool.engine"],
        )
        try:
            return cluster, Client(cluster)
        except BaseException:
            cluster.close()
            raise

    def client(self) -> Any:
        """The connected client, once it is; with a scheduler, `workers` becomes its workers' count."""
        self.start()
        client = self._started.result()[1]  # type: ignore[union-attr]
        if self.scheduler:  # batches are sized for the cluster's workers
            self.workers = max(1, len(client.scheduler_info().get("workers", {})))
        return client

    def close(self) -> None:
        """Stop the local cluster (or leave the scheduler's), waiting for a start still under way."""
        try:
            if self._started is None:
                return
            cluster, client = self._started.result()
        except BaseException:  # it never started: nothing to stop
            return
        finally:
            self._pool.shutdown(wait=True)
        client.close()
        if cluster is not None:
            cluster.close()
