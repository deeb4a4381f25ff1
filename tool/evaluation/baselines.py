"""Baselines the deep model is measured against on dnp-23, through the same protocol code.

- `NgramScorer`: the training-free matcher of docs/evaluation.md. Character 2-5-gram TF-IDF of the
  masked packet text (`tool.text.packet_text`), a device = the mean TF-IDF vector of its 20
  enrollment packets, a packet's score = its cosine to that mean (in [0, 1]: TF-IDF is non-negative).
- `SentinelClassifier`: IoT Sentinel (Miettinen et al., ICDCS 2017), supervised: 23 features per
  packet (protocol flags, size, a destination-IP counter, port classes; the paper's Table I, read by
  one tshark run of our own), a capture's fingerprint = its first 12 distinct packet vectors
  (276 numbers), one Random Forest per device type. It can only name device types it was trained
  on, so it trains on the development half of all 23 devices, and classifies captures, not packets.

scikit-learn is imported inside the functions that need it (the optional extra "eval").
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tool.capture import CaptureError, Packet, concatenate, tshark_path
from tool.evaluation.dataset import cached_extraction
from tool.evaluation.protocol import Evaluation, ProtocolData
from tool.text import text_of

SEED = 0


def ngram_vectorizer(lowercase: bool = True) -> Any:
    """The n-gram reference's char 2-5-gram TF-IDF, not yet fitted; scikit-learn's defaults otherwise
    (lower-casing, smoothed idf, l2 rows): the protocol names none."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=(2, 5), lowercase=lowercase, dtype=np.float64)


class NgramScorer:
    """Cosine between a packet's char 2-5-gram TF-IDF vector and a device's mean enrollment vector."""

    name = "ngram"

    def __init__(self, fit_texts: Sequence[str], fields: bool = False):
        """`fit_texts`: the packet texts the vocabulary and idf are learnt from (the dev half); `fields`:
        each packet's text carries its dissected fields' tag (tool.text.field_tag), as fit_texts do."""
        self.vectorizer = ngram_vectorizer()
        self.vectorizer.fit(list(fit_texts))
        self.fields = fields

    def _vectors(self, packets: Sequence[Packet]) -> Any:
        return self.vectorizer.transform([text_of(p, self.fields) for p in packets])

    def enroll(self, name: str, packets: Sequence[Packet]) -> np.ndarray:
        mean = np.asarray(self._vectors(packets).mean(axis=0)).ravel()
        norm = np.linalg.norm(mean)
        return mean / norm if norm > 0 else mean

    def score(self, packets: Sequence[Packet], states: Sequence[np.ndarray]) -> np.ndarray:
        texts = [text_of(p, self.fields) for p in packets]
        # Test captures repeat a few thousand distinct texts; each is vectorised once.
        distinct = list(dict.fromkeys(texts))
        row = {t: i for i, t in enumerate(distinct)}
        vectors = self.vectorizer.transform(distinct)  # rows are l2-normalised
        prototypes = np.stack(states, axis=1) if states else np.zeros((vectors.shape[1], 0))
        cosine = np.clip(np.asarray(vectors @ prototypes), 0.0, 1.0)
        return cosine[[row[t] for t in texts]]

    def host_scores(
        self, hosts: Sequence[Sequence[Packet]], states: Sequence[np.ndarray], packets: int | None
    ):
        """The same set-level cosine as the product's: a host's mean TF-IDF vector against each device's."""
        from tool.model import set_score

        out = np.zeros((len(hosts), len(states)))
        prototypes = np.stack(states) if states else np.zeros((0, 0))
        for h, host in enumerate(hosts):
            host = list(host)[:packets] if packets is not None else list(host)
            if host:
                out[h] = set_score(np.asarray(self._vectors(host).mean(axis=0)).ravel(), prototypes)[0]
        return out

    def false_match(self, states: Sequence[np.ndarray], scores: np.ndarray) -> None:
        return None  # no cohort: its verdict is the raw threshold

    def models(self) -> dict[str, str]:
        return {}


def ngram_fit_texts(data: ProtocolData, fields: bool = False) -> list[str]:
    """The n-gram baseline's fitting texts: every packet of the seen devices' development half; in a
    lab with no seen device (lab2), the fingerprints' packets (what a user of that network has)."""
    seen = [d for d in data.devices if d.split == "seen"]
    if not seen:
        return [text_of(p, fields) for d in data.devices for p in data.enrollment[d.name]]
    return [text_of(p, fields) for d in seen for capture in data.development[d.name] for p in capture]


def evaluate_ngram(data: ProtocolData, fields: bool = False) -> Evaluation:
    """The n-gram matcher on the protocol, its idf fitted on the seen devices' development half; with
    `fields`, on the packet texts with their dissected fields' tag (tool.text.field_tag)."""
    from tool.evaluation.protocol import evaluate_scorer

    start = time.perf_counter()
    texts = ngram_fit_texts(data, fields)
    scorer = NgramScorer(texts, fields)
    ev = evaluate_scorer(data, scorer)
    ev.seconds = time.perf_counter() - start
    seen = any(d.split == "seen" for d in data.devices)
    ev.notes = {
        "idf_fitted_on": f"{len(texts)} packets of "
        + ("the development half of the seen devices" if seen else "the fingerprints (enrollment packets)"),
        "ngrams": len(scorer.vectorizer.vocabulary_),
    }
    if fields:
        ev.notes["texts"] = "with the dissected fields' tag (tool.text.field_tag)"
    return ev


# --- IoT Sentinel ---------------------------------------------------------------------------------

# What IoT Sentinel reads of a packet, in tshark's field names; one run over the merged captures.
SENTINEL_FIELDS = (
    "frame.interface_id",
    "eth.src",
    "frame.len",
    "frame.protocols",
    "ip.dst",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "ip.opt.padding",
    "ip.opt.ra",
    "ipv6.opt.router_alert",
    "dhcp.option.dhcp",
)
# The 23 features of the paper's Table I, in its order.
SENTINEL_FEATURES = (
    "ARP",
    "LLC",
    "IP",
    "ICMP",
    "ICMPv6",
    "EAPoL",
    "TCP",
    "UDP",
    "HTTP",
    "HTTPS",
    "DHCP",
    "BOOTP",
    "SSDP",
    "DNS",
    "MDNS",
    "NTP",
    "Padding",
    "RouterAlert",
    "Size",
    "RawData",
    "DestinationIPCounter",
    "SourcePortClass",
    "DestinationPortClass",
)
SENTINEL_PACKETS = 12  # a fingerprint is the first 12 distinct packet vectors: 12 x 23 = 276 numbers
SENTINEL_TREES = 100


@dataclass(frozen=True, slots=True)
class SentinelPacket:
    """The fields of one packet IoT Sentinel's features are computed from."""

    eth_src: str
    length: int
    protocols: tuple[str, ...]
    ip_dst: str
    src_port: int | None
    dst_port: int | None
    padding: bool
    router_alert: bool
    dhcp: bool


def _port(text: str) -> int | None:
    return int(text) if text else None


def _parse_sentinel(parts: list[str]) -> SentinelPacket:
    parts = parts + [""] * (len(SENTINEL_FIELDS) - len(parts))
    _, esrc, length, protocols, ip4, ip6, tsrc, tdst, usrc, udst, pad, ra, ra6, dhcp = parts
    return SentinelPacket(
        eth_src=esrc.lower(),
        length=int(length or 0),
        protocols=tuple(protocols.split(":")) if protocols else (),
        ip_dst=ip4 or ip6,
        src_port=_port(tsrc or usrc),
        dst_port=_port(tdst or udst),
        padding=bool(pad),
        router_alert=bool(ra or ra6),
        dhcp=bool(dhcp),
    )


def _run_tshark_fields(paths: Sequence[Path]) -> list[list[list[str]]]:
    """Every packet's SENTINEL_FIELDS of each capture, in one tshark run over their concatenation."""
    out: list[list[list[str]]] = [[] for _ in paths]
    with tempfile.TemporaryDirectory(prefix="dnp-") as tmp:
        merged = Path(tmp) / "merged.pcapng"
        concatenate(paths, merged)
        cmd = [tshark_path(), "-n", "-r", str(merged), "-T", "fields", "-E", "separator=/t"]
        cmd += ["-E", "occurrence=f", "-E", "quote=n"]
        for name in SENTINEL_FIELDS:
            cmd += ["-e", name]
        with open(Path(tmp) / "fields.tsv", "w+", encoding="utf-8") as sink, tempfile.TemporaryFile() as err:
            # Output to a file, not a pipe: nothing here streams, and tshark never blocks on a full pipe.
            proc = subprocess.run(cmd, stdout=sink, stderr=err, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                err.seek(0)
                message = err.read().decode("utf-8", "replace").strip().splitlines()
                raise CaptureError(f"tshark: {message[0] if message else 'failed'}")
            sink.seek(0)
            for line in sink:
                parts = line.rstrip("\n").split("\t")
                source = int(parts[0] or 0)
                if source >= len(paths):
                    raise CaptureError("an input capture has several interfaces; read it on its own")
                out[source].append(parts)
    return out


def sentinel_packets(paths: Sequence[Path], use_cache: bool = True) -> dict[Path, list[SentinelPacket]]:
    """IoT Sentinel's fields of every packet of each capture, cached by the capture's sha256."""
    rows = cached_extraction("sentinel", SENTINEL_FIELDS, paths, _run_tshark_fields, list, list, use_cache)
    return {p: [_parse_sentinel(r) for r in found] for p, found in rows.items()}


def _port_class(port: int | None) -> int:
    # The paper's classes: no port, well-known, registered, dynamic.
    if port is None:
        return 0
    if port < 1024:
        return 1
    if port < 49152:
        return 2
    return 3


def sentinel_features(packets: Sequence[SentinelPacket]) -> np.ndarray:
    """The 23 features of each of a device's packets, in capture order: [N, 23]."""
    counters: dict[str, int] = {}
    rows = []
    for p in packets:
        layers = set(p.protocols)
        if p.ip_dst:
            # The destination IP counter numbers destinations in their order of first appearance.
            counters.setdefault(p.ip_dst, len(counters) + 1)
        rows.append(
            [
                "arp" in layers,
                "llc" in layers,
                bool(layers & {"ip", "ipv6"}),
                "icmp" in layers,
                "icmpv6" in layers,
                "eapol" in layers,
                "tcp" in layers,
                "udp" in layers,
                "http" in layers,
                bool(layers & {"tls", "ssl"}),
                p.dhcp,
                # tshark names BOOTP "dhcp"; every DHCP message is a BOOTP message.
                "dhcp" in layers or "bootp" in layers,
                "ssdp" in layers,
                "dns" in layers,
                "mdns" in layers,
                "ntp" in layers,
                p.padding,
                p.router_alert,
                p.length,
                "data" in layers,
                counters.get(p.ip_dst, 0),
                _port_class(p.src_port),
                _port_class(p.dst_port),
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(SENTINEL_FEATURES))


def sentinel_fingerprint(features: np.ndarray) -> np.ndarray:
    """The first 12 distinct packet vectors, zero-padded: the paper's fixed-size F' (276 numbers)."""
    distinct: list[tuple[float, ...]] = []
    for row in map(tuple, features):
        if row not in distinct:
            distinct.append(row)
        if len(distinct) == SENTINEL_PACKETS:
            break
    out = np.zeros((SENTINEL_PACKETS, len(SENTINEL_FEATURES)))
    if distinct:
        out[: len(distinct)] = distinct
    return out.ravel()


def _edit_distance(a: Sequence[Any], b: Sequence[Any]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _packet_rows(fingerprint: np.ndarray) -> list[tuple[float, ...]]:
    rows = fingerprint.reshape(SENTINEL_PACKETS, len(SENTINEL_FEATURES))
    return [tuple(r) for r in rows if r.any()]


class SentinelClassifier:
    """IoT Sentinel: one binary Random Forest per device type over 276-number capture fingerprints.

    A capture is given to the type whose classifier accepts it; when several accept with the same
    probability, the paper's tie-break applies (the smallest mean edit distance to that type's
    training fingerprints); when none accepts, the paper would call it a new type: here, to be
    scored like the other methods, it goes to the most probable type, and the report counts it.
    """

    name = "iot_sentinel"

    def __init__(self, training: dict[str, list[np.ndarray]], seed: int = SEED):
        from sklearn.ensemble import RandomForestClassifier

        self.names = list(training)
        self.training = training
        x = np.stack([f for name in self.names for f in training[name]])
        owner = [name for name in self.names for _ in training[name]]
        self.forests = []
        for name in self.names:
            forest = RandomForestClassifier(n_estimators=SENTINEL_TREES, random_state=seed, n_jobs=1)
            forest.fit(x, [o == name for o in owner])
            self.forests.append(forest)

    def probabilities(self, fingerprints: np.ndarray) -> np.ndarray:
        """Each classifier's probability that each fingerprint is its type: [C, K]."""
        columns = []
        for forest in self.forests:
            proba = forest.predict_proba(fingerprints)
            positive = list(forest.classes_).index(True) if True in forest.classes_ else None
            columns.append(proba[:, positive] if positive is not None else np.zeros(len(fingerprints)))
        return np.stack(columns, axis=1)

    def predict(self, fingerprints: np.ndarray) -> tuple[list[str], np.ndarray, dict[str, int]]:
        """The predicted type of each fingerprint, the probabilities, and how the votes went."""
        probs = self.probabilities(fingerprints)
        counts = {"one_vote": 0, "several_votes": 0, "no_vote": 0, "edit_distance_ties": 0}
        predicted = []
        for fingerprint, row in zip(fingerprints, probs):
            votes = int((row > 0.5).sum())
            counts["one_vote" if votes == 1 else "several_votes" if votes > 1 else "no_vote"] += 1
            best = np.flatnonzero(row == row.max())
            if len(best) > 1:
                counts["edit_distance_ties"] += 1
                mine = _packet_rows(fingerprint)
                distance = [
                    np.mean([_edit_distance(mine, _packet_rows(t)) for t in self.training[self.names[k]]])
                    for k in best
                ]
                best = best[[int(np.argmin(distance))]]
            predicted.append(self.names[int(best[0])])
        return predicted, probs, counts


def evaluate_sentinel(data: ProtocolData, seed: int = SEED) -> Evaluation:
    """Train IoT Sentinel on the development half of every device and classify the test captures."""
    start = time.perf_counter()
    train_paths = {d.name: d.captures[: len(data.development[d.name])] for d in data.devices}
    all_paths = [p for paths in train_paths.values() for p in paths] + [t.path for t in data.tests]
    packets = sentinel_packets(all_paths)
    macs = {d.name: d.mac for d in data.devices}

    def fingerprint(path: Path, device: str) -> np.ndarray:
        own = [p for p in packets[path] if p.eth_src == macs[device]]
        return sentinel_fingerprint(sentinel_features(own))

    training = {name: [fingerprint(p, name) for p in paths] for name, paths in train_paths.items()}
    training = {name: fps for name, fps in training.items() if fps}
    classifier = SentinelClassifier(training, seed)
    tests = np.stack([fingerprint(t.path, t.device) for t in data.tests])
    predicted, probs, counts = classifier.predict(tests)
    truth = [t.device for t in data.tests]
    # Columns in the protocol's fingerprint order, a device without training captures scoring 0.
    columns = np.zeros((len(tests), len(data.names)))
    for k, name in enumerate(classifier.names):
        columns[:, data.names.index(name)] = probs[:, k]
    return Evaluation(
        method=SentinelClassifier.name,
        names=data.names,
        splits=data.splits,
        capture_devices=truth,
        capture_predicted=predicted,
        capture_scores=columns,
        protocol=data.lab.protocol,
        seconds=time.perf_counter() - start,
        notes={
            "trained_on": "development half (captures 1-10) of all devices, seen and unseen: "
            "a supervised classifier cannot name a type it was not trained on",
            "votes": counts,
            # The paper calls a capture no classifier accepts a new type: counted wrong here.
            "capture_top1_no_vote_wrong": round(
                float(np.mean([t == p and row.max() > 0.5 for t, p, row in zip(truth, predicted, probs)])), 6
            ),
            "seed": seed,
        },
    )
