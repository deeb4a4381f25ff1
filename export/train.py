"""Train DeepNetPrint (both phases) on the development half, export to ONNX.

    dnp-train                      # the shipped model: all 23 devices, captures 1-10, set loss -> models/
    dnp-train --paper              # the 12-device paper model: seen devices, per-packet losses only
    dnp-train --cv                 # 5 leave-devices-out folds over the 23 devices, both host scores
    dnp-train --ae-steps 20 --proto-steps 20 --devices Aria,Lightify,HueBridge --out /tmp/m  # smoke run

Phase 1 trains the ConvLSTM autoencoder to reconstruct the distinct packet strings (sampled by the
square root of their frequency: the ~1000 distinct texts, not 50k duplicate TCP ACKs). Phase 2 trains
the one-class prototypical network on episodes that mimic the dnp-23 protocol: every training device
gets a Target prototype from 20 sequenced support packets of one capture, and packets of other
captures are queries against every prototype.

`--loss packet` (the paper model): the first 20 packets (plus some random packets) of another
capture are the queries; two losses, the one-class loss on each (query, prototype) pair and a
multi-way loss on the capture score (the mean p(Target) over the capture's first 20 packets).

`--loss set` (default): every device also gets 2 query *sets* (hosts) from other captures, 20
sequenced packets each, perturbed as networks perturb them (packets dropped, locally reordered; see
query_set). The set score is the product's host score, the cosine of the host's normalised mean
embedding with the fingerprint's; its loss is a softmax over the fingerprints for each host
(capture_top1) plus, for each fingerprint, a softmax over every host of the episode with its own
device's hosts as positives (host ranking, same-vendor hosts among the negatives). The one-class
loss (weighted) and the capture-score loss are kept on the query sets' packets, so that
p(Target) stays meaningful, and so is the small reconstruction term.

`--all-devices` (default) reads the development half of all 23 devices, as EVALUATION.md allows a
product model; `--seen-devices` only tool.evaluation.dataset's 12 SEEN ones. Captures 11-20 are never read.

`--other-hosts` also trains on the other hosts of those captures (routers, set-up phones, laptops):
each becomes an identity of its own, with its own prototype and query sets, that the devices must be
told apart from, as a scan of a real network sees them beside the devices (other_host_captures).
"""

from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import click
import numpy as np

from export.config import Config
from tool.constants import PACKETS
from tool.evaluation import metrics
from tool.files import write_text_atomic

# ---- settings (the shipped model uses these defaults) ------------------------------------------
SEED = 1337
# The labs whose development halves the shipped product model trains on (dnp-train without --data).
PRODUCT_LABS = ("iot-sentinel", "uclouvain-boot")
QUERY_RANDOM = 12  # plus random packets of the capture, for the packet-level one-class loss
# Leave-devices-out folds over the 12 seen devices, each holding out devices whose vendor
# relatives stay in training, as the real unseen devices have relatives among the seen ones.
CV_FOLDS = (
    ("D-LinkSiren", "EdimaxPlug1101W", "Aria", "Lightify"),
    ("D-LinkWaterSensor", "TP-LinkPlugHS100", "HueBridge", "EdnetGateway"),
    ("D-LinkDoorSensor", "SmarterCoffee", "WeMoLink", "D-LinkCam"),
)
# The set-level validation's folds over all 23 devices (development half): every device is held
# out once, and every held-out device keeps vendor relatives in training (the pairs are split over
# two folds, the D-Link devices over all five, the sensor group's four over four folds).
CV23_FOLDS = (
    ("D-LinkSensor", "D-LinkCam", "EdimaxPlug1101W", "HueSwitch", "Aria"),
    ("D-LinkSiren", "D-LinkDayCam", "EdimaxPlug2101W", "iKettle2", "Lightify"),
    ("D-LinkWaterSensor", "D-LinkHomeHub", "SmarterCoffee", "TP-LinkPlugHS110", "EdnetGateway"),
    ("D-LinkSwitch", "TP-LinkPlugHS100", "HomeMaticPlug", "WeMoLink"),
    ("D-LinkDoorSensor", "MAXGateway", "Withings", "HueBridge"),
)


@dataclass
class TrainConfig:
    ae_steps: int = 1500
    ae_batch: int = 128
    ae_lr: float = 3e-3
    proto_steps: int = 1500
    proto_lr: float = 1e-3
    encoder_lr: float = 3e-4  # the encoder is fine-tuned in phase 2, more gently
    first_support: float = 0.5  # share of supports taken from the start of a capture (as dnp-23)
    capture_weight: float = 1.0  # multi-way capture-score loss
    capture_tau: float = 10.0  # temperature of that softmax over capture scores in [0, 1]
    ae_weight: float = 0.1  # reconstruction kept alive in phase 2
    # Phase 2's loss: "set" scores whole hosts as the product does (the cosine of a host's mean
    # packet embedding with the fingerprint's mean), on augmented query sets, with the per-packet
    # losses kept beside it; "packet" is the paper model's episode alone (per-packet and capture-score).
    loss: str = "set"
    set_weight: float = 1.0  # the set-level loss (fingerprint -> host set, and host set -> fingerprint)
    set_tau: float = 15.0  # cosine temperature of the set-level softmaxes
    # Share of the Chamfer similarity in the trained set score, the rest the mean-embedding cosine:
    # tool.model.CHAMFER_WEIGHT trains the score the runtime computes; 0 trains the cosine alone.
    set_chamfer: float = 0.0
    packet_weight: float = 1.0  # the per-packet one-class loss, so that p(Target) stays meaningful
    query_sets: int = 2  # query sets per device and episode, each from another capture
    drop_prob: float = 0.5  # share of query sets that lose packets (a busy network drops some) ...
    min_keep: int = 10  # ... keeping at least this many of the 20
    jitter: float = 2.0  # local reordering: each packet moves by up to about this many places
    # Train on the development half of all 23 devices (a product model, EVALUATION.md), or of the
    # 12 seen devices only (the paper's protocol: --seen-devices).
    all_devices: bool = True
    # What the lexical channel's idf counts as one document: a training device's development texts
    # ("device"), or each distinct text ("text"). Used only when Config.lexical_dim is not 0.
    lexical_idf: str = "device"
    # One thread: on this shared 2-core machine two torch threads ran 5x slower than one (spinning
    # against the other jobs), and one thread makes the shipped files reproducible bit for bit.
    threads: int = 1
    # Every other host of the training captures (routers, phones) is an identity too: more identities,
    # and negatives a scan meets (other_host_captures). Read from the training devices' folders only.
    other_hosts: bool = False


# Other hosts (--other-hosts). A capture is one of a host's training captures where the host's set
# holds at least as many packets as the smallest query set training makes of a device's capture
# (TrainConfig.min_keep): fewer would be a host sparser than any the loss sees. The host needs the
# captures of one episode (a support and TrainConfig.query_sets query sets, set_episode).
OTHER_HOST_MIN_PACKETS = TrainConfig.min_keep
OTHER_HOST_MIN_CAPTURES = 1 + TrainConfig.query_sets
# A device has 10 development captures, but a host of the lab's own (its router, the set-up phone)
# can be in the captures of every device: at most this many captures per host (spread over the
# folders), so that one host does not take the share of several devices in the strings the
# autoencoder samples, nor in the supports and query sets drawn from its captures.
OTHER_HOST_MAX_CAPTURES = 30
# At most one other host for every two training devices (those with the most captures), so that the
# devices stay two thirds or more of every episode's identities and of its loss.
OTHER_HOSTS_PER_DEVICE = 0.5


# ---- data ----------------------------------------------------------------------------------------
@dataclass
class Data:
    """Distinct model-input strings and, per device, its captures as arrays of string indices."""

    strings: list[str]
    counts: np.ndarray  # [U] occurrences in the data
    captures: dict[str, list[np.ndarray]]  # identity -> dev captures -> [n packets] indices
    # The identities of `captures` that are not devices (--other-hosts: "lab:host:MAC"), sorted.
    other_hosts: list[str] = field(default_factory=list)

    @property
    def devices(self) -> list[str]:
        """The identities that are devices, sorted."""
        return sorted(set(self.captures) - set(self.other_hosts))


def is_multicast(mac: str) -> bool:
    """Whether a MAC is a group address (broadcast, multicast): the first octet's low bit is set."""
    return bool(int(mac.split(":")[0], 16) & 1)


def other_host_captures(devices: list, lab_macs: set[str], lab: str, max_hosts: int) -> dict[str, list[list]]:
    """The other hosts of these devices' development captures: "lab:host:MAC" -> its packets in each
    of its captures, devices sorted by name and each device's captures in protocol order.

    A host is every unicast source MAC that is none of the lab's devices (`lab_macs`), its packets
    those its set holds as the runtime counts hosts (tool.hosts.HostTally, every packet): a router's
    forwarded packets and its answers to its clients are set aside there, so they are here. Only
    `devices`' own folders are read, and only their development half; a capture counts where the host
    has OTHER_HOST_MIN_PACKETS there, a host where it has OTHER_HOST_MIN_CAPTURES such captures (at
    most OTHER_HOST_MAX_CAPTURES kept, evenly spread); the `max_hosts` hosts with most captures.
    """
    from tool.evaluation.dataset import read_captures
    from tool.hosts import HostTally

    paths = [c for d in devices for c in d.dev_captures]
    packets = read_captures(paths)
    found: dict[str, list[list]] = {}
    for path in paths:
        tally = HostTally(use_all=True)
        mine: dict[str, list] = {}
        for p, host in zip(packets[path], tally.add(packets[path])):
            if host is None or host.kind != "mac" or host.address in lab_macs or is_multicast(host.address):
                continue
            mine.setdefault(host.address, []).append(p)
        for mac, sent in mine.items():
            if len(sent) >= OTHER_HOST_MIN_PACKETS:
                found.setdefault(mac, []).append(sent)
    kept = sorted(
        (mac for mac, caps in found.items() if len(caps) >= OTHER_HOST_MIN_CAPTURES),
        key=lambda mac: (-len(found[mac]), mac),
    )[:max_hosts]
    out = {}
    for mac in sorted(kept):
        caps = found[mac]
        if len(caps) > OTHER_HOST_MAX_CAPTURES:
            spread = np.linspace(0, len(caps) - 1, OTHER_HOST_MAX_CAPTURES).round().astype(int)
            caps = [caps[i] for i in spread]
        out[f"{lab}:host:{mac}"] = caps
    return out


def load_data(
    root: Path | None,
    names: list[str],
    uses_length: bool,
    masked: bool = True,
    all_devices: bool = False,
    lab=None,
    fields: bool = False,
    other_hosts: bool = False,
) -> Data:
    """The development half of `names` in one lab (default: the one `root` holds, else iot-sentinel);
    only the lab's seen devices unless `all_devices` (a product model); with `fields`, each text with
    its dissected fields' tag (tool.text.field_tag); with `other_hosts`, the other hosts of those
    devices' captures as identities too (other_host_captures)."""
    from tool.evaluation.dataset import device_packets, lab_of, load_devices
    from tool.model import model_input
    from tool.text import text_of

    lab = lab or lab_of(root)
    unknown = [n for n in names if n not in lab.seen]
    if unknown and not all_devices:
        # The 12-device (paper) model reads the seen devices only (EVALUATION.md); a product model
        # may read the development half of all 23 (--all-devices).
        raise click.UsageError(f"not seen devices: {', '.join(unknown)} (--all-devices reads them)")
    every = load_devices(root, lab)
    devices = [d for d in every if d.name in names]
    if len(devices) != len(names):
        missing = set(names) - {d.name for d in devices}
        raise click.UsageError(f"devices not in the data folder: {', '.join(sorted(missing))}")
    # Only the development half is read: device_packets reads every capture it is given.
    for d in devices:
        d.captures = d.dev_captures
    packets = device_packets(devices)
    identities = {d.name: packets[d.name].per_capture for d in devices}
    hosts = {}
    if other_hosts:
        # No device of the lab is another host, not even one this model holds out (its MAC file is
        # read, never its captures), and only these devices' folders are read.
        max_hosts = int(OTHER_HOSTS_PER_DEVICE * len(devices))
        hosts = other_host_captures(devices, {d.mac for d in every}, lab.name, max_hosts)
        identities.update(hosts)
    index: dict[str, int] = {}
    counts: list[int] = []
    captures: dict[str, list[np.ndarray]] = {}
    for name, per_capture in identities.items():
        captures[name] = []
        for capture in per_capture:
            idx = []
            for p in capture:
                # Unmasked text is for the masking ablation only: the runtime always masks.
                text = text_of(p, fields) if masked else f"{p.protocol}\t{p.info}"
                s = model_input(text, p.length, uses_length)
                if s not in index:
                    index[s] = len(index)
                    counts.append(0)
                counts[index[s]] += 1
                idx.append(index[s])
            captures[name].append(np.array(idx, dtype=np.int64))
    return Data(list(index), np.array(counts, dtype=np.float64), captures, sorted(hosts))


def merge_data(parts: list[Data]) -> Data:
    """Several labs' Data as one: the distinct strings of all, each device's captures re-indexed.
    The labs' device names do not collide (tool.evaluation.dataset), so a device stays one identity."""
    index: dict[str, int] = {}
    counts: list[float] = []
    captures: dict[str, list[np.ndarray]] = {}
    other_hosts: list[str] = []
    for part in parts:
        other_hosts += part.other_hosts
        remap = np.zeros(len(part.strings), dtype=np.int64)
        for i, s in enumerate(part.strings):
            if s not in index:
                index[s] = len(index)
                counts.append(0.0)
            remap[i] = index[s]
            counts[remap[i]] += float(part.counts[i])
        for name, caps in part.captures.items():
            if name in captures:
                raise click.UsageError(f"device {name} is in two labs")
            captures[name] = [remap[c] for c in caps]
    return Data(list(index), np.array(counts, dtype=np.float64), captures, sorted(other_hosts))


def support_sequence(captures: list[np.ndarray], start_capture: int, count: int) -> np.ndarray:
    """The first `count` packets from a capture on, continuing into the next ones (dnp-23 enrollment)."""
    from tool.evaluation.dataset import enrollment_sequence

    return np.asarray(enrollment_sequence(captures, count, start_capture), dtype=np.int64)


# ---- phase 1: autoencoder ------------------------------------------------------------------------
def train_autoencoder(net, ids, data: Data, tc: TrainConfig, rng: np.random.Generator, log) -> list[float]:
    import torch
    import torch.nn.functional as F

    params = list(net.encoder.parameters()) + list(net.decoder.parameters())
    opt = torch.optim.Adam(params, lr=tc.ae_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, tc.ae_lr, total_steps=max(1, tc.ae_steps))
    weights = np.sqrt(data.counts)
    weights /= weights.sum()
    losses = []
    for step in range(tc.ae_steps):
        batch = torch.from_numpy(rng.choice(len(ids), size=tc.ae_batch, p=weights))
        x = ids[batch]  # [B, L]
        loss = F.cross_entropy(net.reconstruct(x), x)  # [B, V, L] vs [B, L]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == tc.ae_steps - 1:
            log(f"  ae step {step:5d}  reconstruction {np.mean(losses[-50:]):.4f}")
    return losses


# ---- phase 2: one-class prototypical network -----------------------------------------------------
def episode(data: Data, names: list[str], tc: TrainConfig, rng: np.random.Generator):
    """Supports [K, S] and queries (indices, device of each, capture of each first-20 query)."""
    supports, q_idx, q_dev, q_cap = [], [], [], []
    for k, name in enumerate(names):
        caps = data.captures[name]
        cs, cq = rng.choice(len(caps), size=2, replace=False)
        if rng.random() < tc.first_support:
            sup = support_sequence(caps, cs, PACKETS)
        else:  # a window anywhere in the capture: more variety in the prototypes
            seq = np.concatenate(caps[cs:] + caps[:cs])
            start = rng.integers(0, max(1, len(seq) - PACKETS + 1))
            sup = seq[start : start + PACKETS]
        supports.append(np.resize(sup, PACKETS))  # short devices repeat their sequence
        first = caps[cq][:PACKETS]
        rand = rng.choice(caps[cq], size=min(QUERY_RANDOM, len(caps[cq])), replace=False)
        q_idx += [first, rand]
        q_dev += [np.full(len(first) + len(rand), k)]
        q_cap += [np.full(len(first), k), np.full(len(rand), -1)]
    return np.stack(supports), np.concatenate(q_idx), np.concatenate(q_dev), np.concatenate(q_cap)


def query_set(capture: np.ndarray, tc: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """A host as a network shows it: 20 sequenced packets of a capture, perturbed.

    The capture's first 20 packets (as dnp-23 scores a host) or, half the time, a window anywhere in
    it; packets locally reordered (each moves by up to about `jitter` places, so packets from just
    past the 20th can come in); and, with probability `drop_prob`, packets lost: between `min_keep`
    and 20 of them are kept, in order.
    """
    start = 0 if rng.random() < 0.5 else int(rng.integers(0, max(1, len(capture) - PACKETS + 1)))
    window = capture[start : start + PACKETS + int(np.ceil(tc.jitter))]
    if tc.jitter > 0:
        window = window[np.argsort(np.arange(len(window)) + rng.uniform(0, tc.jitter, len(window)))]
    window = window[:PACKETS]
    if rng.random() < tc.drop_prob and len(window) > tc.min_keep:
        keep = int(rng.integers(tc.min_keep, len(window) + 1))
        window = window[np.sort(rng.choice(len(window), size=keep, replace=False))]
    return window


def set_episode(data: Data, names: list[str], tc: TrainConfig, rng: np.random.Generator):
    """Supports [K, S]; query sets (packet indices, set of each packet, device of each set); random
    packets of a query capture (indices, device of each) for the per-packet one-class loss."""
    supports, q_idx, q_set, set_dev, r_idx, r_dev = [], [], [], [], [], []
    for k, name in enumerate(names):
        caps = data.captures[name]
        cs, *cq = rng.choice(len(caps), size=1 + tc.query_sets, replace=False)
        if rng.random() < tc.first_support:
            sup = support_sequence(caps, cs, PACKETS)
        else:
            seq = np.concatenate(caps[cs:] + caps[:cs])
            start = rng.integers(0, max(1, len(seq) - PACKETS + 1))
            sup = seq[start : start + PACKETS]
        supports.append(np.resize(sup, PACKETS))
        for c in cq:
            q = query_set(caps[c], tc, rng)
            q_idx.append(q)
            q_set.append(np.full(len(q), len(set_dev)))
            set_dev.append(k)
        rand = rng.choice(caps[cq[0]], size=min(QUERY_RANDOM, len(caps[cq[0]])), replace=False)
        r_idx.append(rand)
        r_dev.append(np.full(len(rand), k))
    return (
        np.stack(supports),
        np.concatenate(q_idx),
        np.concatenate(q_set),
        np.array(set_dev),
        np.concatenate(r_idx),
        np.concatenate(r_dev),
    )


def set_loss(net, ids, data: Data, names: list[str], tc: TrainConfig, rng: np.random.Generator):
    """One episode's loss for --loss set (see TrainConfig)."""
    import torch
    import torch.nn.functional as F

    sup, q_idx, q_set, set_dev, r_idx, r_dev = set_episode(data, names, tc, rng)
    k, n_sup, n_q = len(names), sup.size, len(q_idx)
    uniq, inv = np.unique(np.concatenate([sup.ravel(), q_idx, r_idx]), return_inverse=True)
    z = net.encoder(ids[torch.from_numpy(uniq)])
    emb = net.embed(z)[torch.from_numpy(inv)]  # [K*S + Q + R, D]
    e_sup = emb[:n_sup].reshape(k, PACKETS, -1)
    e_q, e_r = emb[n_sup : n_sup + n_q], emb[n_sup + n_q :]
    dev = torch.from_numpy(set_dev)
    # Per-packet one-class loss: every query-set packet and the random packets against every prototype.
    protos = net.proto(e_sup)  # [K, D]
    p_q = net.match(e_q, protos).clamp(1e-6, 1 - 1e-6)  # [Q, K]
    p_r = net.match(e_r, protos).clamp(1e-6, 1 - 1e-6)
    p = torch.cat([p_q, p_r])
    packet_dev = np.concatenate([set_dev[q_set], r_dev])
    target = torch.from_numpy(packet_dev[:, None] == np.arange(k)[None]).float()
    bce = F.binary_cross_entropy(p, target, reduction="none")
    loss = (
        tc.packet_weight
        * 0.5
        * ((bce * target).sum() / target.sum() + (bce * (1 - target)).sum() / (1 - target).sum())
    )
    # The old host score (mean p over a host's packets), multi-way over the fingerprints.
    sets = torch.from_numpy(q_set)
    members = F.one_hot(sets, len(set_dev)).float()  # [Q, sets]
    mean_p = (members.T @ p_q) / members.sum(0)[:, None]  # [sets, K]
    loss = loss + tc.capture_weight * F.cross_entropy(tc.capture_tau * mean_p, dev)
    # The set score, both ways: the cosine of the normalised mean embeddings and (set_chamfer) the
    # Chamfer similarity of the packets, as tool.model.set_similarity scores a host.
    host = F.normalize(members.T @ e_q, dim=1)  # [sets, D]
    fp = F.normalize(e_sup.mean(1), dim=1)  # [K, D]
    similarity = host @ fp.T  # [sets, K]
    if tc.set_chamfer:
        sims = torch.einsum("qd,ksd->qks", F.normalize(e_q, dim=1), F.normalize(e_sup, dim=2))  # [Q, K, S]
        host_side = (members.T @ sims.max(2).values) / members.sum(0)[:, None]  # [sets, K]
        support_side = torch.stack(
            [sims[torch.from_numpy(q_set == j)].max(0).values.mean(1) for j in range(len(set_dev))]
        )  # [sets, K]: each support packet's best match among the set's packets
        chamfer = 0.5 * (host_side + support_side)
        similarity = tc.set_chamfer * chamfer + (1 - tc.set_chamfer) * similarity
    logits = tc.set_tau * similarity  # [sets, K]
    to_fp = F.cross_entropy(logits, dev)  # each host -> its fingerprint (capture_top1)
    own = (dev[None, :] == torch.arange(k)[:, None]).float()  # [K, sets]
    log_p = F.log_softmax(logits.T, dim=1)  # each fingerprint over every host of the episode
    to_host = (-(log_p * own).sum(1) / own.sum(1)).mean()  # host ranking, same-vendor hosts included
    loss = loss + tc.set_weight * 0.5 * (to_fp + to_host)
    if tc.ae_weight:
        loss = loss + tc.ae_weight * F.cross_entropy(net.decoder(z), ids[torch.from_numpy(uniq)])
    return loss


def train_prototypes(net, ids, data: Data, tc: TrainConfig, rng: np.random.Generator, log) -> list[float]:
    import torch
    import torch.nn.functional as F

    names = sorted(data.captures)
    enc_params = list(net.encoder.parameters())
    head_params = list(net.embed.parameters()) + list(net.proto.parameters()) + [net.log_scale]
    opt = torch.optim.Adam(
        [
            {"params": enc_params, "lr": tc.encoder_lr},
            {"params": head_params, "lr": tc.proto_lr},
            {"params": net.decoder.parameters(), "lr": tc.encoder_lr},
        ]
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, [tc.encoder_lr, tc.proto_lr, tc.encoder_lr], total_steps=max(1, tc.proto_steps)
    )
    losses = []
    for step in range(tc.proto_steps):
        if tc.loss == "set":
            loss = set_loss(net, ids, data, names, tc, rng)
        else:  # the paper model's episode, unchanged
            sup, q_idx, q_dev, q_cap = episode(data, names, tc, rng)
            uniq, inv = np.unique(np.concatenate([sup.ravel(), q_idx]), return_inverse=True)
            z = net.encoder(ids[torch.from_numpy(uniq)])  # [U, H*W] the episode's distinct strings
            emb = net.embed(z)[torch.from_numpy(inv)]  # [K*S + Q, D]
            k = len(names)
            protos = net.proto(emb[: k * PACKETS].reshape(k, PACKETS, -1))  # [K, D]
            p = net.match(emb[k * PACKETS :], protos).clamp(1e-6, 1 - 1e-6)  # [Q, K]
            target = torch.from_numpy(q_dev[:, None] == np.arange(k)[None]).float()  # [Q, K]
            # One-class loss, positives and negatives weighted equally.
            bce = F.binary_cross_entropy(p, target, reduction="none")
            pos = (bce * target).sum() / target.sum()
            neg = (bce * (1 - target)).sum() / (1 - target).sum()
            loss = 0.5 * (pos + neg)
            # Multi-way loss on the capture scores: the mean p over a capture's first 20 packets.
            cap = torch.from_numpy(q_cap)
            onehot = F.one_hot(cap.clamp(min=0), k).float() * (cap >= 0).float()[:, None]  # [Q, K caps]
            score = (onehot.T @ p) / onehot.sum(0)[:, None]  # [K captures, K prototypes]
            loss = loss + tc.capture_weight * F.cross_entropy(tc.capture_tau * score, torch.arange(k))
            if tc.ae_weight:
                x = ids[torch.from_numpy(uniq)]
                loss = loss + tc.ae_weight * F.cross_entropy(net.decoder(z), x)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == tc.proto_steps - 1:
            log(
                f"  proto step {step:5d}  loss {np.mean(losses[-50:]):.4f}"
                f"  scale {net.log_scale.exp().item():.3f}"
            )
    return losses


# ---- validation on the development half ---------------------------------------------------------
def validate(net, ids, data: Data, held_out: list[str]) -> dict:
    """dnp-23 on captures 1-10: enroll on capture 1, score captures 2-10 against every device.

    Returns capture_top1 over the held-out devices (never trained on: the "unseen" proxy) and over
    the training devices (their captures 2-10 were training data: optimistic), and packet AUC.
    """
    import torch

    net.eval()
    with torch.no_grad():
        emb = net.embedding(ids)  # [U, D] every distinct string once
        names = sorted(data.captures)
        protos = torch.stack(
            [net.proto(emb[support_sequence(data.captures[n], 0, PACKETS)][None])[0] for n in names]
        )
        hits: dict[str, list[bool]] = {n: [] for n in names}
        confusions: dict[str, int] = {}
        for t, name in enumerate(names):
            for cap in data.captures[name][1:]:
                score = net.match(emb[cap[:PACKETS]], protos).mean(0)  # [K]
                hits[name].append(int(score.argmax()) == t)
                if not hits[name][-1]:
                    key = f"{name} -> {names[int(score.argmax())]}"
                    confusions[key] = confusions.get(key, 0) + 1
        # Packet AUC: every packet of captures 2-10 of every device against each fingerprint.
        all_idx = np.concatenate([c for n in names for c in data.captures[n][1:]])
        all_dev = np.concatenate(
            [np.full(len(c), t) for t, n in enumerate(names) for c in data.captures[n][1:]]
        )
        p = net.match(emb[all_idx], protos).numpy()  # [P, K]
        auc = {n: float(metrics.roc_auc(p[:, t], all_dev == t)) for t, n in enumerate(names)}
    net.train()

    def mean(values: list) -> float:
        return float(np.mean(values)) if values else float("nan")

    trained = [n for n in names if n not in held_out]
    return {
        "capture_top1_heldout": mean([h for n in held_out for h in hits[n]]),
        "capture_top1_trained": mean([h for n in trained for h in hits[n]]),
        "packet_auc_heldout": mean([auc[n] for n in held_out]),
        "packet_auc_trained": mean([auc[n] for n in trained]),
        "per_device": {n: {"capture_top1": mean(hits[n]), "packet_auc": auc[n]} for n in names},
        "confusions": confusions,
    }


def validate_set(net, ids, data: Data, held_out: list[str]) -> dict:
    """dnp-23's host metrics on captures 1-10 of every device in `data`, for the held-out fingerprints.

    Fingerprint: the first 20 packets of capture 1 (support_sequence); hosts: captures 2-10, each
    its first 20 packets. Two host scores: "mean_p", the mean p(Target) over the host's packets
    (the paper's), and "set_cos", the cosine of the host's normalised mean embedding with the
    fingerprint's. host_rank1: for capture position j = 2..10 the devices' j-th captures are the
    hosts; the share of (held-out fingerprint, j) whose own host ranks first. host_auc: a held-out
    fingerprint's 9 own hosts against every other device's 9, the mean over fingerprints.
    capture_top1: each held-out device's hosts, argmax over all fingerprints. packet_auc: p(Target)
    of every packet of captures 2-10, per held-out fingerprint.
    """
    import torch
    import torch.nn.functional as F

    from tool.evaluation.dataset import SEEN

    names = sorted(data.captures)
    held = [names.index(n) for n in held_out]
    positions = range(1, min(len(c) for c in data.captures.values()))  # captures 2..10
    net.eval()
    with torch.no_grad():
        emb = net.embedding(ids)
        supports = [emb[support_sequence(data.captures[n], 0, PACKETS)] for n in names]
        protos = torch.stack([net.proto(s[None])[0] for s in supports])  # [K, D]
        fp = F.normalize(torch.stack([s.mean(0) for s in supports]), dim=1)
        # scores[how][device, position, fingerprint]
        scores = {h: np.zeros((len(names), len(positions), len(names))) for h in ("mean_p", "set_cos")}
        for d, n in enumerate(names):
            for j, c in enumerate(positions):
                e = emb[data.captures[n][c][:PACKETS]]
                scores["mean_p"][d, j] = net.match(e, protos).mean(0).numpy()
                scores["set_cos"][d, j] = (F.normalize(e.mean(0), dim=0) @ fp.T).numpy()
        all_idx = np.concatenate([data.captures[n][c] for n in names for c in positions])
        all_dev = np.concatenate(
            [np.full(len(data.captures[n][c]), d) for d, n in enumerate(names) for c in positions]
        )
        p = net.match(emb[all_idx], protos[held]).numpy()  # [P, held]
    net.train()
    pairs = list(zip(held, held_out))
    out: dict = {
        "packet_auc": {n: float(metrics.roc_auc(p[:, i], all_dev == t)) for i, (t, n) in enumerate(pairs)}
    }
    for how, sc in scores.items():
        rank1 = {n: float(np.mean(sc[:, :, t].argmax(0) == t)) for t, n in pairs}
        auc = {}
        for t, n in pairs:
            own = np.zeros(sc.shape[:2], dtype=bool)
            own[t] = True
            auc[n] = float(metrics.roc_auc(sc[:, :, t].ravel(), own.ravel()))
        top1 = {n: float(np.mean(sc[t].argmax(1) == t)) for t, n in pairs}
        confusions: dict[str, int] = {}
        for t, n in pairs:
            for guess in sc[t].argmax(1):
                if guess != t:
                    key = f"{n} -> {names[guess]}"
                    confusions[key] = confusions.get(key, 0) + 1
        out[how] = {"host_rank1": rank1, "host_auc": auc, "capture_top1": top1, "confusions": confusions}
    out["seen"] = [n for n in held_out if n in SEEN]
    return out


def summarize_set(per_device: dict) -> dict:
    """Means over held-out devices (each held out once): all, and the SEEN / unseen split."""
    from tool.evaluation.dataset import SEEN

    names = list(per_device["packet_auc"])
    groups = {
        "all": names,
        "seen": [n for n in names if n in SEEN],
        "unseen": [n for n in names if n not in SEEN],
    }

    def mean(values: dict, group: list[str]) -> float:
        return float(np.mean([values[n] for n in group])) if group else float("nan")

    out = {"packet_auc": {g: mean(per_device["packet_auc"], m) for g, m in groups.items()}}
    for how in ("mean_p", "set_cos"):
        out[how] = {
            metric: {g: mean(per_device[how][metric], m) for g, m in groups.items()}
            for metric in ("host_rank1", "host_auc", "capture_top1")
        }
    return out


def merge_folds(folds: list[dict]) -> dict:
    """The per-device results of validate_set over folds, into one validate_set-shaped dict."""
    merged: dict = {"packet_auc": {}, "mean_p": {}, "set_cos": {}}
    for f in folds:
        merged["packet_auc"].update(f["packet_auc"])
        for how in ("mean_p", "set_cos"):
            for metric in ("host_rank1", "host_auc", "capture_top1", "confusions"):
                merged[how].setdefault(metric, {}).update(f[how][metric])
    return merged


def validate_tfidf(root, names: list[str]) -> dict:
    """The training-free reference on the same protocol: char 2-5-gram TF-IDF, cosine to the mean."""
    from tool.evaluation.baselines import ngram_vectorizer

    data = load_data(root, names, uses_length=False)
    # Case kept, unlike dnp-eval's n-gram baseline: the model card's figure was measured so.
    vectorizer = ngram_vectorizer(lowercase=False)
    vectors = vectorizer.fit_transform(data.strings)  # idf over the distinct dev texts of these devices
    names = sorted(data.captures)
    protos = np.stack(
        [np.asarray(vectors[support_sequence(data.captures[n], 0, PACKETS)].mean(0)).ravel() for n in names]
    )
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    hits = {
        n: [int((vectors[cap[:PACKETS]] @ protos.T).mean(0).argmax()) == t for cap in data.captures[n][1:]]
        for t, n in enumerate(names)
    }
    all_idx = np.concatenate([c for n in names for c in data.captures[n][1:]])
    all_dev = np.concatenate([np.full(len(c), t) for t, n in enumerate(names) for c in data.captures[n][1:]])
    p = vectors[all_idx] @ protos.T
    auc = [metrics.roc_auc(p[:, t], all_dev == t) for t in range(len(names))]
    return {
        "capture_top1": float(np.mean([h for n in names for h in hits[n]])),
        "packet_auc": float(np.mean(auc)),
        "per_device": {n: float(np.mean(hits[n])) for n in names},
    }


# ---- one run ---------------------------------------------------------------------------------------
def train_net(data: Data, cfg, tc: TrainConfig, seed: int, log):
    """Both phases on `data`, from the seed: (net, ids of data.strings, result with losses and times)."""
    import torch

    from export.model import DeepNetPrint
    from tool.model import encode_bytes

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(encode_bytes(data.strings, cfg.max_len))
    packets = int(data.counts.sum())
    hosts = f" and {len(data.other_hosts)} other hosts" if data.other_hosts else ""
    log(f"{len(data.devices)} devices{hosts}, {len(data.strings)} distinct strings, {packets} packets")
    net = DeepNetPrint(cfg)
    t0 = time.time()
    ae = train_autoencoder(net, ids, data, tc, rng, log)
    t1 = time.time()
    proto = train_prototypes(net, ids, data, tc, rng, log)
    t2 = time.time()
    log(f"  phase 1 {t1 - t0:.0f} s, phase 2 {t2 - t1:.0f} s")
    result = {
        "ae_seconds": round(t1 - t0, 1),
        "proto_seconds": round(t2 - t1, 1),
        "ae_loss": ae,
        "proto_loss": proto,
    }
    return net, ids, result


def run(
    root,
    train_names,
    eval_names,
    cfg,
    tc: TrainConfig,
    seed: int,
    log,
    masked: bool = True,
    all_devices: bool = False,
):
    """Train on `train_names`; validate on `eval_names` (a superset) if given. (net, ids, data, result)

    With `all_devices`, unseen devices may be read (their development half): a product model.
    """
    import torch

    from tool.model import encode_bytes

    data = load_data(
        root, train_names, cfg.uses_length, masked, all_devices, fields=cfg.fields, other_hosts=tc.other_hosts
    )
    net, ids, result = train_net(data, cfg, tc, seed, log)
    if eval_names:
        vdata = load_data(root, eval_names, cfg.uses_length, masked, all_devices, fields=cfg.fields)
        vids = torch.from_numpy(encode_bytes(vdata.strings, cfg.max_len))
        result["validation"] = validate(net, vids, vdata, [n for n in eval_names if n not in train_names])
    return net, ids, data, result


def save_model(
    net,
    out: Path,
    data: Data,
    result: dict,
    names: list[str],
    tc: TrainConfig,
    seed: int,
    seconds: float,
    extra: dict | None = None,
    lexical=None,
) -> dict[str, str]:
    """Export the ONNX files (with the lexical channel, if given), check them against torch, and
    write manifest.json; their sha256."""
    import onnx
    import onnxruntime
    import torch

    from export.onnx_export import check_against_torch, export_onnx
    from tool.model import encode_bytes

    hashes = export_onnx(net, out, lexical)
    err = check_against_torch(net, out, encode_bytes(data.strings[:256], net.cfg.max_len), lexical)
    if err > 1e-4:
        raise click.ClickException(f"onnxruntime differs from torch by {err:.2e}")
    manifest = {
        "format": 1,
        "name": "deepnetprint-convlstm",
        "files": {name: {"sha256": h} for name, h in hashes.items()},
        "config": (lexical.cfg if lexical is not None else replace(net.cfg, lexical_dim=0)).to_dict(),
        "train": asdict(tc),
        "seed": seed,
        "training_data": {
            "dataset": "IoT Sentinel setup captures (Miettinen et al., ICDCS 2017)",
            "devices": names,
            "captures": "development half: captures 1-10 of each device (dnp-23 order)",
            "packets": int(data.counts.sum()),
            "distinct_strings": len(data.strings),
        },
        **(extra or {}),
        "training_seconds": round(seconds, 1),
        "final_loss": {
            "ae": float(np.mean(result["ae_loss"][-50:] or [0])),
            "proto": float(np.mean(result["proto_loss"][-50:] or [0])),
        },
        "validation_trained_devices": {
            k: v for k, v in result.get("validation", {}).items() if "trained" in k
        },
        "onnx_max_abs_diff": err,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }
    if data.other_hosts:  # what else the model learnt to tell the devices from: captures per host
        manifest["training_data"]["other_hosts"] = {n: len(data.captures[n]) for n in data.other_hosts}
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return hashes


def idf_documents(data: Data, unit: str) -> list[list[int]]:
    """What the lexical idf counts as one document (TrainConfig.lexical_idf), as rows of data.strings.

    "device": each identity's texts, the other hosts' (--other-hosts) included: an n-gram that a
    router or a phone also sends is common on a network, and weighs less in telling devices apart."""
    if unit == "device":
        return [sorted({int(i) for c in caps for i in c}) for caps in data.captures.values()]
    return [[i] for i in range(len(data.strings))]


def lexical_channel(cfg, ids, data: Data, unit: str):
    """The lexical channel of `cfg` (lexical_dim > 0), its idf computed from the training texts."""
    from export.model import LexicalChannel, idf_table

    return LexicalChannel(cfg, idf_table(LexicalChannel(cfg), ids, idf_documents(data, unit)))


def train_labs(labs: list[str], cfg, tc: TrainConfig, seed: int, log):
    """A product model on the development half of every device of these labs: (net, ids, data, result)."""
    from tool.evaluation.dataset import lab_named

    parts = []
    for n in labs:
        lab = lab_named(n)
        parts.append(
            load_data(None, list(lab.devices), cfg.uses_length, True, True, lab, cfg.fields, tc.other_hosts)
        )
    data = parts[0] if len(parts) == 1 else merge_data(parts)
    net, ids, result = train_net(data, cfg, tc, seed, log)
    return net, ids, data, result


def train_fold(data_dir, number, fold, train_names, eval_names, cfg, tc, seed, log, masked, fold_models):
    """One leave-devices-out fold: train on `train_names` (validating on `eval_names` if given) and,
    with `fold_models`, export the model to fold_models/fold<number> with its held-out devices."""
    start = time.time()
    net, _, data, result = run(data_dir, train_names, eval_names, cfg, tc, seed, log, masked, tc.all_devices)
    if fold_models:
        extra = {"held_out": list(fold)}
        path = fold_models / f"fold{number}"
        save_model(net, path, data, result, train_names, tc, seed, time.time() - start, extra)
    return net, result


def cv_dev23(data_dir, pool, cfg, tc: TrainConfig, seed: int, log, masked, fold_models, report, settings):
    """--cv --cv-folds dev23: train on pool minus each CV23_FOLDS fold, validate_set on all 23."""
    import torch

    from tool.evaluation.dataset import SEEN, UNSEEN
    from tool.model import encode_bytes

    every = sorted(SEEN + UNSEEN)
    vdata = load_data(data_dir, every, cfg.uses_length, masked, all_devices=True, fields=cfg.fields)  # 1-10
    vids = torch.from_numpy(encode_bytes(vdata.strings, cfg.max_len))
    folds = []
    for number, fold in enumerate(CV23_FOLDS, 1):
        train_names = [n for n in pool if n not in fold]
        log(f"fold {number}: holding out {', '.join(fold)}; training on {len(train_names)} devices")
        start = time.time()
        net, _ = train_fold(
            data_dir, number, fold, train_names, None, cfg, tc, seed, log, masked, fold_models
        )
        v = validate_set(net, vids, vdata, list(fold))
        s = summarize_set(v)
        log(
            f"  held out: set_cos host_rank1 {s['set_cos']['host_rank1']['all']:.3f}"
            f" capture_top1 {s['set_cos']['capture_top1']['all']:.3f}"
            f" | mean_p host_rank1 {s['mean_p']['host_rank1']['all']:.3f}"
            f" capture_top1 {s['mean_p']['capture_top1']['all']:.3f}"
            f" | packet_auc {s['packet_auc']['all']:.3f}"
        )
        folds.append({"held_out": list(fold), "seconds": round(time.time() - start, 1), **v})
    per_device = merge_folds(folds)
    summary = summarize_set(per_device)
    log("held-out fingerprints, 5 folds over the 23 devices (development half, captures 2-10 as hosts)")
    log(f"{'score':8s} {'host_rank1':>20s} {'host_auc':>20s} {'capture_top1':>20s}   (all / seen / unseen)")
    for how in ("mean_p", "set_cos"):
        cells = [
            " / ".join(f"{summary[how][m][g]:.3f}" for g in ("all", "seen", "unseen"))
            for m in ("host_rank1", "host_auc", "capture_top1")
        ]
        log(f"{how:8s} " + " ".join(f"{c:>20s}" for c in cells))
    pa = summary["packet_auc"]
    log(f"packet_auc of p(Target): {pa['all']:.3f} / {pa['seen']:.3f} / {pa['unseen']:.3f}")
    if report:
        write_text_atomic(
            report,
            json.dumps(
                {**settings, "pool": pool, "summary": summary, "per_device": per_device, "folds": folds},
                indent=1,
            ),
        )
    return summary


# The settings dnp-train exposes, each an option named after its field, whose type and default are the
# dataclass's (TrainConfig above, the network's Config in export/model.py): declared once, there.
SETTINGS: tuple[tuple[type, str, dict], ...] = (
    (TrainConfig, "all_devices", {
        "flag": "--all-devices/--seen-devices",
        "help": "Train on the development half of all 23 devices (product model) or of the 12 seen "
        "ones only.",
    }),
    (TrainConfig, "ae_steps", {}),
    (TrainConfig, "proto_steps", {}),
    (TrainConfig, "threads", {}),
    (Config, "hidden", {"help": "ConvLSTM channels H."}),
    (Config, "max_len", {"help": "Bytes read per packet (multiple of 16)."}),
    (Config, "uses_length", {
        "flag": "--length/--no-length", "help": "Prepend the frame length to the text the model reads.",
    }),
    (Config, "readout", {
        "choices": ["last", "all"],
        "help": "f_phi reads the ConvLSTM's last hidden state, or the hidden states of all its steps.",
    }),
    (Config, "normalize", {
        "flag": "--normalize/--no-normalize",
        "help": "Put f_phi's output on the unit sphere (the learned scale sets the sharpness).",
    }),
    (Config, "proto_net", {
        "flag": "--proto-net/--mean-proto",
        "help": "Time-series prototype network over the support sequence, or the plain mean.",
    }),
    (Config, "conv", {
        "choices": ["1d", "2d"],
        "help": "ConvLSTM convolutions along each 16-character chunk, or over it as a 4 x 4 map (the "
        "paper's 2-D).",
    }),
    (TrainConfig, "capture_weight", {}),
    (TrainConfig, "ae_weight", {}),
    (TrainConfig, "loss", {
        "choices": ["set", "packet"],
        "help": "Phase 2: set-level host loss plus the per-packet losses, or the per-packet losses alone "
        "(paper).",
    }),
    (TrainConfig, "set_weight", {}),
    (TrainConfig, "set_tau", {}),
    (TrainConfig, "set_chamfer", {
        "help": "Share of the Chamfer similarity in the trained set score (the runtime's: 0.5).",
    }),
    (TrainConfig, "packet_weight", {"help": "With --loss set: weight of the per-packet one-class loss."}),
    (Config, "lexical_dim", {"help": "Dimensions of the lexical channel fused into encoder.onnx (0: none)."}),
    (Config, "lexical_weight", {"help": "The lexical channel's share of the fused cosine."}),
    (Config, "lexical_min_n", {}),
    (Config, "lexical_max_n", {}),
    (Config, "lexical_buckets", {"help": "Entries of the lexical channel's idf table."}),
    (TrainConfig, "lexical_idf", {
        "choices": ["device", "text"],
        "help": "The lexical idf's document: a training device's texts, or each distinct text.",
    }),
    (Config, "fields", {
        "flag": "--fields/--no-fields",
        "help": "The packet text carries the dissected fields' tag (tool.text.field_tag: DHCP parameter "
        "list, vendor class, JA3, User-Agent).",
    }),
    (TrainConfig, "other_hosts", {
        "flag": "--other-hosts/--no-other-hosts",
        "help": "Also train on the other hosts of the training captures (routers, phones), each an "
        "identity of its own: negatives the devices must be told apart from.",
    }),
    (TrainConfig, "drop_prob", {}),
    (TrainConfig, "jitter", {}),
)  # fmt: skip


def setting_options(command):
    """Add a click option for each of SETTINGS to `command`, its default taken from the dataclass."""
    for cls, name, extra in reversed(SETTINGS):
        default = getattr(cls, name)
        kw = {"default": default, "show_default": True}
        if "help" in extra:
            kw["help"] = extra["help"]
        if "choices" in extra:
            kw["type"] = click.Choice(extra["choices"])
        elif "flag" not in extra:
            kw["type"] = type(default)
        command = click.option(extra.get("flag", "--" + name.replace("_", "-")), name, **kw)(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data",
    "data_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="IoT Sentinel data folder [default: tool.evaluation.dataset.default_data_dir()].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the ONNX files and manifest.json go [default: the repo's models/].",
)
@click.option(
    "--devices",
    default=None,
    help="Comma-separated devices to train on [default: all 23, or the 12 seen with --seen-devices].",
)
@click.option(
    "--labs",
    default=None,
    help="Comma-separated labs (iot-sentinel, uclouvain-boot) whose development halves, every device, a "
    "product model trains on, read from ../shared/data [default: both, the shipped model; with --data, "
    "--devices, --paper, --seen-devices or --cv: the one data folder].",
)
@click.option(
    "--paper",
    is_flag=True,
    help="The 12-device paper model: --seen-devices --loss packet (with the other defaults).",
)
@click.option(
    "--cv",
    is_flag=True,
    help="Leave-devices-out validation on the development half; no export (see --cv-folds).",
)
@click.option(
    "--cv-folds",
    type=click.Choice(["dev23", "seen3"]),
    default="dev23",
    show_default=True,
    help="dev23: 5 vendor-aware folds over all 23 devices, host metrics of both host scores for the "
    "held-out fingerprints (training pool: --all-devices or --seen-devices, minus the fold); "
    "seen3: the model card's 3 folds over the seen devices, capture_top1 of the mean p(Target).",
)
@click.option(
    "--tfidf", is_flag=True, help="With --cv: the training-free TF-IDF reference on the same protocol."
)
@click.option("--seed", type=int, default=SEED, show_default=True)
@click.option(
    "--mask/--no-mask",
    "masked",
    default=True,
    show_default=True,
    help="With --cv: --no-mask trains on the raw Info text, addresses and all (the masking ablation).",
)
@click.option(
    "--fold-models",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --cv: export each fold's model to DIR/fold1..3 (for python -m tool.evaluation.calibrate).",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the validation numbers (JSON) here (with --cv: per fold, per device and summary).",
)
@setting_options
def main(
    data_dir, out, devices, labs, paper, cv, cv_folds, tfidf, seed, masked, fold_models, report, **options
) -> None:
    """Train the ConvLSTM autoencoder and the prototype head; write models/ (ONNX + manifest)."""
    import torch

    from tool.evaluation.dataset import SEEN, UNSEEN

    cfg = Config(**{n: options.pop(n) for _, n, _ in SETTINGS if n in Config.__dataclass_fields__})
    tc = TrainConfig(**options)
    if paper:
        tc = replace(tc, all_devices=False, loss="packet")
        cfg = replace(cfg, lexical_dim=0)  # the paper's encoder: the ConvLSTM alone
    if cv:  # the learnt encoder alone: python -m export.crosslab --folds measures it with the channel
        cfg = replace(cfg, lexical_dim=0)
    if cfg.lexical_dim and cfg.proto_net:
        raise click.UsageError("the lexical channel goes with --mean-proto")
    if labs is None and not (data_dir or devices or paper or cv) and tc.all_devices:
        labs = ",".join(PRODUCT_LABS)  # the shipped product model: both labs' development halves
    if labs and (data_dir or devices or paper or cv or not tc.all_devices):
        raise click.UsageError(
            "--labs trains a product model on every device of the labs: no --data, "
            "--devices, --paper, --seen-devices or --cv with it"
        )
    all_devices = tc.all_devices
    torch.set_num_threads(tc.threads)
    if cfg.max_len % 16:
        raise click.UsageError("--max-len must be a multiple of 16")
    if not cv and (not masked or fold_models):
        # The runtime always masks, so an unmasked model must never be exported as a shippable one.
        raise click.UsageError("--no-mask and --fold-models go with --cv")
    if devices:
        names = [n.strip() for n in devices.split(",")]
    else:
        names = sorted(SEEN + UNSEEN) if all_devices else list(SEEN)
    log = click.echo
    settings = {"config": cfg.to_dict(), "train": asdict(tc), "seed": seed, "masked": masked}
    log(json.dumps(settings))

    if cv and tfidf:
        result = validate_tfidf(data_dir, names)
        log(f"TF-IDF capture_top1 {result['capture_top1']:.3f}  packet_auc {result['packet_auc']:.3f}")
        if report:
            write_text_atomic(report, json.dumps(result, indent=1))
        return
    if cv and cv_folds == "dev23":
        cv_dev23(data_dir, names, cfg, tc, seed, log, masked, fold_models, report, settings)
        return
    if cv:
        folds = []
        for number, fold in enumerate(CV_FOLDS, 1):
            train_names = [n for n in names if n not in fold]
            log(f"fold: holding out {', '.join(fold)}")
            _, result = train_fold(
                data_dir, number, fold, train_names, names, cfg, tc, seed, log, masked, fold_models
            )
            v = result["validation"]
            log(
                f"  held-out capture_top1 {v['capture_top1_heldout']:.3f}"
                f"  packet_auc {v['packet_auc_heldout']:.3f}"
                f"  | trained {v['capture_top1_trained']:.3f} / {v['packet_auc_trained']:.3f}"
            )
            folds.append(
                {"held_out": list(fold), **{k: result[k] for k in ("ae_seconds", "proto_seconds")}, **v}
            )
        per = {n: f["per_device"][n] for f in folds for n in f["held_out"]}
        summary = {
            "capture_top1_heldout": float(np.mean([f["capture_top1_heldout"] for f in folds])),
            "packet_auc_heldout": float(np.mean([per[n]["packet_auc"] for n in per])),
            "capture_top1_trained": float(np.mean([f["capture_top1_trained"] for f in folds])),
            "per_device_heldout": per,
        }
        log(
            f"CV held-out capture_top1 {summary['capture_top1_heldout']:.3f}  packet_auc "
            f"{summary['packet_auc_heldout']:.3f}  trained capture_top1 {summary['capture_top1_trained']:.3f}"
        )
        if report:
            write_text_atomic(report, json.dumps({**settings, "cv": summary, "folds": folds}, indent=1))
        return

    out = out or Path(__file__).resolve().parent.parent / "models"
    start = time.time()
    extra = None
    if labs:
        chosen = [n.strip() for n in labs.split(",")]
        net, ids, data, result = train_labs(chosen, replace(cfg, lexical_dim=0), tc, seed, log)
        names = data.devices
        extra = {"training_data": {
            "dataset": "IoT Sentinel setup captures (Miettinen et al., ICDCS 2017); uclouvain-boot (De "
            "Keersmaeker et al., ICNP 2025)",
            "labs": {lab: [n for n in names if n in _lab_devices(lab)] for lab in chosen},
            "devices": names,
            "captures": "development half: captures 1-10 of each device (each lab's protocol order)",
            "packets": int(data.counts.sum()),
            "distinct_strings": len(data.strings),
        }}  # fmt: skip
    else:
        net, ids, data, result = run(
            data_dir, names, names, replace(cfg, lexical_dim=0), tc, seed, log, all_devices=all_devices
        )
    lexical = lexical_channel(cfg, ids, data, tc.lexical_idf) if cfg.lexical_dim else None
    hashes = save_model(net, out, data, result, names, tc, seed, time.time() - start, extra, lexical)
    if report:
        write_text_atomic(
            report, json.dumps({**settings, **{k: v for k, v in result.items() if "loss" not in k}}, indent=1)
        )
    files = ", ".join(f"{n} {h[:12]}" for n, h in hashes.items())
    log(f"wrote {out} in {time.time() - start:.0f} s: {files}")


def _lab_devices(lab: str) -> tuple[str, ...]:
    from tool.evaluation.dataset import lab_named

    return lab_named(lab).devices


if __name__ == "__main__":
    main()
