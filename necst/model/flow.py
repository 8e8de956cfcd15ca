"""Flow level: one autoregressive LSTM per kind of flow (tcp, udp, noflow).

A flow is a sequence of packets; each step predicts the next packet from the previous one
(teacher forcing) and the flow's condition (application, size class = bucket of its packet
count, position in the flow). Noflow flows have no application (no ports); they are conditioned
on their protocol instead (``noflow_proto``: ARP, ICMP, ICMPv6, IGMP, EAPOL, ...), whose request
and reply patterns and lengths differ and which the model otherwise had to guess from the packet
count. A step is factored so that its parts agree with each other:

    direction | h  ->  flags | h, direction  ->  packet code | h, direction, flags
    ->  time-gap bin | h, direction, flags, code  ->  last packet? | all of them

The packets remaining (``rem``) are known exactly up to ``rem_exact`` (64; then by powers of
two), so a flow's first packet already knows its exact length: IoT devices repeat fixed
sessions (a TLS session of exactly 25 packets that ends "PSH+ACK FIN+ACK RST RST"), and with
buckets of 16-31 and 32-63 remaining the first packets were drawn from the mix of all those
lengths' sessions, whose teardowns then no longer fitted the length asked for.

The packet code is the packet model's discrete description (``packet_model.encode``); the
gap is a categorical over log-spaced bins, sampled log-uniformly within its bin, so the
spread of gaps is kept rather than collapsed to a mean.

A packet's exact header and payload lengths come from ``exact_lengths`` (default on;
``necst.model.exact_lengths``): the lengths its code carried in training under the flow's
condition, given the previous packet's length for a flow's first packets (an answer follows
its question), repeated inside a flow as often as in training. Bundles made before it keep the
packet model's length drawn inside the code's bin.

``self_feed`` (scheduled sampling, share 0.3 by default since session 5) feeds a share of the
network's own draws back as the previous packet while training (``self_feed_tokens`` of it, for
``self_feed_kinds``), since sampling feeds it its own draws, not the real packets. Why: under
teacher forcing session 4's model names the true next TCP flag with p ~ 0.99, yet when it samples, long
IoT sessions drift off their script (of the training part's 37-packet TLS sessions, 65% end
"PSH+ACK FIN+ACK RST RST"; sampled, 36%), because the previous packet's code and gap are what
told the scripts apart in training; forcing the true codes and gaps while sampling the flags
takes that to 49%. About half the sampled TCP flag-bigram error sits in the last four packets.
Chosen on the time-cut validation split (``scripts/eval_flow_model.py --validate``), by the JSD
between sampled and fit-part TCP bigrams over 5 sampling seeds, since that cut's flag-bigram
floor is 4x the held-out one and its ratios sit near 1 for every model: flag bigrams 0.00041 /
0.00046 (teacher forcing, training seeds 0 / 1) -> 0.00031 / 0.00032 (self_feed 0.3),
flag+direction 0.00125 / 0.00132 -> 0.00120 / 0.00124, TCP duration ratio 1.16 / 1.01 -> 1.12 /
1.09. Held-out, once: TCP flag bigrams 1.87 -> 1.61, flag+direction 1.86 -> 1.67 (session 5
note). Tried and not taken: 160 units with it (validation 0.00030 flag / 0.00092 flag+direction,
but on held-out the TCP network stopped early at 39 epochs and scored 2.06 / 1.96, log gaps
1.57); feeding back the gaps too (0.00028 / 0.00089, TCP duration 1.26); min-p truncation or
temperature of the heads when sampling (no gain: the drift is not in the tails).

Training sequences never cross flows. Long flows are cut into windows of ``window`` packets;
each window starts from a zero LSTM state, with the previous packet's tokens as its first
input and the position in the flow as an input. Sampling does exactly the same (it resets
the state at every multiple of ``window``), so what the model sees when sampling is what it
was trained on. Sampling advances all active flows of a kind at once, one batched step per
packet index; nothing in it forces flags: the handshake and teardown are learned.

TensorFlow is imported only to train. Sampling runs the trained networks in numpy
(``necst.model.lstm_numpy``) from the weights stored in the bundle.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from necst.errors import BundleError, NecstError
from necst.model.exact_lengths import ExactLengths
from necst.model.lstm_numpy import ARCH_V1, ARCH_V2, StepNet, Walker, keras_arrays
from necst.process.features import NOT_TCP, flag_bits, packet_features

KINDS = ("tcp", "udp", "noflow")
# size class i holds flows of SIZE_EDGES[i] <= packets < SIZE_EDGES[i + 1] (the last is open)
SIZE_EDGES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384,
              512, 1024, 2048, 4096, 8192, 16384)
SIZE_EDGES_ARR = np.asarray(SIZE_EDGES, dtype=np.int64)
N_POS = 16 + 24  # positions 0..15 as themselves, then one bucket per power of two
SELF_FEED_RAMP = 10  # epochs over which the share of fed-back own draws rises to ``self_feed``
GAP_FLOOR_S = 1e-6  # gaps below this (timestamps in microseconds) are 0
OTHER_APP = "other"
NOFLOW_APP = "unknown"  # the application of every noflow flow (no ports, no DPI)
# noflow flows are conditioned on their protocol, not their (always unknown) application:
# (ethertype, IP protocol or None) -> label; others are "eth0x...." / "ip<proto>"
NOFLOW_PROTOS = {(0x0806, None): "arp", (0x0800, 1): "icmp", (0x86DD, 58): "icmpv6", (0x0800, 2): "igmp",
                 (0x888E, None): "eapol"}
# what a request's craft_kind (the aggregate level's craftable kind) allows of those labels
CRAFT_PROTOS = {"icmp": ("icmp", "icmpv6"), "arp": ("arp",), "igmp": ("igmp",), "eapol": ("eapol",)}


def craft_allows(labels: np.ndarray, craft_kind: str) -> np.ndarray:
    """Which noflow protocol labels a craft kind allows; "llc" is every 802.3 length field."""
    if craft_kind == "llc":
        return np.array([str(x).startswith("eth0x") and int(str(x)[5:], 16) < 0x0600 for x in labels], bool)
    return np.isin(labels, CRAFT_PROTOS.get(craft_kind, ()))
FORMAT_VERSION = 2  # 1: networks as .keras files; 2: networks as arrays, run in numpy
INPUT_NAMES = ("prev_dir", "prev_flag", "prev_code", "prev_gap", "cur_dir", "cur_flag", "cur_code",
               "cur_gap", "app", "size", "pos", "rem")


def size_class(packets) -> np.ndarray:
    """The size class of flows with these packet counts (see ``SIZE_EDGES``)."""
    p = np.maximum(np.asarray(packets, dtype=np.int64), 1)
    return np.searchsorted(np.asarray(SIZE_EDGES), p, side="right") - 1


def noflow_proto(ethertype, ip_proto) -> np.ndarray:
    """A protocol label per packet or flow without ports (``NOFLOW_PROTOS``): what the noflow
    level is conditioned on. ARP requests and replies, ICMP echoes, IGMP reports and EAPOL
    handshakes differ in lengths and direction pattern; their application is always unknown."""
    et = pd.to_numeric(pd.Series(ethertype), errors="coerce").fillna(-1).to_numpy(np.int64)
    pr = pd.to_numeric(pd.Series(ip_proto), errors="coerce").fillna(-1).to_numpy(np.int64)
    out = np.where(pr >= 0, np.char.add("ip", pr.astype(str)),
                   np.char.add("eth0x", np.char.zfill(np.char.mod("%x", np.maximum(et, 0)), 4))).astype(object)
    for (e, p), name in NOFLOW_PROTOS.items():
        out[(et == e) & ((pr < 0) if p is None else (pr == p))] = name
    return out


def _pos_bucket(pos: np.ndarray, exact: int = 16) -> np.ndarray:
    """Positions (or packets remaining) below ``exact`` as themselves, then one bucket per power
    of two, ``n_buckets(exact)`` in all (``exact`` a power of two; 16 gives the N_POS buckets)."""
    pos = np.asarray(pos, dtype=np.int64)
    shift = int(np.log2(exact))
    big = exact + np.floor(np.log2(np.maximum(pos, exact))).astype(np.int64) - shift
    return np.where(pos < exact, pos, np.minimum(big, n_buckets(exact) - 1)).astype(np.int32)


def n_buckets(exact: int) -> int:
    """How many buckets ``_pos_bucket`` uses: up to 2**28 packets."""
    return int(exact) + 28 - int(np.log2(exact))


def _gap_bins(gap_s: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin 0: below GAP_FLOOR_S; bin k: edges[k-1] <= gap < edges[k]."""
    return np.minimum(np.searchsorted(edges, gap_s, side="right"), len(edges) - 1).astype(np.int32)


class _Vocab:
    """What one kind's model speaks: flag combinations, apps, number of codes, length caps."""

    def __init__(self, flags: list[str], flag_other: str, apps: list[str], n_codes: int,
                 cond_app: np.ndarray, cond_packets: np.ndarray, cond_count: np.ndarray, cond: str = "app"):
        # cond "app": ``apps`` are applications; "proto": noflow protocol labels (``noflow_proto``)
        self.flags, self.flag_other, self.apps, self.cond = list(flags), flag_other, list(apps), cond
        self.n_codes = int(n_codes)
        # the training flows' (app, packets) mix: requests without a packet count draw from it
        self.cond_app = np.asarray(cond_app, np.int32)
        self.cond_packets = np.asarray(cond_packets, np.int64)
        self.cond_count = np.asarray(cond_count, np.int64)

    def to_json(self) -> dict:
        return {"flags": self.flags, "flag_other": self.flag_other, "apps": self.apps, "n_codes": self.n_codes,
                "cond": self.cond}

    def arrays(self, kind: str) -> dict:
        return {f"{kind}_cond_app": self.cond_app, f"{kind}_cond_packets": self.cond_packets,
                f"{kind}_cond_count": self.cond_count}

    @classmethod
    def from_saved(cls, d: dict, arrays: dict, kind: str) -> "_Vocab":
        return cls(d["flags"], d["flag_other"], d["apps"], d["n_codes"], arrays[f"{kind}_cond_app"],
                   arrays[f"{kind}_cond_packets"], arrays[f"{kind}_cond_count"], d.get("cond", "app"))

    def packets_for(self, classes: np.ndarray, rng) -> np.ndarray:
        """A packet count for each size class, drawn from the training flows of that class."""
        classes = np.asarray(classes, np.int64)
        out = SIZE_EDGES_ARR[classes].copy()  # a class never seen in training: its lower edge
        of = size_class(self.cond_packets)
        for c in np.unique(classes):
            sel, want = np.flatnonzero(of == c), np.flatnonzero(classes == c)
            if len(sel):
                w = self.cond_count[sel] / self.cond_count[sel].sum()
                out[want] = self.cond_packets[sel][rng.choice(len(sel), size=len(want), p=w)]
        return out

    def app_ids(self, apps) -> np.ndarray:
        ids = pd.Index(self.apps, dtype=object).get_indexer(pd.Index(np.asarray(apps).astype(str), dtype=object))
        ids[ids < 0] = self.apps.index(OTHER_APP)
        return ids.astype(np.int32)

    def proto_ids(self, req: pd.DataFrame, packets: np.ndarray, rng) -> np.ndarray:
        """The protocol label (index into ``apps``) of each noflow request: its ``proto`` where
        given and known, else drawn from the training flows' (label, packets) mix among the labels
        its ``craft_kind`` allows (icmp: icmp, icmpv6; arp, igmp, eapol: themselves; llc: 802.3), at its packet count (else its
        size class, else any count)."""
        n = len(req)
        ids = np.full(n, -1, np.int64)
        if "proto" in req.columns:
            ids = pd.Index(self.apps, dtype=object).get_indexer(
                pd.Index(req["proto"].astype(object).where(req["proto"].notna(), "").astype(str), dtype=object))
        todo = ids < 0
        if not todo.any():
            return ids.astype(np.int32)
        ck = req["craft_kind"].astype(str).to_numpy() if "craft_kind" in req.columns else np.full(n, "", object)
        labels = np.array(self.apps, dtype=object)
        packets = np.asarray(packets, np.int64)
        for c in pd.unique(ck[todo]):
            allowed = craft_allows(labels, c)
            if not allowed.any():
                allowed[:] = True
            keep = allowed[self.cond_app]
            ca, cp, cc = self.cond_app[keep], self.cond_packets[keep], self.cond_count[keep]
            rows = np.flatnonzero(todo & (ck == c))
            if len(ca) == 0:
                ids[rows] = int(np.flatnonzero(allowed)[0])
                continue
            for p in np.unique(packets[rows]):
                want = rows[packets[rows] == p]
                sel = cp == p
                if not sel.any():
                    sel = size_class(cp) == size_class([p])[0]
                if not sel.any():
                    sel = np.ones(len(cp), bool)
                w = cc[sel] / cc[sel].sum()
                ids[want] = ca[sel][rng.choice(int(sel.sum()), size=len(want), p=w)]
        return ids.astype(np.int32)


class FlowModel:
    """Autoregressive LSTMs over the packets of tcp, udp and noflow flows.

    ``fit(dataset, packet_model)`` with any packet model that has ``n_codes(kind)``,
    ``encode(packet_features, kind)`` and ``sample_codes(codes, kind, seed)``;
    ``sample(requests, packet_model, seed)`` returns one row per generated packet.
    Learned state: ``vocab_`` and ``arrays_`` (the network's weights, run in numpy when
    sampling) per kind, ``arch_``, ``gap_edges_``, ``history_``; after ``fit`` also the Keras
    networks in ``models_`` (not saved).
    """

    # head_units 32 (64 before it was a setting): on the iot_sentinel split (training seeds 0, 1) 19 / 19 of
    # 21 fidelity rows within 1.5x against 18 / 20, the misses within the seeds' spread, at ~20 % less
    # CPU per sampled packet; units 64 as well cost TCP flag+dir bigrams (2.00 / 2.85 against 1.86 / 1.38)
    def __init__(self, units: int = 96, window: int = 64, epochs: int = 70, batch_size: int = 128,
                 learning_rate: float = 3e-3, n_gap_bins: int = 128, min_flag_count: int = 3,
                 max_flags: int = 32, min_app_count: int = 5, val_fraction: float = 0.1,
                 patience: int = 4, prev_in_heads: bool = True, end_at_count: bool = True,
                 code_pool: int = 256, rem_exact: int = 64, self_feed: float = 0.3,
                 self_feed_tokens: tuple = ("dir", "flag", "code"), self_feed_kinds: tuple = ("tcp",),
                 head_units: int = 32, exact_lengths: bool = True, seed: int = 0, verbose: bool = False):
        self.units, self.head_units, self.window, self.epochs, self.batch_size = units, head_units, window, epochs, batch_size
        self.learning_rate, self.n_gap_bins = learning_rate, n_gap_bins
        self.min_flag_count, self.max_flags, self.min_app_count = min_flag_count, max_flags, min_app_count
        self.val_fraction, self.patience, self.seed, self.verbose = val_fraction, patience, seed, verbose
        self.prev_in_heads, self.end_at_count, self.code_pool = prev_in_heads, end_at_count, code_pool
        self.rem_exact, self.self_feed = rem_exact, self_feed
        self.self_feed_tokens, self.self_feed_kinds = tuple(self_feed_tokens), tuple(self_feed_kinds)
        self.exact_lengths = exact_lengths

    def get_config(self) -> dict:
        return {k: getattr(self, k) for k in (
            "units", "head_units", "window", "epochs", "batch_size", "learning_rate", "n_gap_bins", "min_flag_count",
            "max_flags", "min_app_count", "val_fraction", "patience", "prev_in_heads", "end_at_count", "code_pool",
            "rem_exact", "self_feed", "self_feed_tokens", "self_feed_kinds", "exact_lengths", "seed")}

    # -- data -----------------------------------------------------------------------------

    @staticmethod
    def _features(dataset) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        from necst.process.dataset import Dataset, load_dataset

        if isinstance(dataset, (str, Path)):
            dataset = load_dataset(dataset)
        if isinstance(dataset, Dataset):
            flows = None
            if dataset.flows.num_rows:
                cols = [c for c in ("flow_id", "app", "ethertype", "protocol") if c in dataset.flows.column_names]
                flows = dataset.flows.select(cols).to_pandas()
            return packet_features(dataset.packets), flows
        if isinstance(dataset, pd.DataFrame) and "gap_s" in dataset.columns:
            return dataset, None  # packet features already
        return packet_features(dataset), None

    @staticmethod
    def _flow_protos(pf: pd.DataFrame, flows: pd.DataFrame | None) -> pd.Series | None:
        """Each flow's ``noflow_proto`` label by flow id, from the FlowTable (or from packet rows
        that carry ``ethertype`` and ``ip_proto``); None when neither says."""
        if flows is not None and {"ethertype", "protocol"} <= set(flows.columns):
            return pd.Series(noflow_proto(flows["ethertype"], flows["protocol"]), index=flows["flow_id"].to_numpy())
        if {"ethertype", "ip_proto"} <= set(pf.columns):
            first = pf.drop_duplicates("flow_id")
            return pd.Series(noflow_proto(first["ethertype"], first["ip_proto"]), index=first["flow_id"].to_numpy())
        return None

    def _gap_edges(self, gaps: np.ndarray) -> np.ndarray:
        hi = max(float(gaps.max()) if len(gaps) else 1.0, 1.0) * 1.001
        inner = np.logspace(np.log10(GAP_FLOOR_S), np.log10(hi), self.n_gap_bins - 1)
        return inner  # bin k (k >= 1) is [inner[k-1], inner[k]); bin 0 is [0, inner[0])

    def _tokens(self, rows: pd.DataFrame, flow_app: pd.Series | None, kind: str, packet_model,
                vocab: _Vocab | None, cond: str = "app") -> tuple[dict, _Vocab]:
        """Per-packet tokens of one kind, sorted by (flow, position). ``flow_app``: each flow's
        condition label by flow id (its application, or with ``cond="proto"`` its protocol)."""
        order = np.lexsort((rows["flow_pos"].to_numpy(), rows["ts_ns"].to_numpy(), rows["flow_id"].to_numpy()))
        rows = rows.iloc[order]
        flow = rows["flow_id"].to_numpy(np.int64)
        n = len(rows)
        new = np.ones(n, dtype=bool)
        new[1:] = flow[1:] != flow[:-1]
        start = np.flatnonzero(new)
        length = np.diff(np.append(start, n))
        seq_of = np.cumsum(new) - 1
        pos = np.arange(n) - start[seq_of]  # recount: robust to flows cut by the input
        last = np.zeros(n, dtype=np.int32)
        last[start + length - 1] = 1

        if flow_app is not None:
            app_of_flow = flow_app.reindex(flow[start]).to_numpy(dtype=object)
            missing = pd.isna(app_of_flow)
            app_of_flow[missing] = rows["app"].to_numpy(dtype=object)[start][missing] if cond == "app" else OTHER_APP
        else:
            app_of_flow = rows["app"].astype(str).to_numpy(dtype=object)[start]
        app_of_flow = np.array([str(a) for a in app_of_flow], dtype=object)
        sclass = size_class(length)
        flags_s = rows["flag_combo"].astype(str).to_numpy(dtype=object)

        if vocab is None:
            if kind == "tcp":
                counts = pd.Series(flags_s).value_counts()
                keep = [f for f, c in counts.items() if c >= self.min_flag_count and f != NOT_TCP][: self.max_flags]
                if not keep:
                    raise NecstError("no TCP flag combination seen often enough to learn from")
                flags, flag_other = keep, keep[0]  # rarer combinations are learned as the commonest
            else:
                flags, flag_other = [NOT_TCP], NOT_TCP
            acounts = pd.Series(app_of_flow).value_counts()
            apps = sorted(a for a, c in acounts.items() if c >= self.min_app_count and a != OTHER_APP) + [OTHER_APP]
            vocab = _Vocab(flags, flag_other, apps, packet_model.n_codes(kind), [], [], [], cond)
            app_id = vocab.app_ids(app_of_flow).astype(np.int64)
            stride = int(length.max()) + 1
            pair, cnt = np.unique(app_id * stride + length, return_counts=True)
            vocab.cond_app = (pair // stride).astype(np.int32)
            vocab.cond_packets = (pair % stride).astype(np.int64)
            vocab.cond_count = cnt.astype(np.int64)

        fidx = {f: i for i, f in enumerate(vocab.flags)}
        flag = pd.Index(vocab.flags, dtype=object).get_indexer(flags_s).astype(np.int32)
        flag[flag < 0] = fidx[vocab.flag_other]
        code = np.asarray(packet_model.encode(rows, kind), dtype=np.int32)
        if len(code) != n or (n and (code.min() < 0 or code.max() >= vocab.n_codes)):
            raise NecstError(f"packet model's encode gave codes outside 0-{vocab.n_codes - 1} for {kind}")
        gap = _gap_bins(rows["gap_s"].to_numpy(np.float64), self.gap_edges_)
        gap[pos == 0] = 0
        tok = {
            "dir": rows["direction"].to_numpy().astype(np.int32), "flag": flag, "code": code,
            "gap": gap, "last": last, "pos": pos, "seq_start": start, "seq_len": length,
            "rem": length[seq_of] - 1 - pos,
            "app": vocab.app_ids(app_of_flow)[seq_of], "size": sclass[seq_of].astype(np.int32),
            "seq": seq_of, "payload": rows["payload_len"].fillna(0).to_numpy(np.int64),
            "hdr": rows["hdr_len"].fillna(0).to_numpy(np.int64),
        }
        return tok, vocab

    def _windows(self, tok: dict, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start row, length) of every training window of the given flows."""
        s, L = tok["seq_start"][seqs], tok["seq_len"][seqs]
        nwin = -(-L // self.window)
        w_flow = np.repeat(np.arange(len(s)), nwin)
        k = np.arange(nwin.sum()) - np.repeat(np.cumsum(nwin) - nwin, nwin)
        starts = s[w_flow] + k * self.window
        lens = np.minimum(L[w_flow] - k * self.window, self.window)
        return starts, lens

    def _batch(self, tok: dict, vocab: _Vocab, starts: np.ndarray, lens: np.ndarray) -> dict:
        T = int(lens.max())
        idx = starts[:, None] + np.arange(T)[None, :]
        mask = np.arange(T)[None, :] < lens[:, None]
        idx = np.where(mask, idx, starts[:, None])
        bos = {"dir": 2, "flag": len(vocab.flags), "code": vocab.n_codes, "gap": self.n_gap_bins}
        first = tok["pos"][idx] == 0
        prev = np.maximum(idx - 1, 0)
        b = {"mask": mask.astype(np.float32)}
        for name in ("dir", "flag", "code", "gap"):
            b[f"cur_{name}"] = tok[name][idx]
            b[f"prev_{name}"] = np.where(first, bos[name], tok[name][prev]).astype(np.int32)
        b["last"] = tok["last"][idx].astype(np.float32)
        b["app"], b["size"] = tok["app"][idx], tok["size"][idx]
        b["pos"] = _pos_bucket(tok["pos"][idx])
        b["rem"] = _pos_bucket(tok["rem"][idx], self.rem_exact)
        return b

    # -- fitting --------------------------------------------------------------------------

    def fit(self, dataset, packet_model) -> "FlowModel":
        """Learn one LSTM per kind present in ``dataset`` (a Dataset, a folder, or a PacketTable)."""
        import keras
        import tensorflow as tf

        t0 = time.perf_counter()
        if self.rem_exact < 16 or self.rem_exact & (self.rem_exact - 1):
            raise NecstError(f"rem_exact must be a power of two from 16, not {self.rem_exact}")
        pf, flows = self._features(dataset)
        if len(pf) == 0:
            raise NecstError("cannot fit a flow model on a dataset without packets")
        flow_app = None if flows is None else pd.Series(flows["app"].astype(object).to_numpy(),
                                                        index=flows["flow_id"].to_numpy())
        flow_proto = self._flow_protos(pf, flows)
        later = pf["flow_pos"].to_numpy() > 0
        self.gap_edges_ = self._gap_edges(pf["gap_s"].to_numpy(np.float64)[later])
        keras.utils.set_random_seed(self.seed)
        tf.config.experimental.enable_op_determinism()
        self.vocab_, self.models_, self.arrays_, self.history_, self.lengths_ = {}, {}, {}, {}, {}
        self.arch_ = self._arch()
        self.__dict__.pop("_nets", None)
        self.__dict__.pop("_pools", None)
        kinds = np.asarray(pf["kind"].astype(str))
        for ki, kind in enumerate(KINDS):
            rows = pf[kinds == kind]
            if len(rows) == 0:
                continue
            if kind == "noflow" and flow_proto is not None:
                tok, vocab = self._tokens(rows, flow_proto, kind, packet_model, None, cond="proto")
            else:
                tok, vocab = self._tokens(rows, flow_app, kind, packet_model, None)
            self.vocab_[kind] = vocab
            if self.exact_lengths:
                self.lengths_[kind] = ExactLengths.fit(
                    tok["code"], tok["app"], tok["dir"] * (len(vocab.flags) + 1) + tok["flag"], tok["seq"],
                    tok["hdr"], tok["payload"], len(vocab.apps))
            keras.utils.set_random_seed(self.seed + ki)
            model = self._build(vocab)
            feed = float(self.self_feed) if kind in self.self_feed_kinds else 0.0
            self.history_[kind] = self._train(model, tok, vocab, self.seed + ki, feed)
            self.models_[kind] = model
            self.arrays_[kind] = keras_arrays(model)
            if self.verbose:
                h = self.history_[kind]
                print(f"flow model {kind}: {len(rows)} packets, {len(tok['seq_start'])} flows, "
                      f"{len(h['loss'])} epochs, loss {h['loss'][-1]:.3f}, val {h['val_loss'][-1]:.3f}, "
                      f"{h['seconds']:.0f} s", flush=True)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _arch(self) -> dict:
        """The network's inputs per part (lstm_numpy.ARCH_V1, or V2 with ``prev_in_heads``)."""
        return ARCH_V2 if self.prev_in_heads else ARCH_V1

    def _build(self, vocab: _Vocab):
        import keras

        L = keras.layers
        F, C, G, U = len(vocab.flags), vocab.n_codes, self.n_gap_bins, self.units
        inp = {n: keras.Input((None,), dtype="int32", name=n) for n in INPUT_NAMES}
        e_dir = L.Embedding(3, 4, name="e_dir")
        e_flag = L.Embedding(F + 1, 8, name="e_flag")
        e_code = L.Embedding(C + 1, 16, name="e_code")
        e_gap = L.Embedding(G + 1, 8, name="e_gap")
        cond = [L.Embedding(len(vocab.apps), 4, name="e_app")(inp["app"]),
                L.Embedding(len(SIZE_EDGES), 8, name="e_size")(inp["size"]),
                L.Embedding(N_POS, 8, name="e_pos")(inp["pos"]),
                L.Embedding(n_buckets(self.rem_exact), 8, name="e_rem")(inp["rem"])]
        emb = {"dir": e_dir, "flag": e_flag, "code": e_code, "gap": e_gap}
        arch = self._arch()
        parts = dict(zip(("app", "size", "pos", "rem"), cond))
        for tname, layer in emb.items():
            parts[f"prev_{tname}"] = layer(inp[f"prev_{tname}"])
            parts[f"cur_{tname}"] = layer(inp[f"cur_{tname}"])
        x = L.Concatenate(name="step_in")([parts[p] for p in arch["step"]])
        parts["h"] = L.LSTM(U, return_sequences=True, name="lstm")(x)
        n_out = {"dir": 2, "flag": F, "code": C, "gap": G, "last": 1}
        out = {}
        for name, names in arch["heads"].items():
            z = L.Concatenate(name=f"{name}_in")([parts[p] for p in names])
            z = L.Dense(self.head_units, activation="relu", name=f"{name}_hidden")(z)
            out[name] = L.Dense(n_out[name], name=name)(z)
        return keras.Model(inp, out, name="necst_flow_lstm")

    def _train(self, model, tok: dict, vocab: _Vocab, seed: int, self_feed: float = 0.0) -> dict:
        import keras
        import tensorflow as tf

        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        n_flows = len(tok["seq_start"])
        perm = rng.permutation(n_flows)
        n_val = int(round(n_flows * self.val_fraction)) if n_flows >= 20 else 0
        val_w = self._windows(tok, np.sort(perm[:n_val])) if n_val else None
        tr_s, tr_l = self._windows(tok, np.sort(perm[n_val:]))
        bucket = np.ceil(np.log2(np.maximum(tr_l, 1))).astype(int)
        per_epoch = int(sum(-(-np.sum(bucket == k) // self.batch_size) for k in np.unique(bucket)))
        # cosine decay over the planned epochs: large steps early, fine ones at the end
        lr = keras.optimizers.schedules.CosineDecay(self.learning_rate, max(per_epoch * self.epochs, 1), alpha=0.05)
        opt = keras.optimizers.Adam(lr, clipnorm=1.0)
        feeds = INPUT_NAMES

        def losses(b, training):
            out = model({k: b[k] for k in feeds}, training=training)
            m = b["mask"]
            total = 0.0
            for name in ("dir", "flag", "code", "gap"):
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(b[f"cur_{name}"], out[name])
                total += tf.reduce_sum(ce * m)
            bce = tf.nn.sigmoid_cross_entropy_with_logits(b["last"], out["last"][..., 0])
            total += tf.reduce_sum(bce * m)
            return total / tf.maximum(tf.reduce_sum(m), 1.0)

        spec = [{**{k: tf.TensorSpec([None, None], tf.int32) for k in INPUT_NAMES},
                 "mask": tf.TensorSpec([None, None], tf.float32), "last": tf.TensorSpec([None, None], tf.float32)}]

        @tf.function(input_signature=spec + [tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int32)],
                     autograph=False)
        def train_step(b, share, seed):
            if self_feed > 0:
                b = _own_draws(model, b, share, seed, self.self_feed_tokens)
            with tf.GradientTape() as tape:
                loss = losses(b, True)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        @tf.function(input_signature=spec, autograph=False)
        def eval_step(b):
            return losses(b, False) * tf.reduce_sum(b["mask"])

        def batches(starts, lens, shuffle):
            # windows of similar length batch together, so padding stays small
            bucket = np.ceil(np.log2(np.maximum(lens, 1))).astype(int)
            out = []
            for k in np.unique(bucket):
                sel = np.flatnonzero(bucket == k)
                if shuffle:
                    sel = rng.permutation(sel)
                out += [sel[i:i + self.batch_size] for i in range(0, len(sel), self.batch_size)]
            order = rng.permutation(len(out)) if shuffle else range(len(out))
            for j in order:
                b = self._batch(tok, vocab, starts[out[j]], lens[out[j]])
                yield {k: tf.constant(v) for k, v in b.items()}

        hist = {"loss": [], "val_loss": [], "epoch_seconds": []}
        best, best_w, wait = np.inf, None, 0
        mix_rng = np.random.default_rng([seed, 5])
        for epoch in range(self.epochs):
            tot, cnt = 0.0, 0
            # scheduled sampling: the share of fed-back own draws rises over the first epochs
            share = tf.constant(self_feed * min(1.0, (epoch + 1) / SELF_FEED_RAMP), tf.float32)
            for b in batches(tr_s, tr_l, True):
                n = float(b["mask"].numpy().sum())
                mix_seed = tf.constant(mix_rng.integers(0, 2**31 - 1, 2) if self_feed > 0 else [0, 0], tf.int32)
                tot += float(train_step(b, share, mix_seed)) * n
                cnt += n
            hist["loss"].append(tot / max(cnt, 1))
            if val_w is not None:
                vt, vc = 0.0, 0.0
                for b in batches(*val_w, False):
                    vt += float(eval_step(b))
                    vc += float(b["mask"].numpy().sum())
                v = vt / max(vc, 1)
            else:
                v = hist["loss"][-1]
            hist["val_loss"].append(v)
            hist["epoch_seconds"].append(time.perf_counter() - t0 - sum(hist["epoch_seconds"]))
            if v < best - 1e-4:
                best, best_w, wait = v, [w.numpy().copy() for w in model.weights], 0
            else:
                wait += 1
                if wait >= self.patience:
                    break
        if best_w is not None:
            for w, value in zip(model.weights, best_w):
                w.assign(value)
        hist["seconds"] = time.perf_counter() - t0
        hist["windows"] = int(len(tr_s))
        return hist

    # -- sampling -------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "arrays_"):
            raise NecstError("flow model is not fitted: call fit(dataset, packet_model) or load a bundle")

    def sample_requests(self, n: int | dict, seed: int = 0) -> pd.DataFrame:
        """Flow requests drawn from the training flows' (kind, app, packets) mix.

        ``n``: a total (split over kinds as in training) or ``{kind: count}``. Systematic
        sampling (one seeded offset, evenly spaced draws over the cumulative mix, then shuffled):
        the requests hold the mix in its proportions, without the multinomial noise of
        independent draws, which for a few hundred flows is as large as the train-vs-held-out
        distance the flow model is measured against.
        """
        self._check_fitted()
        rng = np.random.default_rng(seed)
        if not isinstance(n, dict):
            tot = {k: int(v.cond_count.sum()) for k, v in self.vocab_.items()}
            share = np.array(list(tot.values()), dtype=float)
            counts = np.bincount(_systematic(share, int(n), rng), minlength=len(share))
            n = dict(zip(tot, counts.tolist()))
        parts = []
        for kind, k in n.items():
            if kind not in self.vocab_:
                raise NecstError(f"flow model has no {kind!r} flows")
            v = self.vocab_[kind]
            pick = rng.permutation(_systematic(v.cond_count.astype(float), int(k), rng))
            label = np.array(v.apps, dtype=object)[v.cond_app[pick]]
            by_proto = v.cond == "proto"
            parts.append(pd.DataFrame({"kind": kind, "app": NOFLOW_APP if by_proto else label,
                                       "proto": label if by_proto else None, "packets": v.cond_packets[pick]}))
        out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["kind", "app", "proto", "packets"])
        out["size_class"] = size_class(out["packets"].to_numpy(np.int64))
        return out

    def sample(self, requests: pd.DataFrame, packet_model, seed: int = 0) -> pd.DataFrame:
        """One row per generated packet of each requested flow.

        ``requests``: columns ``kind``, ``app``, and ``packets`` (the flow's packet count, which
        conditions the model; it learned to place the teardown before the end) or ``size_class``
        (a count is then drawn from the training flows of that class); optional ``max_packets``
        cuts a flow short; optional for noflow flows: ``proto`` (a ``noflow_proto`` label, as
        ``sample_requests`` gives) or ``craft_kind`` (icmp, arp), else the protocol is drawn from
        the training mix at the flow's count. A flow has exactly its count (``end_at_count``, the default: the count
        is what the aggregate level planned, and the model knows the packets remaining at each
        step, so its end-of-flow head only echoes it); with ``end_at_count=False`` it also
        stops where the end-of-flow head says so. Columns out: ``flow``
        (row number in ``requests``), ``pos``, ``kind``, ``app``, ``direction``, ``flag_combo``,
        ``tcp_flags`` (nullable UInt16, null for non-TCP), ``code``, ``gap_s`` (0 for the first
        packet), ``time_s`` (since the flow's first packet), then the packet model's fields of
        the code that are not already there (``wire_len``, ``hdr_len``, ``payload_len``, ...).
        Text columns (``kind``, ``app``, ``flag_combo``, the packet model's text fields) are
        pandas categoricals: the same values, without building a string per packet.
        """
        self._check_fitted()
        req = self._requests(requests)
        parts = []
        for ki, kind in enumerate(KINDS):
            sel = np.flatnonzero(req["kind"].to_numpy() == kind)
            if len(sel) == 0:
                continue
            if kind not in self.vocab_:
                raise NecstError(f"flow model was trained without {kind!r} flows; cannot sample them")
            parts.append(self._sample_kind(kind, ki, req.iloc[sel], sel, packet_model, seed))
        cols = ["flow", "pos", "kind", "app", "direction", "flag_combo", "tcp_flags", "code", "gap_s", "time_s"]
        if not parts:
            return pd.DataFrame(columns=cols)
        return _assemble(parts, len(req))

    def _requests(self, requests: pd.DataFrame) -> pd.DataFrame:
        if not isinstance(requests, pd.DataFrame):
            raise NecstError("flow requests must be a pandas DataFrame")
        if "kind" not in requests.columns:
            raise NecstError("flow requests lack the column 'kind'")
        req = pd.DataFrame({"kind": requests["kind"].astype(str).to_numpy()})
        bad = sorted(set(pd.unique(req["kind"])) - set(KINDS))
        if bad:
            raise NecstError(f"unknown flow kind(s) {bad}; expected one of {list(KINDS)}")
        req["app"] = requests["app"].astype(str).to_numpy() if "app" in requests.columns else OTHER_APP
        if "packets" in requests.columns:
            if requests["packets"].isna().any():
                raise NecstError("flow requests have missing packet counts")
            pk = requests["packets"].to_numpy(np.int64)
            if len(pk) and pk.min() < 1:
                raise NecstError("flow requests ask for fewer than 1 packet")
            req["packets"], req["size_class"] = pk, size_class(pk)
        elif "size_class" in requests.columns:
            sc = requests["size_class"].to_numpy(np.int64)
            if len(sc) and (sc.min() < 0 or sc.max() >= len(SIZE_EDGES)):
                raise NecstError(f"size_class must lie in 0-{len(SIZE_EDGES) - 1}")
            req["packets"], req["size_class"] = 0, sc  # 0: drawn per kind from the training flows
        else:
            raise NecstError("flow requests need a 'packets' or a 'size_class' column")
        cap = np.full(len(req), np.iinfo(np.int64).max)
        if "max_packets" in requests.columns:
            m = pd.to_numeric(requests["max_packets"], errors="coerce").to_numpy(np.float64)
            cap = np.where(np.isnan(m), cap, np.maximum(np.nan_to_num(m, nan=1.0), 1).astype(np.int64))
        req["max_packets"] = cap
        for col in ("proto", "craft_kind"):  # what a noflow flow is (see _Vocab.proto_ids)
            if col in requests.columns:
                req[col] = requests[col].to_numpy(dtype=object)
        return req

    def _net(self, kind: str) -> StepNet:
        nets = self.__dict__.setdefault("_nets", {})
        if kind not in nets:
            nets[kind] = StepNet(self.arrays_[kind], self.arch_, self.units)
        return nets[kind]

    def _walker(self, kind: str) -> Walker:
        net = self._net(kind)
        want_last = not self.end_at_count
        walkers = net.__dict__.setdefault("_walkers", {})  # with the net: refitting drops both
        if want_last not in walkers:
            walkers[want_last] = Walker(net, want_last)
        return walkers[want_last]

    def _tokens_sampled(self, kind, ki, app, size, target, cap, seed) -> tuple[np.ndarray, ...]:
        """The autoregressive walk of all flows of one kind (``lstm_numpy.Walker``).

        Returns (local flow, position, tokens 4 x packets [dir, flag, code, gap]), flow by flow.
        All active flows advance together, one batched step per packet index; the state resets
        at every multiple of ``window``, as the training windows did.
        """
        v = self.vocab_[kind]
        rng = np.random.default_rng([seed, ki, 1])
        rem_lut = _pos_bucket(np.arange(int(target.max()) + 1), self.rem_exact)
        pos_lut = _pos_bucket(np.arange(int(cap.max())))
        bos = {"dir": 2, "flag": len(v.flags), "code": v.n_codes, "gap": self.n_gap_bins}
        length, tok = self._walker(kind).walk(app, size, target, cap, self.window, rng, pos_lut, rem_lut, bos)
        local = np.repeat(np.arange(len(length)), length)
        pos = np.arange(len(local)) - np.repeat(np.cumsum(length) - length, length)
        return local, pos, tok

    def _sample_kind(self, kind, ki, req, flow_ids, packet_model, seed) -> dict:
        """One kind's packets, flow by flow: column -> numpy array, or ``_Labels`` for text columns."""
        v = self.vocab_[kind]
        size = req["size_class"].to_numpy().astype(np.int32)
        target = req["packets"].to_numpy(np.int64).copy()
        if (target == 0).any():
            todo = target == 0
            target[todo] = v.packets_for(size[todo], np.random.default_rng([seed, ki, 7]))
        if v.cond == "proto":
            app = v.proto_ids(req, target, np.random.default_rng([seed, ki, 8]))
        else:
            app = v.app_ids(req["app"].to_numpy())
        cap = np.minimum(target, req["max_packets"].to_numpy())
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):  # small products: threads cost more than they give
            local, pos, tok = self._tokens_sampled(kind, ki, app, size, target, cap, seed)
        rng = np.random.default_rng([seed, ki])
        gap = self._gap_values(tok[3], rng)
        gap[pos == 0] = 0.0
        flow_start = np.flatnonzero(pos == 0)
        csum = np.cumsum(gap)
        time_s = csum - np.repeat(csum[flow_start] - gap[flow_start], np.diff(np.append(flow_start, len(pos))))
        if kind == "tcp":
            lut = np.array([flag_bits(f) for f in v.flags], dtype=np.uint16)
            bits = pd.arrays.IntegerArray(lut[tok[1]], np.zeros(len(pos), bool))
        else:
            bits = pd.arrays.IntegerArray(np.zeros(len(pos), np.uint16), np.ones(len(pos), bool))
        app_codes, app_labels = pd.factorize(req["app"].to_numpy(dtype=object))
        out = {
            "flow": flow_ids[local], "pos": pos, "kind": _Labels(np.zeros(len(pos), np.int32), [kind]),
            "app": _Labels(app_codes[local], list(app_labels)), "direction": tok[0].astype(np.uint8),
            "flag_combo": _Labels(tok[1], list(v.flags)), "tcp_flags": bits, "code": tok[2].astype(np.int64),
            "gap_s": gap, "time_s": time_s,
        }
        fields = self._packet_fields(kind, ki, out["code"], packet_model, seed)
        exact = getattr(self, "lengths_", {}).get(kind)
        if exact is not None and "payload_len" in fields and "hdr_len" in fields:
            step = tok[0].astype(np.int64) * (len(v.flags) + 1) + tok[1]
            fields["hdr_len"], fields["payload_len"] = exact.draw(
                out["code"], app[local], step, local, fields["hdr_len"], fields["payload_len"],
                np.random.default_rng([seed, ki, 3]))
            fields["wire_len"] = fields["hdr_len"] + fields["payload_len"]
        for col, values in fields.items():
            if col not in out:
                out[col] = values
        return out

    def _packet_fields(self, kind, ki, codes, packet_model, seed) -> dict:
        """The packet model's fields for each code (text columns as ``_Labels``).

        With ``code_pool`` = P > 0 the packet model decodes P draws per code once (seeded, kept
        with this model) and each packet takes one of its code's draws at random: the same
        distribution per code, at a fraction of the cost of decoding one draw per packet (which
        ``code_pool=0`` does).
        """
        P = int(self.code_pool)
        if P <= 0:
            f = packet_model.sample_codes(codes, kind, seed=int(seed) * 3 + ki)
            return {c: _Labels.of(f[c]) for c in f.columns}
        pools = self.__dict__.setdefault("_pools", {})
        got = pools.get(kind)
        if got is None or got[0] is not packet_model:
            n_codes = self.vocab_[kind].n_codes
            f = packet_model.sample_codes(np.repeat(np.arange(n_codes), P), kind, seed=1_000_003 + ki)
            got = pools[kind] = (packet_model, {c: _Labels.of(f[c]) for c in f.columns})
        pick = codes * P + np.random.default_rng([seed, ki, 2]).integers(0, P, len(codes))
        return {c: a[pick] for c, a in got[1].items()}

    def _gap_values(self, bins: np.ndarray, rng) -> np.ndarray:
        """Log-uniform within each bin; bin 0 (below the floor) is 0."""
        e = np.log(self.gap_edges_)
        b = np.clip(bins, 1, len(e) - 1)
        lo, hi = e[b - 1], e[b]
        g = np.exp(lo + rng.random(len(bins)) * (hi - lo))
        return np.where(bins == 0, 0.0, g)

    # -- persistence ----------------------------------------------------------------------

    def write_to(self, writer) -> None:
        """Add the flow level to a bundle being written (``flow_*`` files, config in the manifest).

        The networks are stored as arrays (``<kind>__<layer>`` in ``flow_arrays.npz``) with their
        architecture in ``flow_config.json``: sampling needs neither Keras nor TensorFlow.
        """
        self._check_fitted()
        writer.config["flow"] = self.get_config()
        arrays = {"gap_edges": self.gap_edges_}
        for kind, v in self.vocab_.items():
            arrays.update(v.arrays(kind))
            arrays.update({f"{kind}__{name}": a for name, a in self.arrays_[kind].items()})
            if kind in getattr(self, "lengths_", {}):
                arrays.update(self.lengths_[kind].to_arrays(f"exact_{kind}_"))
        writer.add_arrays("flow_arrays.npz", **arrays)
        writer.add_json("flow_config.json", {
            "format": FORMAT_VERSION, "arch": self.arch_,
            "config": self.get_config(), "kinds": {k: v.to_json() for k, v in self.vocab_.items()},
            "size_edges": list(SIZE_EDGES), "n_pos": N_POS,
            "history": {k: {kk: vv for kk, vv in h.items()} for k, h in self.history_.items()},
            "fit_seconds": getattr(self, "fit_seconds_", None)})

    @classmethod
    def read_from(cls, bundle) -> "FlowModel":
        """The flow level of a bundle. Bundles of format 1 (networks as ``.keras`` files, before
        numpy sampling) still load: their weights are read through Keras, which starts TensorFlow."""
        meta = bundle.json("flow_config.json")
        if list(meta.get("size_edges", [])) != list(SIZE_EDGES) or meta.get("n_pos") != N_POS:
            raise BundleError("flow model in bundle was made with other size classes; retrain it", bundle.path)
        fmt = meta.get("format", 1)
        if fmt not in (1, FORMAT_VERSION):
            raise BundleError(f"flow level format {fmt!r} is not {FORMAT_VERSION}; retrain with this necst",
                              bundle.path)
        try:
            config = {k: v for k, v in meta["config"].items() if k in cls().get_config()}
            config.setdefault("rem_exact", 16)  # bundles from before it was a setting
            config.setdefault("exact_lengths", False)
            config.setdefault("self_feed", 0.0)  # a training setting: bundles from before it trained without
            config.setdefault("head_units", 64)  # likewise (the heads' hidden width was fixed)
            model = cls(**config)
            arrays = bundle.arrays("flow_arrays.npz")
            model.gap_edges_ = np.asarray(arrays["gap_edges"], dtype=np.float64)
            model.arch_ = meta.get("arch", ARCH_V1)
            model.vocab_, model.arrays_, model.lengths_ = {}, {}, {}
            for kind, d in meta["kinds"].items():
                model.vocab_[kind] = _Vocab.from_saved(d, arrays, kind)
                if fmt == 1:
                    model.arrays_[kind] = _keras_file_arrays(bundle.file(f"flow_{kind}.keras"))
                else:
                    pre = f"{kind}__"
                    model.arrays_[kind] = {k[len(pre):]: np.asarray(a, dtype=np.float32)
                                           for k, a in arrays.items() if k.startswith(pre)}
                model._net(kind)  # checks that the weights match the architecture
                if f"exact_{kind}_shape" in arrays:
                    model.lengths_[kind] = ExactLengths.from_arrays(arrays, f"exact_{kind}_")
            model.history_ = meta.get("history", {})
            model.fit_seconds_ = meta.get("fit_seconds")
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"flow level is incomplete or malformed ({e.__class__.__name__}: {e})",
                              bundle.path) from None
        return model

    def save(self, out: str | Path, force: bool = False) -> Path:
        """A generator bundle holding the flow level alone."""
        from necst.model.bundle import save_generator

        return save_generator(out, flow=self, force=force)

    @classmethod
    def load(cls, path: str | Path) -> "FlowModel":
        """The flow level of any generator bundle that holds one (every file and the manifest verified)."""
        from necst.bundle import load
        from necst.model.bundle import verify_seal

        bundle = load(path, kind="generator")
        verify_seal(bundle)
        if "flow_config.json" not in bundle.files:
            raise NecstError("bundle holds no flow level", path)
        return cls.read_from(bundle)


class _Labels:
    """A text column as integer codes into its labels (-1: missing): cheap to gather and merge."""

    def __init__(self, codes: np.ndarray, labels: list):
        self.codes, self.labels = np.asarray(codes, np.int32), list(labels)

    @classmethod
    def of(cls, col: pd.Series):
        """Numeric columns as numpy arrays, anything else as labels."""
        if pd.api.types.is_numeric_dtype(col.dtype) and not isinstance(col.dtype, pd.CategoricalDtype):
            return col.to_numpy()
        codes, labels = pd.factorize(col.to_numpy(dtype=object))
        return cls(codes, list(labels))

    def __getitem__(self, rows) -> "_Labels":
        return _Labels(self.codes[rows], self.labels)

    def __len__(self) -> int:
        return len(self.codes)


def _assemble(parts: list[dict], n_flows: int) -> pd.DataFrame:
    """The kinds' packets in one table ordered by (flow, position); text columns categorical."""
    flow = np.concatenate([p["flow"] for p in parts])
    pos = np.concatenate([p["pos"] for p in parts])
    length = np.bincount(flow, minlength=n_flows)
    start = np.zeros(n_flows, np.int64)
    np.cumsum(length[:-1], out=start[1:])
    dest = start[flow] + pos  # each packet's row: flows in request order, packets in order
    n = len(dest)
    where = np.cumsum([0] + [len(p["flow"]) for p in parts])
    cols = list(dict.fromkeys(c for p in parts for c in p))
    out = {}
    for c in cols:
        vals = [p.get(c) for p in parts]
        if any(isinstance(v, _Labels) for v in vals):  # text in one kind: text in all
            vals = [v if v is None or isinstance(v, _Labels) else _Labels.of(pd.Series(v).astype(str)) for v in vals]
            labels = list(dict.fromkeys(x for v in vals if v is not None for x in v.labels))
            codes = np.full(n, -1, np.int32)
            for v, a, b in zip(vals, where[:-1], where[1:]):
                if v is not None:
                    lut = pd.Index(labels, dtype=object).get_indexer(pd.Index(v.labels, dtype=object))
                    codes[dest[a:b]] = np.append(lut, -1)[v.codes]  # -1 (missing) stays
            out[c] = pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(labels))
        elif all(isinstance(v, pd.arrays.IntegerArray) for v in vals):
            data, mask = np.zeros(n, vals[0].dtype.numpy_dtype), np.ones(n, bool)
            for v, a, b in zip(vals, where[:-1], where[1:]):
                data[dest[a:b]], mask[dest[a:b]] = v._data, v._mask
            out[c] = pd.arrays.IntegerArray(data, mask)
        else:  # numeric; a column some kinds lack is missing there
            full = all(v is not None for v in vals)
            dtype = np.result_type(*[v for v in vals if v is not None]) if full else np.float64
            arr = np.full(n, np.nan if not full else 0, dtype)
            for v, a, b in zip(vals, where[:-1], where[1:]):
                if v is not None:
                    arr[dest[a:b]] = v
            out[c] = arr
    return pd.DataFrame(out)


def _own_draws(model, b: dict, share, seed, tokens=("dir", "flag", "code", "gap")) -> dict:
    """Scheduled sampling (``self_feed``): the batch ``b`` with the previous packet's tokens
    replaced, at a random ``share`` of steps after each window's first, by the network's own
    draws for that packet (one teacher-forced pass, no gradient), so that training sees the
    inputs sampling feeds it, mistakes included. Each head's draw is conditioned on the true
    earlier parts of its step. ``seed``: a stateless TF seed (2 ints); ``tokens``: which of the
    previous packet's tokens are replaced (the others stay true)."""
    import tensorflow as tf

    out = model({k: b[k] for k in INPUT_NAMES}, training=False)
    shape = tf.shape(b["cur_dir"])
    take = tf.random.stateless_uniform(shape, seed=seed)[:, 1:] < share
    new = dict(b)
    for i, name in enumerate(("dir", "flag", "code", "gap")):
        if name not in tokens:
            continue
        logits = tf.reshape(out[name], [-1, tf.shape(out[name])[-1]])
        draw = tf.random.stateless_categorical(logits, 1, seed=seed + tf.constant([0, i + 1]), dtype=tf.int32)
        draw = tf.reshape(draw, shape)
        prev = b[f"prev_{name}"]
        new[f"prev_{name}"] = tf.concat([prev[:, :1], tf.where(take, draw[:, :-1], prev[:, 1:])], axis=1)
    return new


def _systematic(weights: np.ndarray, n: int, rng) -> np.ndarray:
    """``n`` indices with frequencies proportional to ``weights``: one uniform offset, even steps."""
    cum = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cum, (rng.random() + np.arange(n)) / n, side="right"), len(cum) - 1)


def _keras_file_arrays(path) -> dict:
    """Weights of a flow network saved as a ``.keras`` file (format-1 bundles)."""
    import keras

    return keras_arrays(keras.models.load_model(path, compile=False))


def flow_structure(packets: pd.DataFrame, flow_col: str = "flow", pos_col: str = "pos") -> dict:
    """Shares of TCP flows with each piece of structure, from per-packet flags and directions.

    ``opens``: the first three packets are SYN (initiator), SYN+ACK (responder), then an ACK
    without SYN from the initiator. ``closes``: a FIN or RST among the last four packets.
    ``syn_inside``: a SYN after the first packet that is not a retransmitted opening SYN/SYN+ACK
    (NeCSTGen's cross-flow windows put them there).
    """
    df = packets[[flow_col, pos_col, "flag_combo", "direction"]]
    order = np.lexsort((df[pos_col].to_numpy(), df[flow_col].to_numpy()))
    flow = df[flow_col].to_numpy()[order]
    uniq, inv = np.unique(df["flag_combo"].astype(str).to_numpy()[order], return_inverse=True)
    bits = np.array([flag_bits(f) or 0 for f in uniq], dtype=np.int64)[inv.reshape(-1)]
    d = df["direction"].to_numpy().astype(int)[order]
    n = len(flow)
    if n == 0:
        return {"flows": 0, "opens": np.nan, "closes": np.nan, "opens_and_closes": np.nan, "syn_inside": np.nan}
    new = np.ones(n, bool)
    new[1:] = flow[1:] != flow[:-1]
    start = np.flatnonzero(new)
    length = np.diff(np.append(start, n))
    k = len(start)

    def at(i, ok):
        idx = start + i
        valid = length > i
        res = np.zeros(k, bool)
        res[valid] = ok(idx[valid])
        return res

    syn, ack, fin, rst = 0x002, 0x010, 0x001, 0x004
    opens = (at(0, lambda j: (bits[j] == syn) & (d[j] == 0))
             & at(1, lambda j: (bits[j] == syn | ack) & (d[j] == 1))
             & at(2, lambda j: ((bits[j] & ack) > 0) & ((bits[j] & syn) == 0) & (d[j] == 0)))
    seq = np.cumsum(new) - 1
    rel_end = (start + length)[seq] - np.arange(n)  # 1 for the last packet
    tail = (rel_end <= 4) & ((bits & (fin | rst)) > 0)
    closes = np.bincount(seq[tail], minlength=k) > 0
    # SYN later in the flow, after the handshake has started moving data
    in_flow = np.arange(n) - start[seq]
    late_syn = (in_flow >= 3) & ((bits & syn) > 0)
    syn_inside = np.bincount(seq[late_syn], minlength=k) > 0
    return {"flows": int(k), "opens": float(opens.mean()), "closes": float(closes.mean()),
            "opens_and_closes": float((opens & closes).mean()), "syn_inside": float(syn_inside.mean())}
