"""From a trained generator to a capture file: aggregate plan -> flows -> packets -> frames.

The plan (one row per flow, in start order) comes from the AggregateModel; flows are expanded
into packets by the FlowModel (which asks the PacketModel for each packet's fields) a group of
chunks of flows at a time; each chunk is planned by :func:`necst.generate.craft.plan_packets`
(TCP state, addresses, ids). Flows overlap in time, so planned packets wait in a pending set
until no later chunk can produce an earlier packet (every packet of a flow starts at or after the
flow's start, and chunks follow start order): those before the next chunk's first start are laid
into frames and written. Memory is bounded by a few chunks plus the flows still open, whatever
the capture size.

Sampling and planning a group is most of the work; worker threads (``generate_threads``) do it
for the next groups while the caller's thread lays out and writes the current one (numpy's
products and ufuncs release the GIL, so two cores share it). The groups and each group's seed
follow from the plan alone, so the capture is byte-identical with any number of threads.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from necst.capture.writer import CaptureWriter
from necst.errors import NecstError
from necst.generate.craft import IDLE_S, Arena, PacketFields, build_frames, plan_packets

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "default_model"  # -> models/default
MAX_BATCH_PACKETS = 1 << 16


@dataclass
class GenerateResult:
    path: Path
    packets: int
    flows: int
    bytes: int
    seconds: float
    repairs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # seconds per stage (wall clock)
    cpu_timings: dict = field(default_factory=dict)  # CPU seconds per stage (of the threads that ran it)

    @property
    def packets_per_second(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else float("inf")


def load_generator(model_dir: str | Path | None = None):
    """The (packet, flow, aggregate) models of a generator bundle; the bundled default without a path."""
    path = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not path.exists():
        raise NecstError("no such model folder" if model_dir is not None else
                         "no --model given and no bundled default model", path)
    from necst.model.bundle import load_generator as _load

    return _load(path)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def craft_flow_table(plan: pd.DataFrame) -> pd.DataFrame:
    """The per-flow columns :func:`plan_packets` reads, from an aggregate plan."""
    cols = ["src_ip", "dst_ip", "src_mac", "dst_mac", "src_port", "dst_port", "ttl_src", "ttl_dst",
            "win_src", "win_dst", "app"]
    out = plan[cols].reset_index(drop=True).copy()
    out.insert(0, "kind", plan["craft_kind"].array)
    return out


def packet_table(plan: pd.DataFrame, flow_packets: pd.DataFrame, flow_offset: int = 0) -> pd.DataFrame:
    """Per-packet columns for :func:`plan_packets`: timestamps from each flow's start plus its gaps.

    ``flow_packets["flow"] - flow_offset`` is the row of ``plan`` a packet belongs to."""
    f0, p0 = flow_packets["flow"].to_numpy(np.int64), flow_packets["pos"].to_numpy(np.int64)
    in_order = len(f0) < 2 or bool(np.all((f0[1:] > f0[:-1]) | ((f0[1:] == f0[:-1]) & (p0[1:] >= p0[:-1]))))
    fp = flow_packets if in_order else flow_packets.sort_values(["flow", "pos"], kind="stable")
    flow = fp["flow"].to_numpy(np.int64) - flow_offset
    gap = np.nan_to_num(fp["gap_s"].to_numpy(float), nan=0.0, posinf=0.0)
    gap_ns = np.rint(np.maximum(gap, 0.0) * 1e9).astype(np.int64)
    first = np.ones(len(flow), bool)
    first[1:] = flow[1:] != flow[:-1]
    gap_ns[first] = 0  # a flow's first packet is at its start
    c = np.cumsum(gap_ns)
    starts = np.flatnonzero(first)
    base = np.repeat(c[starts], np.diff(np.append(starts, len(flow))))
    ts = plan["start_ns"].to_numpy(np.int64)[flow] + (c - base)
    out = pd.DataFrame({"flow": flow, "pos": fp["pos"].to_numpy(np.int64), "ts_ns": ts,
                        "direction": fp["direction"].to_numpy(np.int64),
                        "tcp_flags": fp["tcp_flags"].fillna(0).to_numpy(np.int64),
                        "payload_len": fp["payload_len"].fillna(0).to_numpy(np.int64)})
    if "hdr_len" in fp.columns:  # the packet model's header length: TCP options are kept
        out["hdr_len"] = fp["hdr_len"].fillna(-1).to_numpy(np.int64)
    return out


def generate_threads() -> int:
    """Worker threads of a Sampler: ``NECST_GENERATE_THREADS``, else one per CPU this process may
    use, at most 2; 0 on one CPU. The capture does not depend on it."""
    env = os.environ.get("NECST_GENERATE_THREADS")
    if env is not None:
        try:
            return max(int(env), 0)
        except ValueError:
            raise NecstError(f"NECST_GENERATE_THREADS must be an integer, not {env!r}") from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 2) if cpus > 1 else 0


class _Done:
    """A call made when its result is first asked for (no worker threads)."""

    def __init__(self, fn, args):
        self.fn, self.args, self.value, self.done = fn, args, None, False

    def result(self):
        if not self.done:
            self.value, self.done = self.fn(*self.args), True
        return self.value


class _Tasks:
    """Runs calls on ``workers`` threads (results in submission order are the caller's to take),
    or, with none, in the caller's thread when their result is asked for."""

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="necst-generate") if workers else None

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args) if self.pool is not None else _Done(fn, args)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:  # a generator closed early: drop what has not started
            self.pool.shutdown(wait=True, cancel_futures=True)


class Sampler:
    """Streams frames from the three models; ``batches`` yields FrameBatches in time order.

    ``flow_model.sample(requests, packet_model, seed)`` must return one row per packet with
    ``flow`` (row of requests), ``pos``, ``direction``, ``tcp_flags``, ``gap_s``, ``payload_len``
    (the interface in MODELS_CONTRACT.md).
    """

    def __init__(self, aggregate, flow_model, packet_model=None, *, payload: str = "zeros",
                 layout: str = "pcap", chunk_flows: int = 16384, flow_chunk_flows: int = 16384,
                 max_packets_per_flow: int = 10000, close_flows: bool = True, keep_addresses: bool | None = None,
                 attempts: bool = True, workers: int | None = None):
        self.aggregate = aggregate
        self.flow_model = flow_model
        self.packet_model = packet_model
        self.payload = payload
        self.layout = layout
        self.chunk_flows = chunk_flows
        # the flow model samples this many flows at once (whole chunks); more chunks per group walk
        # the longest flows' last packets (a few flows per step) once for several chunks, but one
        # chunk per group lets the worker threads share the groups evenly and crafting start early
        # (on 1M packets the two cost the same CPU within the noise of this machine)
        self.flow_chunk_flows = flow_chunk_flows
        self.max_packets_per_flow = max_packets_per_flow
        self.close_flows = close_flows
        self.attempts = attempts  # keep the model's failed TCP connection attempts (craft rule 0)
        # the idle timeout of the flow meter the model learned from: a mid-stream flow continues an
        # earlier connection only after a longer silence (craft's "Mid-stream flows")
        self.idle_s = float(getattr(aggregate, "idle_s_", IDLE_S))
        self.keep_addresses = keep_addresses
        self.repairs: dict[str, int] = {}
        self.flows = 0
        # threads that sample and plan groups of chunks ahead of crafting (0: all in the caller's)
        self.workers = generate_threads() if workers is None else max(int(workers), 0)
        # seconds per stage; "wait": the consumer waiting for the threads' next group
        self.timings = {"aggregate": 0.0, "flow_model": 0.0, "plan": 0.0, "frames": 0.0, "write": 0.0,
                        "wait": 0.0}
        self._lock = threading.Lock()
        self.cpu_timings = dict.fromkeys(self.timings, 0.0)
        self._arena = Arena()

    def _plans(self, n_flows, duration_s, n_packets, seed, start_ns, rate_scale, apps) -> Iterator[pd.DataFrame]:
        agg = self.aggregate
        ports: dict = {}  # ephemeral port counters shared by the plans of this capture
        if n_packets is None:
            yield agg.sample(n_flows=n_flows, duration_s=duration_s, seed=_seed(seed, 0), start_ns=start_ns,
                             rate_scale=rate_scale, apps=apps, port_state=ports, keep_addresses=self.keep_addresses)
            return
        # N packets: plan flows for about N packets, then more (later in time) until N are written
        per_flow = max(agg.mean_packets(), 1.0)
        round_ = 0
        t = start_ns
        while True:
            want = int(np.ceil(n_packets / per_flow * 1.2)) + 16
            plan = agg.sample(n_flows=want, seed=_seed(seed, round_), start_ns=t, rate_scale=rate_scale, apps=apps,
                              port_state=ports, keep_addresses=self.keep_addresses)
            if len(plan) == 0:
                raise NecstError("the aggregate model plans no flows")
            yield plan
            round_ += 1
            t = int(plan["start_ns"].iloc[-1]) + 1  # the next round starts after this one

    def batches(self, *, n_flows: int | None = None, duration_s: float | None = None, n_packets: int | None = None,
                seed: int = 0, start_ns: int | None = None, rate_scale: float = 1.0,
                apps: Sequence[str] | None = None) -> Iterator:
        if sum(x is not None for x in (n_flows, duration_s, n_packets)) != 1:
            raise NecstError("give exactly one of --duration, --flows, --packets")
        for name, v in (("flows", n_flows), ("duration", duration_s), ("packets", n_packets)):
            if v is not None and v <= 0:
                raise NecstError(f"--{name} must be positive")
        tasks = _Tasks(self.workers)
        limit = nullcontext()
        if self.workers:
            from threadpoolctl import threadpool_limits

            # one BLAS thread for the whole run: the model's products are small, and per-call limits
            # entered and left by several threads at once would restore each other's settings
            limit = threadpool_limits(limits=1, user_api="blas")
        with limit, tasks:
            yield from self._batches(tasks, n_flows, duration_s, n_packets, seed, start_ns, rate_scale, apps)

    def _batches(self, tasks: "_Tasks", n_flows, duration_s, n_packets, seed, start_ns, rate_scale, apps) -> Iterator:
        written = 0
        pending: PacketFields | None = None
        flow_offset = 0
        end_ns = None
        planned = 0  # packets asked of the flow model for the flows of earlier plans
        plans = self._plans(n_flows, duration_s, n_packets, seed, start_ns, rate_scale, apps)
        # the walkers and the packet fields' pools are built while the first plan is drawn, first
        # queued so that the first group (which walks its flows before it needs a pool) finds them
        # built; were one not, the group would build the same pool again (seeded): only time lost
        warm = [tasks.submit(self._warm_up, kind) for kind in self._kinds()] if self.workers else []
        for r in range(1 << 30):
            with self._stage("aggregate"):
                plan = next(plans, None)
            if plan is None:
                return
            if duration_s is not None and len(plan):
                first = int(plan["start_ns"].iloc[0]) if start_ns is None else int(start_ns)
                end_ns = first + int(duration_s * 1e9)
            starts = plan["start_ns"].to_numpy(np.int64)
            asked = np.minimum(plan["packets"].to_numpy(np.int64), self.max_packets_per_flow)
            before = planned + np.concatenate([[0], np.cumsum(asked)])  # asked for flows before each row
            groups = self._schedule(len(plan), before, n_packets)
            futures: dict[int, object] = {}
            for gi, (a, b) in enumerate(groups):
                # this group and the next few, on the worker threads; a later group only when the
                # capture probably needs it (N packets: fewer were asked for the flows before it)
                for j in range(gi, min(gi + 1 + self.workers, len(groups))):
                    if j not in futures and (j == gi or n_packets is None or before[groups[j][0]] < n_packets):
                        futures[j] = tasks.submit(self._group, plan, groups[j], seed, r, end_ns)
                with self._stage("wait", cpu=False) if self.workers else nullcontext():
                    chunks = futures.pop(gi).result()  # without workers: sampled and planned here
                    while warm:  # done by now: raise what a warm-up raised
                        warm.pop().result()
                for c, fields in chunks:
                    if fields is not None:
                        for k, v in fields.repairs.items():
                            self.repairs[k] = self.repairs.get(k, 0) + v
                        fields.cols["flow"] = fields.cols["flow"] + flow_offset + c
                        pending = fields if pending is None else PacketFields.concat([pending, fields])
                    self.flows += min(self.chunk_flows, len(plan) - c)
                    last_chunk = c + self.chunk_flows >= len(plan)
                    if not last_chunk:
                        horizon = int(starts[c + self.chunk_flows])
                    elif n_packets is not None:  # another round may follow, starting after this one
                        horizon = int(starts[-1]) + 1
                    else:
                        horizon = None
                    if pending is None or len(pending) == 0:
                        continue
                    order = pending.time_order()
                    ts = pending["ts_ns"][order]
                    k = len(order) if horizon is None else int(np.searchsorted(ts, horizon, side="left"))
                    emit, rest = order[:k], order[k:]
                    out = pending.take(emit)
                    pending = pending.take(rest)
                    if n_packets is not None:
                        out = out.slice(0, min(len(out), n_packets - written))
                    for i in range(0, len(out), MAX_BATCH_PACKETS):
                        with self._stage("frames"):
                            part = out.slice(i, min(i + MAX_BATCH_PACKETS, len(out)))
                            written += len(part)
                            frames = build_frames(part, layout=self.layout, payload=self.payload, arena=self._arena)
                        yield frames
                    if n_packets is not None and written >= n_packets:
                        return
            planned = int(before[-1])
            flow_offset += len(plan)
            if n_packets is None:
                return
            if r >= 1000:
                raise NecstError(f"the models gave only {written} of {n_packets} packets")

    def _schedule(self, n: int, before: np.ndarray, n_packets: int | None) -> list[tuple[int, int]]:
        """Rows ``(a, b)`` of the plan's flows sampled at once (whole chunks): ``flow_chunk_flows``
        after a ramp of 1, 2, ... chunks, or, towards the end of a capture of N packets, the chunks
        its remaining packets probably need (a fifth more). ``before[i]``: packets asked for the
        flows before row i (earlier plans included). A function of the plan alone, so the groups,
        hence the capture, do not depend on how far crafting has got when a group is sampled
        (threads or not)."""
        chunks = max(1, self.flow_chunk_flows // self.chunk_flows)
        mean = max(self.aggregate.mean_packets(), 1.0)
        out, a = [], 0
        while a < n:
            k = min(chunks, len(out) + 1)  # 1, 2, ... chunks: the first crafting waits for one chunk only
            if n_packets is not None:
                need = (n_packets - before[a]) / mean * 1.2
                k = min(k, max(1, int(np.ceil(need / self.chunk_flows))))
            b = min(a + k * self.chunk_flows, n)
            out.append((a, b))
            a = b
        return out

    def _group(self, plan: pd.DataFrame, rows: tuple[int, int], seed: int, r: int,
               end_ns: int | None) -> list[tuple[int, PacketFields | None]]:
        """One group of chunks: their flows sampled at once, then each chunk planned (on a worker
        thread when there are workers). Returns (first row, fields) per chunk."""
        a, b = rows
        flows = self._sample_flows(plan.iloc[a:b], _seed(seed, r, a))
        out = []
        for c in range(a, b, self.chunk_flows):
            sub = plan.iloc[c:c + self.chunk_flows].reset_index(drop=True)
            out.append((c, self._plan_chunk(sub, flows, c - a, _seed(seed, r, c), end_ns)))
        return out

    def _kinds(self) -> list:
        """The flow model's kinds, when it says (``vocab_``): what ``_warm_up`` builds."""
        fm = self.flow_model
        return list(getattr(fm, "vocab_", None) or []) if hasattr(fm, "sample_requests") else []

    def _warm_up(self, kind: str) -> None:
        """Build what the flow model builds on first use for ``kind`` (its walker, the packet fields'
        pool) with a one-flow sample, so that groups sampled on several threads find it built."""
        fm = self.flow_model
        with self._stage("flow_model"):
            fm.sample(fm.sample_requests({kind: 1}, seed=0), self.packet_model, seed=0)

    def _sample_flows(self, plan: pd.DataFrame, seed: int) -> pd.DataFrame:
        """The flow model's packets for these planned flows (``flow``: row of ``plan``)."""
        # craft_kind (tcp, udp, icmp, arp, igmp, eapol, llc) tells a flow model that can use it which noflow traffic is meant
        # .array: the plan's text columns as they are (to_numpy would make Python strings, then
        # the frame would convert them back)
        requests = pd.DataFrame({"kind": plan["kind"].array, "app": plan["app"].array,
                                 "craft_kind": plan["craft_kind"].array, "packets": plan["packets"].to_numpy(),
                                 "max_packets": np.minimum(plan["packets"].to_numpy() * 4 + 8,
                                                           self.max_packets_per_flow)})
        with self._stage("flow_model"):
            fp = self.flow_model.sample(requests, self.packet_model, seed=seed)
            f = fp["flow"].to_numpy()
            if len(f) > 1 and bool((f[1:] < f[:-1]).any()):  # chunks take their flows by position
                fp = fp.sort_values(["flow", "pos"], kind="stable").reset_index(drop=True)
            return fp

    def _plan_chunk(self, sub: pd.DataFrame, flows: pd.DataFrame, first: int, seed: int,
                    end_ns: int | None) -> PacketFields | None:
        """Packet fields of the chunk ``sub``, whose flows are ``first``, ``first + 1``, ... in ``flows``."""
        with self._stage("plan"):
            a, b = np.searchsorted(flows["flow"].to_numpy(), [first, first + len(sub)])
            if a == b:
                return None
            pk = packet_table(sub, flows.iloc[a:b], flow_offset=first)
            return self._plan_fields(sub, pk, seed, end_ns)

    def _plan_fields(self, sub: pd.DataFrame, pk: pd.DataFrame, seed: int, end_ns: int | None) -> PacketFields:
        if end_ns is not None:
            pk = pk[pk["ts_ns"].to_numpy() < end_ns]
        fields = plan_packets(pk, craft_flow_table(sub), seed=seed, close_flows=self.close_flows,
                              attempts=self.attempts, idle_s=self.idle_s)
        if end_ns is not None and len(fields):  # inserted handshake packets share their successor's time
            fields = fields.take(np.flatnonzero(fields["ts_ns"] < end_ns))
        return fields

    @contextmanager
    def _stage(self, name: str, cpu: bool = True):
        """Adds the wall and CPU seconds of the block to the stage's timings (CPU: of the thread
        that runs it; stages on different threads overlap in wall time)."""
        t, c = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            wall, used = time.perf_counter() - t, time.thread_time() - c
            with self._lock:
                self.timings[name] += wall
                self.cpu_timings[name] += used if cpu else 0.0

    def generate(self, out: str | Path, *, format: str = "pcap", force: bool = False,
                 progress: Callable[[int], None] | None = None, **kwargs) -> GenerateResult:
        """Write a capture; ``kwargs`` as :meth:`batches`."""
        self.layout = format
        t = time.perf_counter()
        with CaptureWriter(out, format, force=force) as w:
            for batch in self.batches(**kwargs):
                with self._stage("write"):
                    w.write(batch)
                if progress is not None:
                    progress(len(batch))
        return GenerateResult(Path(out), w.packets, self.flows, w.bytes, time.perf_counter() - t, dict(self.repairs),
                              dict(self.timings), dict(self.cpu_timings))


def generate(out: str | Path, models=None, *, model_dir: str | Path | None = None, payload: str = "zeros",
             format: str = "pcap", force: bool = False, progress=None, keep_addresses: bool | None = None,
             close_flows: bool = True, workers: int | None = None, **kwargs) -> GenerateResult:
    """``necst generate``: load the models (or take ``models``), stream a capture to ``out``
    (``workers``: threads that sample ahead, see :func:`generate_threads`)."""
    if models is None:
        models = load_generator(model_dir)
    if getattr(models, "aggregate", None) is None or getattr(models, "flow", None) is None:
        raise NecstError("the generator needs its aggregate and flow levels (train with --level all)")
    sampler = Sampler(models.aggregate, models.flow, getattr(models, "packet", None), payload=payload, layout=format,
                      keep_addresses=keep_addresses, close_flows=close_flows, workers=workers)
    result = sampler.generate(out, format=format, force=force, progress=progress, **kwargs)
    result.timings, result.cpu_timings = dict(sampler.timings), dict(sampler.cpu_timings)
    return result
