"""Exact packet lengths per packet code, given the flow's previous packet, and their repetition.

IoT devices send the same messages again and again: a DNS query for the same name and its
answer, an MQTT keep-alive, a TLS record of one size. So the exact lengths of real flows recur,
and a flow's packets of one kind often share one length. The packet model's codes pin a payload
bin, and a length drawn inside the bin (``QuantileBins.draw``), with a header length drawn per
packet, is smooth: in generated captures 35 % of flows had a mean packet size that occurs
exactly among the held-out flows, against 76 % for the training flows, and that feature alone
told synthetic flows from held-out ones at AUC 0.75 (0.65 once sizes were rounded to 2 %).

A "length" here is the (header length, payload length) pair: TCP options and Ethernet padding
are part of a flow's exact sizes. Three tables, each of lengths its training packets carried at
least ``min_count`` times under one key, with their counts:

* ``marginal``: key (code, condition), the condition being the flow model's (application, or
  protocol for noflow); a key with fewer than ``min_key`` packets uses the code over all
  conditions;
* ``by_code``: key (code, condition, the previous packet's length), for the first ``markov``
  packets of a flow: an answer's length follows its question's;
* ``by_step``: key (direction and flags, condition, previous length), where ``by_code`` has
  no entry (the LSTM picked a code the previous length never led to in training).

A draw that falls on a key's rarer lengths (seen fewer than ``min_count`` times) keeps the
packet model's own draw. Later packets reuse the length of the flow's previous packet of the
same code with the key's ``repeat`` probability, set so that reuse plus chance agreement of
fresh draws gives the share of training packets whose length equals that previous one.
"""
from __future__ import annotations

import numpy as np

from necst.errors import NecstError

_PAYLOAD_BITS = 17  # payload lengths below 128 KiB; the header length takes the bits above
_HEADER_MAX = 1023  # "header" is everything before the payload: a whole ARP or ICMP frame (169 bytes seen)
_PREV_SPAN = (_HEADER_MAX + 1) << _PAYLOAD_BITS  # every (header, payload) value lies below this


def _value(hdr, payload) -> np.ndarray:
    return (np.clip(np.asarray(hdr, np.int64), 0, _HEADER_MAX) << _PAYLOAD_BITS) + np.clip(
        np.asarray(payload, np.int64), 0, (1 << _PAYLOAD_BITS) - 1)


def _split(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return value >> _PAYLOAD_BITS, value & ((1 << _PAYLOAD_BITS) - 1)


def _after(key: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """A key refined by the previous packet's length."""
    return key * _PREV_SPAN + np.clip(prev, 0, _PREV_SPAN - 1)


def _positions(flow: np.ndarray) -> np.ndarray:
    start = np.ones(len(flow), bool)
    start[1:] = flow[1:] != flow[:-1]
    first = np.flatnonzero(start)
    return np.arange(len(flow)) - first[np.cumsum(start) - 1]


class _Table:
    """Values by key: those seen at least ``min_count`` times under their key, with their
    counts; ``total`` per key counts every value, so a draw may land on the rest (-1)."""

    NAMES = ("key", "total", "entry_key", "entry_value", "entry_count")

    def __init__(self, key, total, entry_key, entry_value, entry_count):
        self.key = np.asarray(key, np.int64)
        self.total = np.asarray(total, np.float64)
        self.entry_key = np.asarray(entry_key, np.int64)
        self.entry_value = np.asarray(entry_value, np.int64)
        self.entry_count = np.asarray(entry_count, np.float64)
        if (np.any(np.diff(self.key) <= 0) or len(self.key) != len(self.total)
                or not len(self.entry_key) == len(self.entry_value) == len(self.entry_count)
                or np.any(np.diff(self.entry_key) < 0) or not np.isin(self.entry_key, self.key).all()):
            raise NecstError("exact-length table arrays do not agree")
        self._cum = np.concatenate([[0.0], np.cumsum(self.entry_count)])
        self._start = np.searchsorted(self.entry_key, self.key, side="left")
        self._stop = np.searchsorted(self.entry_key, self.key, side="right")

    @classmethod
    def fit(cls, keys: np.ndarray, values: np.ndarray, min_count: int) -> "_Table":
        pairs, counts = np.unique(np.stack([keys, values], axis=1).reshape(-1, 2), axis=0, return_counts=True)
        key, total = np.unique(keys, return_counts=True)
        keep = counts >= max(int(min_count), 1)
        return cls(key, total, pairs[keep, 0], pairs[keep, 1], counts[keep])

    def find(self, keys: np.ndarray, min_total: float = 1.0) -> np.ndarray:
        """Index of each key, -1 where absent or seen fewer than ``min_total`` times."""
        if len(self.key) == 0:
            return np.full(len(keys), -1)
        i = np.minimum(np.searchsorted(self.key, keys), len(self.key) - 1)
        return np.where((self.key[i] == keys) & (self.total[i] >= min_total), i, -1)

    def draw(self, idx: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A value per found key (``idx`` >= 0) at uniform ``u``; -1 on its rare values or when not found."""
        ok = idx >= 0
        i = np.where(ok, idx, 0)
        if len(self.key) == 0:
            return np.full(len(idx), -1)
        at = self._cum[self._start[i]] + u * self.total[i]
        e = np.searchsorted(self._cum, at, side="right") - 1
        hit = ok & (e < self._stop[i])
        return np.where(hit, self.entry_value[np.minimum(e, len(self.entry_value) - 1)], -1)

    def to_arrays(self, prefix: str) -> dict:
        return {f"{prefix}{name}": getattr(self, name) for name in self.NAMES}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "_Table":
        return cls(*(arrays[f"{prefix}{name}"] for name in cls.NAMES))


class ExactLengths:
    """The three tables and the reuse probabilities of one kind (see the module docstring)."""

    def __init__(self, n_cond: int, marginal: _Table, repeat, by_code: _Table, by_step: _Table,
                 min_key: int = 20, markov: int = 16):
        self.n_cond, self.min_key, self.markov = int(n_cond), int(min_key), int(markov)
        self.marginal, self.by_code, self.by_step = marginal, by_code, by_step
        self.repeat = np.asarray(repeat, np.float64)
        if len(self.repeat) != len(marginal.key):
            raise NecstError("exact-length reuse probabilities do not match their table")
        self._lut = self._dense_index()

    def _dense_index(self) -> np.ndarray:
        """Marginal key -> its row: the (code, condition) key where it has ``min_key`` packets,
        else the code's over all conditions, else -1; one array lookup per packet (searching
        the sorted keys cost 0.2 CPU-s per million packets)."""
        m, n = self.marginal, self.n_cond + 1
        size = int(m.key.max()) + 1 if len(m.key) else 0
        size = -(-size // n) * n
        own = np.full(size, -1, np.int64)
        ok = m.total >= self.min_key
        own[m.key[ok]] = np.flatnonzero(ok)
        table = own.reshape(-1, n)
        anyk = table[:, -1].copy()
        anyk[:] = -1
        is_any = (m.key % n) == self.n_cond
        anyk[m.key[is_any] // n] = np.flatnonzero(is_any)
        return np.where(table >= 0, table, anyk[:, None]).ravel()

    def _key(self, code, cond) -> np.ndarray:
        return code * (self.n_cond + 1) + cond

    @classmethod
    def fit(cls, code, cond, step, flow, hdr, payload, n_cond: int, min_count: int = 3, min_key: int = 20,
            markov: int = 16) -> "ExactLengths":
        """From the training packets of one kind in flow order (flow, then position); ``step``
        is each packet's direction and flags as one integer."""
        code, cond, step, flow = (np.asarray(a, np.int64) for a in (code, cond, step, flow))
        value = _value(hdr, payload)
        self = cls.__new__(cls)
        self.n_cond, self.min_key, self.markov = int(n_cond), int(min_key), int(markov)
        own, anyk = self._key(code, cond), self._key(code, n_cond)
        self.marginal = _Table.fit(np.concatenate([own, anyk]), np.concatenate([value, value]), min_count)
        pos = _positions(flow)
        t = np.flatnonzero((pos > 0) & (pos < markov))
        self.by_code = _Table.fit(_after(own[t], value[t - 1]), value[t], min_count)
        self.by_step = _Table.fit(_after(self._key(step[t], cond[t]), value[t - 1]), value[t], min_count)
        # reuse: each packet against the flow's previous packet of the same code
        order = np.lexsort((np.arange(len(code)), code, flow))
        follows = np.zeros(len(order), bool)
        follows[1:] = (flow[order][1:] == flow[order][:-1]) & (code[order][1:] == code[order][:-1])
        same = np.zeros(len(order), bool)
        same[1:] = follows[1:] & (value[order][1:] == value[order][:-1])
        m = self.marginal
        at = np.searchsorted(m.key, np.concatenate([own[order][follows], anyk[order][follows]]))
        n_pairs = np.bincount(at, minlength=len(m.key)).astype(np.float64)
        n_same = np.bincount(at, weights=np.tile(same[follows], 2).astype(np.float64), minlength=len(m.key))
        share = np.divide(n_same, n_pairs, out=np.zeros(len(m.key)), where=n_pairs > 0)
        chance = np.zeros(len(m.key))  # two fresh draws agree: the sum of the key's squared shares
        e = np.searchsorted(m.key, m.entry_key)
        np.add.at(chance, e, (m.entry_count / m.total[e]) ** 2)
        repeat = np.clip((share - chance) / np.maximum(1.0 - chance, 1e-9), 0.0, 1.0)
        of_any = np.searchsorted(m.key, (m.key // (n_cond + 1)) * (n_cond + 1) + n_cond)
        enough = n_pairs >= min_key  # too few pairs of its own: the code's figure over all conditions
        self.repeat = np.where(enough, repeat, np.where(enough[of_any], repeat[of_any], 0.0))
        self._lut = self._dense_index()
        return self

    def draw(self, code, cond, step, flow, hdr, payload, rng) -> tuple[np.ndarray, np.ndarray]:
        """(header length, payload length) per packet of one kind, in flow order; ``hdr`` and
        ``payload`` are the packet model's own draws, kept where no table has a length."""
        code, cond, step, flow = (np.asarray(a, np.int64) for a in (code, cond, step, flow))
        out = _value(hdr, payload)
        n = len(code)
        if n == 0:
            return _split(out)
        u = rng.random((3, n))
        own = self._key(code, cond)
        k = np.full(n, -1, np.int64)
        inside = (own >= 0) & (own < len(self._lut)) & (cond >= 0) & (cond <= self.n_cond)
        k[inside] = self._lut[own[inside]]
        v = self.marginal.draw(k, u[0])
        out = np.where(v >= 0, v, out)
        pos = _positions(flow)
        skey = self._key(step, cond)
        for p in range(1, self.markov):  # the first packets: given the previous packet's length
            at = np.flatnonzero(pos == p)
            if len(at) == 0:
                break
            prev = out[at - 1]
            v = self.by_code.draw(self.by_code.find(_after(own[at], prev)), u[1, at])
            miss = v < 0
            v[miss] = self.by_step.draw(self.by_step.find(_after(skey[at[miss]], prev[miss])), u[1, at[miss]])
            out[at] = np.where(v >= 0, v, out[at])
        # later packets: reuse the flow's previous packet of the same code, forward-filled per run
        order = np.argsort(flow * (int(code.max()) + 1) + code, kind="stable")  # (flow, code, position)
        follows = np.zeros(n, bool)
        follows[1:] = (flow[order][1:] == flow[order][:-1]) & (code[order][1:] == code[order][:-1])
        reuse = follows & (pos[order] >= self.markov) & (k[order] >= 0) & (u[2, order] < self.repeat[k[order]])
        src = np.maximum.accumulate(np.where(reuse, 0, np.arange(n)))
        out[order] = out[order][src]
        return _split(out)

    def to_arrays(self, prefix: str) -> dict:
        return {**self.marginal.to_arrays(f"{prefix}m_"), **self.by_code.to_arrays(f"{prefix}c_"),
                **self.by_step.to_arrays(f"{prefix}s_"), f"{prefix}repeat": self.repeat,
                f"{prefix}shape": np.array([self.n_cond, self.min_key, self.markov], np.int64)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "ExactLengths":
        n_cond, min_key, markov = (int(x) for x in arrays[f"{prefix}shape"])
        return cls(n_cond, _Table.from_arrays(arrays, f"{prefix}m_"), arrays[f"{prefix}repeat"],
                   _Table.from_arrays(arrays, f"{prefix}c_"), _Table.from_arrays(arrays, f"{prefix}s_"),
                   min_key, markov)
