"""Watching: a stream of packets that never ends, scored host by host, with an alert when a host matches.

The paper's setting: the fingerprints are encoded once, and every packet of the monitored link is a
query. Hosts are counted as dnp-scan counts them (tool.hosts), packets are scored by the same Matcher,
and a host's score is the same `set` score of its first `host_packets` packets (tool.scores), with the
same calibrated verdict (tool.verdict), so that a watch over a capture alerts on exactly the hosts
that dnp-scan gives a verdict.

Memory stays bounded however long the watch runs:
- a host keeps the embeddings of its first `host_packets` packets only until its set score is final;
  after that, counters (packets, addresses, last seen);
- a host idle for `idle` seconds of capture time is evicted (scored first, with what it sent) and
  leaves a summary row for the report: every one that matched (up to MAX_RETIRED) and the latest
  others (up to MAX_RETIRED_OTHERS); when it comes back it starts a new set, which is its rejoin
  traffic, the kind of traffic a fingerprint is made of;
- at most `max_hosts` hosts are tracked; past that the least recently seen goes first;
- the Matcher's memo of encoded inputs is bounded, least recently used first (tool.scores.MEMO_LIMIT).

An alert is raised when a host's verdict first holds once it has sent `min_packets` packets, again when
its best fingerprint changes or its score moves by MATERIAL while its set is still growing, and again
when it comes back after being idle. The alert's JSON keys are a contract (tool.records.ALERT_KEYS, README).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tool.capture import Packet
from tool.constants import PACKETS
from tool.hosts import Host, host_of
from tool.records import Alert, ScanResult, TopPackets, host_rows
from tool.scores import Matcher, set_scores
from tool.verdict import Verdict

if TYPE_CHECKING:
    from tool.fingerprint import Fingerprint
    from tool.model import Model

IDLE = 600.0  # seconds of capture time without a packet after which a host is evicted
MAX_HOSTS = 20_000  # hosts tracked at once: up to PACKETS embeddings each while their set grows
MAX_RETIRED = 10_000  # evicted hosts that matched, kept for the report
MAX_RETIRED_OTHERS = 2_000  # and the latest evicted hosts that did not
MATERIAL = 0.05  # a change of the set score that is worth a new alert


@dataclass
class WatchedHost:
    """One host's state during a watch: its Host (tool.hosts), its growing first set, and its verdict."""

    host: Host
    first: list[np.ndarray] | None = field(default_factory=list)  # None once the set score is final
    scores: np.ndarray | None = None  # [K], the latest set score for each fingerprint
    false_match: np.ndarray | None = None  # [K]
    best: int = 0
    matched: bool = False
    also: list[int] = field(default_factory=list)  # the other fingerprints it reaches (Judgement.also)
    ever_matched: bool = False
    alerted: tuple[int, float] | None = None  # (fingerprint, score) of this presence's last alert
    alerts: int = 0


class Watcher:
    """Feed it chunks of packets in capture order; it returns the alerts they raise.

    >>> w = Watcher(model, fingerprints, verdict_rule(model, "set"))          # doctest: +SKIP
    >>> for chunk in chunks: for alert in w.feed(chunk): print(alert.to_dict())   # doctest: +SKIP
    """

    def __init__(
        self,
        model: Model,
        fingerprints: Sequence[Fingerprint],
        rule: Verdict,
        *,
        host_packets: int = PACKETS,
        min_packets: int = PACKETS,
        idle: float = IDLE,
        max_hosts: int = MAX_HOSTS,
    ):
        self.fingerprints = list(fingerprints)
        self.names = [f.name for f in fingerprints]
        self.rule = rule
        self.matcher = Matcher(model, fingerprints)
        self.host_packets = host_packets
        self.min_packets = min(min_packets, host_packets)
        self.idle = idle
        self.max_hosts = max_hosts
        # The cohort's scores for the fingerprints, before the first packet: no alert waits for them.
        rule.prepare(self.fingerprints)
        self.hosts: OrderedDict[str, WatchedHost] = OrderedDict()  # least recently seen first
        self.retired: OrderedDict[str, WatchedHost] = OrderedDict()  # evicted hosts, for the report
        self.top = TopPackets()
        self.packets = 0
        self.clock = 0.0  # the latest capture time seen
        self.evicted = 0
        self.retired_matched = 0  # how many of the retired hosts matched
        self.retired_dropped = 0
        self.alerts = 0

    # -- the stream -------------------------------------------------------------------------------

    def feed(self, batch: Sequence[Packet]) -> list[Alert]:
        """Score a chunk of packets and update their hosts; the alerts they raise, in order."""
        return self.feed_scored(batch)[0]

    def feed_scored(self, batch: Sequence[Packet]) -> tuple[list[Alert], np.ndarray]:
        """`feed`, and each packet's p(Target) for each fingerprint [n, K] (for a packet comment)."""
        if not batch:
            return [], np.zeros((0, len(self.names)), dtype=np.float32)
        probs, embedded = self.matcher.score_and_embed(batch)
        self.top.add(batch, probs)
        self.packets += len(batch)
        alerts: list[Alert] = []
        hosts = self.hosts
        for i, packet in enumerate(batch):
            if packet.time > self.clock:
                self.clock = packet.time
            address, kind = host_of(packet)
            if not address:
                continue  # as in dnp-scan: a packet without a source address belongs to no host
            state = hosts.get(address)
            if state is None:
                state = self._arrive(address, kind, packet)
            else:
                hosts.move_to_end(address)
            first = state.first  # None once the host's set score is final
            if state.host.count(packet, self.host_packets) and first is not None:
                first.append(embedded[i].copy())  # a view would keep the whole chunk's array alive
                if len(first) >= self.min_packets:
                    alert = self._evaluate(state, packet.time, final=len(first) >= self.host_packets)
                    if alert is not None:
                        alerts.append(alert)
        alerts += self.expire()
        return alerts, probs

    def host_score(self, address: str) -> float | None:
        """The host's latest set score for its best fingerprint, None before it has one."""
        state = self.hosts.get(address) or self.retired.get(address)
        if state is None or state.scores is None:
            return None
        return float(state.scores[state.best])

    def is_router(self, address: str) -> bool:
        """Whether the host is a router (tool.routers), as far as the watch has seen it."""
        state = self.hosts.get(address) or self.retired.get(address)
        return state is not None and state.host.router

    def expire(self) -> list[Alert]:
        """Evict the hosts idle for `idle` seconds of capture time, and the oldest past `max_hosts`."""
        alerts: list[Alert] = []
        hosts = self.hosts
        while hosts:
            address, state = next(iter(hosts.items()))
            if state.host.last_seen >= self.clock - self.idle and len(hosts) <= self.max_hosts:
                break
            del hosts[address]
            self.evicted += 1
            alert = self._evaluate(state, state.host.last_seen, final=True) if state.first else None
            if alert is not None:
                alerts.append(alert)
            if state.scores is not None:
                # Kept for the report: the hosts that matched, and the latest others.
                self.retired[address] = state
                if state.ever_matched:
                    self.retired_matched += 1
                if len(self.retired) - self.retired_matched > MAX_RETIRED_OTHERS:
                    self._forget_one(matched=False)
                if self.retired_matched > MAX_RETIRED:
                    self._forget_one(matched=True)
        return alerts

    def _forget_one(self, matched: bool) -> None:
        for address, state in self.retired.items():
            if state.ever_matched == matched:
                del self.retired[address]
                self.retired_matched -= matched
                self.retired_dropped += 1
                return

    def finish(self) -> list[Alert]:
        """The stream ended: every host still growing its set is scored with what it sent, as dnp-scan
        scores a host with fewer than `host_packets` packets."""
        alerts = []
        for state in self.hosts.values():
            if state.first:
                alert = self._evaluate(state, state.host.last_seen, final=True)
                if alert is not None:
                    alerts.append(alert)
        return alerts

    def _arrive(self, address: str, kind: str, packet: Packet) -> WatchedHost:
        old = self.retired.pop(address, None)
        if old is not None:
            self.retired_matched -= old.ever_matched
            # Back after being idle: a new set (its rejoin traffic), the counters carried on.
            state = WatchedHost(old.host, alerts=old.alerts)
            state.ever_matched = old.ever_matched
            state.scores, state.false_match, state.best = old.scores, old.false_match, old.best
            state.matched = old.matched
            state.host.first_count = 0
        else:
            state = WatchedHost(Host(address, kind, first_seen=packet.time))
        self.hosts[address] = state
        return state

    def _evaluate(self, state: WatchedHost, when: float, final: bool) -> Alert | None:
        """Score the host's set as it stands; an alert if its verdict is new or changed materially."""
        assert state.first
        scores = set_scores([np.asarray(state.first)], self.fingerprints)
        judged = self.rule.judge(self.fingerprints, scores, [state.host.router])
        k = int(judged.best[0])
        score = float(scores[0, k])
        rate = None if judged.false_match is None else float(judged.false_match[0, k])
        state.scores, state.best = scores[0], k
        state.false_match = None if judged.false_match is None else judged.false_match[0]
        state.matched = judged.matched[0]
        state.also = judged.also[0]
        if final:
            state.first = None  # the set score is final: its embeddings are no longer needed
        if not state.matched:
            return None
        state.ever_matched = True
        if state.alerted is not None and state.alerted[0] == k and abs(state.alerted[1] - score) < MATERIAL:
            return None
        state.alerted = (k, score)
        state.alerts += 1
        self.alerts += 1
        host = state.host
        alternatives = [self.names[j] for j in state.also]
        return Alert(
            when, host.address, list(host.ips), self.names[k], score, rate, host.packets, None, alternatives
        )

    # -- what is shown and reported ---------------------------------------------------------------

    def scored(self) -> list[WatchedHost]:
        """The tracked and retired hosts that have a score, best match first."""
        states = [s for s in (*self.hosts.values(), *self.retired.values()) if s.scores is not None]

        def key(s: WatchedHost) -> tuple:
            rate = 0.0 if s.false_match is None else float(s.false_match[s.best])
            assert s.scores is not None
            return (not s.matched, rate, -float(s.scores[s.best]))

        return sorted(states, key=key)

    def summaries(self) -> list[dict[str, Any]]:
        """One `{"event": "host", ...}` line (HOST_KEYS) for each host that matched during the watch."""
        out = []
        for s in self.scored():
            if not s.ever_matched:
                continue
            assert s.scores is not None
            host = s.host
            rate = None if s.false_match is None else float(s.false_match[s.best])
            summary = {
                "host_kind": host.kind, "first_seen": host.first_seen, "last_seen": host.last_seen,
                "alerts": s.alerts,
            }  # fmt: skip
            score = float(s.scores[s.best])
            alternatives = [self.names[j] for j in s.also]
            name = self.names[s.best]
            alert = Alert(
                host.last_seen, host.address, host.ips, name, score, rate, host.packets, summary, alternatives
            )
            out.append(alert.to_dict())
        return out

    def result(self, capture: str, fingerprint_files: Sequence[str] | None = None) -> ScanResult:
        """dnp-scan's report (its --json) of the hosts tracked and retired, each with its latest score.

        Past MAX_RETIRED (MAX_RETIRED_OTHERS) evicted hosts the oldest are left out (counted in
        `retired_dropped`): a watch of days would otherwise list every host that ever spoke."""
        states = [s for s in (*self.hosts.values(), *self.retired.values()) if s.scores is not None]
        scores = np.asarray([s.scores for s in states], dtype=np.float64).reshape(
            len(states), len(self.names)
        )
        rule = self.rule
        return ScanResult(
            capture=capture,
            fingerprints=[
                {"name": f.name, "file": str(path)}
                for f, path in zip(self.fingerprints, fingerprint_files or [""] * len(self.fingerprints))
            ],
            threshold=rule.threshold,
            max_false_match=rule.max_false_match,
            host_score="set",
            host_packets=self.host_packets,
            packets=self.packets,
            distinct_inputs=self.matcher.distinct_inputs,
            hosts=host_rows([s.host for s in states], self.fingerprints, scores, rule),
            top_packets=self.top.rows(self.names),
            rule=rule.describe(),
            cohort_hosts=rule.rate_over,
        )
