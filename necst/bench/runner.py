"""``necst bench``: every capture built, written with its labels, scored by every detector.

The run, in order (each step seeded from ``seed``):

1. Normal traffic. The real normal capture, and synthetic normal traffic from the generator
   over the same time span. The default model's traffic is far sparser than the IoT captures
   (#7), so by default the synthetic rate is scaled to the real packet count (``synthetic_rate
   ="match"``; the scale is reported). Each detector's false-positive rate on both, and their ratio.
2. Scenarios. The densest ``background_s`` seconds of each background (synthetic and real),
   each attack scenario injected at ``attack_at`` of it, addressed at that background's hosts.
3. Real attacks replayed (``attacks_dir``), remapped onto the same hosts, on both backgrounds.
4. Learned attacks: the generator trained on a few attack captures, variants sampled and
   replayed like the originals (synthetic background).
5. Sweeps on the synthetic background: intensity (rate factor) for a few scenarios; volume
   (background packets times 1..100, compressed into ``volume_s`` seconds) for throughput and
   latency of each detector.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from necst.bench import scenarios as S
from necst.bench.hosts import Hosts
from necst.bench.inject import Traffic, _own
from necst.bench.metrics import detection_metrics, roc_points, unit_labels
from necst.errors import NecstError, OutputExistsError

DEFAULT_LEARNED = ("scan/nmap-syn-scan.pcap", "bruteforce/ssh-hydra.pcap")
DEFAULT_SWEEP = ("syn_scan", "udp_flood", "ssh_bruteforce")


@dataclass
class BenchConfig:
    scenarios: Sequence[str] | None = None  # None: every scenario and its low-and-slow variant
    seed: int = 0
    background_s: float = 600.0
    attack_at: float = 0.3
    backgrounds: Sequence[str] = ("synthetic", "real")
    synthetic_rate: str | float = "match"
    attacks_dir: str | None = None  # None: ../shared/data/attacks beside the project, when present
    replay: bool = True
    learned: Sequence[str] = DEFAULT_LEARNED
    learned_epochs: int = 3
    sweep_scenarios: Sequence[str] = DEFAULT_SWEEP
    intensities: Sequence[float] = (0.01, 0.1, 1.0, 10.0)
    volumes: Sequence[float] = (1.0, 10.0, 100.0)
    volume_s: float = 120.0
    write_captures: bool = True


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def default_attacks_dir() -> Path | None:
    p = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "attacks"
    return p if p.is_dir() else None


class Scorer:
    """Every detector on a capture; features computed once per (mode, feature parameters)."""

    def __init__(self, detectors: dict):
        self.detectors = detectors

    def run(self, traffic: Traffic) -> dict:
        cache: dict = {}
        out = {}
        for name, det in self.detectors.items():
            key = (det.mode, json.dumps(det._fparams(), sort_keys=True))
            t0, c0 = time.perf_counter(), _cpu()
            if key not in cache:
                units = det.features(traffic.table)
                cache[key] = (units, time.perf_counter() - t0, _cpu() - c0)
            units, ft, fc = cache[key]
            t1, c1 = time.perf_counter(), _cpu()
            scored = det.score_units(units)
            out[name] = {"units": units, "scored": scored, "seconds": ft + time.perf_counter() - t1,
                         "cpu_seconds": fc + _cpu() - c1}
        return out


def evaluate(traffic: Traffic, scorer: Scorer, keep_roc: bool = False) -> dict:
    """Metrics of every detector on a labelled capture."""
    res = scorer.run(traffic)
    ts = traffic.raw.ts_ns.astype(np.int64)
    attack = traffic.is_attack
    start = int(ts[attack].min()) if attack.any() else None
    out = {}
    for name, r in res.items():
        det = scorer.detectors[name]
        sc = r["scored"]
        y = unit_labels(det.mode, r["units"], sc, ts, attack)
        m = detection_metrics(y, sc["error"].to_numpy(), sc["flag"].to_numpy(), sc["end_ns"].to_numpy(np.int64)
                              if len(sc) else np.zeros(0, np.int64), start)
        m["over_threshold"] = int((sc["error"].to_numpy() > det.threshold_["threshold"]).sum()) if len(sc) else 0
        m["seconds"], m["cpu_seconds"] = round(r["seconds"], 4), round(r["cpu_seconds"], 4)
        if keep_roc:
            m["roc"] = roc_points(y, sc["error"].to_numpy())
        out[name] = m
    return out


def _load_detectors(paths: Sequence[str | Path]) -> dict:
    from necst.detect.detector import load

    if not paths:
        raise NecstError("bench: give at least one --detector")
    dets = {}
    for p in paths:
        det = load(p)
        name = f"{det.kind}/{det.mode}"
        k = 2
        while name in dets:
            name = f"{det.kind}/{det.mode}#{k}"
            k += 1
        dets[name] = det
    return dets


def _synthetic(models, start_ns: int, duration_s: float, seed: int, rate_scale: float) -> Traffic | None:
    from necst.generate.sampler import Sampler

    s = Sampler(models.aggregate, models.flow, getattr(models, "packet", None))
    parts = [_own(b) for b in s.batches(duration_s=duration_s, seed=seed, start_ns=start_ns, rate_scale=rate_scale)]
    parts = [p for p in parts if len(p)]
    return Traffic.from_batches(parts) if parts else None


def _compress(t: Traffic, seconds: float) -> Traffic:
    """The same packets, their timeline scaled linearly into ``seconds`` (order kept)."""
    from necst.bench.inject import _decode

    ts = t.raw.ts_ns.astype(np.int64)
    span = max(int(ts[-1] - ts[0]), 1)
    new = ts[0] + ((ts - ts[0]).astype(np.float64) * (seconds * 1e9 / span)).astype(np.int64)
    raw = t.raw
    raw = type(raw)(raw.data, raw.offsets, raw.cap_len, raw.wire_len, new, raw.linktype, pad=raw.pad)
    return Traffic(raw, _decode(raw), t.scenario, t.attacker, t.victim)


class Bench:
    """One bench run; :meth:`run` returns the report dict (also written as bench.json)."""

    def __init__(self, detectors: Sequence[str | Path], normal: str | Path, out: str | Path,
                 model: str | Path | None = None, config: BenchConfig | None = None, force: bool = False,
                 echo: Callable[[str], None] | None = None):
        self.config = config or BenchConfig()
        self.normal_path, self.out, self.model_path = Path(normal), Path(out), model
        self.detector_paths = [Path(p) for p in detectors]
        self.force = force
        self.echo = echo or (lambda s: None)
        self.captures = self.out / "captures"
        self.timings: dict[str, float] = {}
        names = self.config.scenarios if self.config.scenarios is not None else S.scenario_names()
        for n in list(names) + list(self.config.sweep_scenarios):
            S.defaults(n)  # unknown names fail now, not after minutes
        self.scenario_list = list(names)
        if not self.normal_path.exists():
            raise NecstError("no such capture", self.normal_path)
        if self.out.exists() and not force:
            raise OutputExistsError("exists already (use --force to overwrite)", self.out)

    # ------------------------------------------------------------------ helpers
    def _seed(self, *parts) -> int:
        import zlib

        return int(np.random.SeedSequence([self.config.seed] + [zlib.crc32(str(p).encode()) for p in parts])
                   .generate_state(1)[0])

    def _stage(self, name: str, t0: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    def _record(self, traffic: Traffic, background: str, name: str, group: str, params: dict,
                keep_roc: bool = False) -> dict:
        rel = None
        if self.config.write_captures:
            sub = self.captures / group / background
            sub.mkdir(parents=True, exist_ok=True)
            path = traffic.write(sub / f"{name.replace('/', '_').replace(':', '_')}.pcap")
            rel = str(path.relative_to(self.out))
        m = evaluate(traffic, self.scorer, keep_roc=keep_roc)
        return {"name": name, "background": background, "group": group, "capture": rel,
                "labels": rel[:-5] + ".labels.csv" if rel else None, "packets": len(traffic),
                "attack_packets": int(traffic.is_attack.sum()), "params": params, "metrics": m}

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        t_all, c_all = time.perf_counter(), _cpu()
        cfg = self.config
        tmp_out = self.out.with_name(f".{self.out.name}.part")
        if tmp_out.exists():
            shutil.rmtree(tmp_out)
        final_out, self.out = self.out, tmp_out
        self.captures = self.out / "captures"
        self.out.mkdir(parents=True)
        try:
            report = self._run(cfg)
            report["seconds"] = round(time.perf_counter() - t_all, 2)
            report["cpu_seconds"] = round(_cpu() - c_all, 2)
            report["timings"] = self.timings
            from necst.bench.report import write_report

            write_report(report, self.out)
        except BaseException:
            shutil.rmtree(tmp_out, ignore_errors=True)
            raise
        if final_out.exists():
            shutil.rmtree(final_out)
        os.replace(tmp_out, final_out)
        self.out = final_out
        return report

    def _run(self, cfg: BenchConfig) -> dict:
        from necst._version import __version__
        from necst.generate.sampler import load_generator

        t0 = time.perf_counter()
        dets = _load_detectors(self.detector_paths)
        self.scorer = Scorer(dets)
        models = load_generator(self.model_path)
        self._stage("load", t0)
        self.echo(f"detectors: {', '.join(dets)}")

        # 1. normal traffic --------------------------------------------------------------
        t0 = time.perf_counter()
        real = Traffic.from_capture(self.normal_path)
        span = max(real.duration_s, 1.0)
        start = int(real.raw.ts_ns[0])
        pilot = _synthetic(models, start, span, self._seed("synthetic"), 1.0)
        pilot_n = len(pilot) if pilot is not None else 0
        if cfg.synthetic_rate == "match":
            scale = len(real) / max(pilot_n, 1)
        else:
            scale = float(cfg.synthetic_rate)
        synth = pilot if scale == 1.0 else _synthetic(models, start, span, self._seed("synthetic"), scale)
        if synth is None or len(synth) == 0:
            raise NecstError("bench: the generator made no packets for the synthetic background")
        self._stage("synthetic_normal", t0)
        self.echo(f"normal: real {len(real)} packets over {span:.0f} s; synthetic {len(synth)} packets "
                  f"(rate x{scale:.3g}; {pilot_n} at x1)")
        t0 = time.perf_counter()
        normal = {"real": self._normal(real, "real", str(self.normal_path)),
                  "synthetic": self._normal(synth, "synthetic", None)}
        normal["synthetic"]["rate_scale"] = round(scale, 4)
        normal["synthetic"]["packets_at_rate_1"] = pilot_n
        normal["fp_ratio_synthetic_to_real"] = {
            d: (normal["synthetic"]["detectors"][d]["fp_rate"] / normal["real"]["detectors"][d]["fp_rate"]
                if normal["real"]["detectors"][d]["fp_rate"] else None) for d in dets}
        # flags need runs of units over the threshold; the raw share over it is the steadier ratio
        normal["over_threshold_ratio_synthetic_to_real"] = {
            d: (normal["synthetic"]["detectors"][d]["over_threshold_rate"]
                / normal["real"]["detectors"][d]["over_threshold_rate"]
                if normal["real"]["detectors"][d]["over_threshold_rate"] else None) for d in dets}
        self._stage("normal_scoring", t0)

        backgrounds = {"synthetic": synth.densest(cfg.background_s), "real": real.densest(cfg.background_s)}
        backgrounds = {k: v for k, v in backgrounds.items() if k in cfg.backgrounds}
        hosts = {k: Hosts.from_table(v.table) for k, v in backgrounds.items()}
        at = {k: int(v.raw.ts_ns[0]) + int(cfg.attack_at * cfg.background_s * 1e9) for k, v in backgrounds.items()}

        # 2. scenarios -------------------------------------------------------------------
        t0 = time.perf_counter()
        records = []
        for name in self.scenario_list:
            for bg, traffic in backgrounds.items():
                inj = S.make(name, hosts[bg], at[bg], seed=self._seed("scenario", name, bg))
                records.append(self._record(traffic.inject(inj), bg, name, "scenarios", inj.params, keep_roc=True))
            self.echo(f"scenario {name}: {_brief(records[-len(backgrounds):])}")
        self._stage("scenarios", t0)

        # 3. replays ---------------------------------------------------------------------
        from necst.bench.replay import replay

        t0 = time.perf_counter()
        replays, learned = [], []
        adir = Path(cfg.attacks_dir) if cfg.attacks_dir else default_attacks_dir()
        attack_files = sorted(p for p in adir.glob("*/*.pcap") if "normal" not in p.name) if (adir and cfg.replay) \
            else []
        originals = {}
        for p in attack_files:
            rel = f"{p.parent.name}/{p.name}"
            try:
                att = Traffic.from_capture(p)
            except NecstError as e:
                self.echo(f"replay {rel}: skipped ({e})")
                continue
            originals[rel] = att
            for bg, traffic in backgrounds.items():
                inj = replay(att, f"replay:{p.parent.name}/{p.stem}", hosts[bg], at[bg])
                replays.append(self._record(traffic.inject(inj), bg, inj.name, "replays",
                                            dict(inj.params, file=rel), keep_roc=True))
            self.echo(f"replay {rel}: {_brief(replays[-len(backgrounds):])}")
        self._stage("replays", t0)

        # 4. learned attacks -------------------------------------------------------------
        t0 = time.perf_counter()
        if adir and cfg.learned and "synthetic" in backgrounds:
            learned = self._learned(adir, originals, backgrounds["synthetic"], hosts["synthetic"], at["synthetic"])
        self._stage("learned", t0)

        # 5. sweeps ----------------------------------------------------------------------
        t0 = time.perf_counter()
        sweep_bg = "synthetic" if "synthetic" in backgrounds else next(iter(backgrounds))
        intensity = []
        for name in cfg.sweep_scenarios:
            for k in cfg.intensities:
                inj = S.make(name, hosts[sweep_bg], at[sweep_bg], seed=self._seed("sweep", name), intensity=k)
                rec = self._record(backgrounds[sweep_bg].inject(inj), sweep_bg, f"{name}@{k:g}x", "intensity",
                                   inj.params)
                rec["scenario"], rec["intensity"] = name, k
                intensity.append(rec)
            self.echo(f"intensity {name}: " + ", ".join(
                f"{r['intensity']:g}x {_brief([r])}" for r in intensity[-len(cfg.intensities):]))
        self._stage("intensity_sweep", t0)
        t0 = time.perf_counter()
        volume = self._volume(models, synth) if cfg.volumes else []
        self._stage("volume_sweep", t0)

        return {
            "necst_version": __version__, "tool": "necst bench",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "config": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items()},
            "inputs": {"normal": str(self.normal_path), "model": str(self.model_path or "default (bundled)"),
                       "detectors": {n: {"path": str(p), "kind": d.kind, "mode": d.mode,
                                         "threshold": d.threshold_} for (n, d), p in zip(dets.items(),
                                                                                        self.detector_paths)},
                       "attacks_dir": str(adir) if adir else None},
            "backgrounds": {k: {"packets": len(v), "duration_s": round(v.duration_s, 3), "hosts": hosts[k].to_json(),
                                "attack_start_ns": at[k]} for k, v in backgrounds.items()},
            "normal": normal, "scenarios": records, "replays": replays, "learned": learned,
            "intensity": intensity, "volume": volume,
        }

    def _normal(self, traffic: Traffic, name: str, path: str | None) -> dict:
        if path is None and self.config.write_captures:
            sub = self.captures / "normal"
            sub.mkdir(parents=True, exist_ok=True)
            path = str(traffic.write(sub / f"{name}.pcap").relative_to(self.out))
        res = self.scorer.run(traffic)
        out = {"capture": path, "packets": len(traffic), "duration_s": round(traffic.duration_s, 3), "detectors": {}}
        for d, r in res.items():
            sc = r["scored"]
            n = len(sc)
            flagged = int(sc["flag"].sum()) if n else 0
            over = int((sc["error"].to_numpy() > self.scorer.detectors[d].threshold_["threshold"]).sum()) if n else 0
            out["detectors"][d] = {"units": n, "flagged": flagged, "fp_rate": flagged / n if n else None,
                                   "over_threshold_rate": over / n if n else None,
                                   "decision": self.scorer.detectors[d].decision(sc),
                                   "seconds": round(r["seconds"], 3), "cpu_seconds": round(r["cpu_seconds"], 3)}
        return out

    def _learned(self, adir: Path, originals: dict, bg: Traffic, hosts: Hosts, at: int) -> list:
        from necst.bench.replay import learn, replay, roles, sample_variant

        out = []
        for rel in self.config.learned:
            path = adir / rel
            if not path.is_file():
                self.echo(f"learned {rel}: skipped (no such file in {adir})")
                continue
            t0 = time.perf_counter()
            orig = originals.get(rel) or Traffic.from_capture(path)
            role = roles(orig)
            models, n_flows = learn(orig, path, seed=self._seed("learn", rel), epochs=self.config.learned_epochs)
            train_s = time.perf_counter() - t0
            stem = Path(rel).stem
            rec_o = self._record(bg.inject(replay(orig, f"replay:{stem}", hosts, at, role)), "synthetic",
                                 f"original:{stem}", "learned", {"file": rel})
            variant = sample_variant(models, n_flows, seed=self._seed("variant", rel), start_ns=int(orig.raw.ts_ns[0]))
            inj = replay(variant, f"learned:{stem}", hosts, at, role)
            rec_v = self._record(bg.inject(inj), "synthetic", f"learned:{stem}", "learned",
                                 dict(inj.params, file=rel, train_seconds=round(train_s, 2), flows=n_flows,
                                      epochs=self.config.learned_epochs))
            out += [rec_o, rec_v]
            self.echo(f"learned {rel}: original {_brief([rec_o])}; variant {_brief([rec_v])} "
                      f"({len(variant)} packets, trained in {train_s:.0f} s)")
        return out

    def _volume(self, models, synth: Traffic) -> list:
        """Synthetic background at ``volumes`` times its densest stretch, compressed into ``volume_s``."""
        from necst.bench.inject import _decode
        from necst.generate.sampler import Sampler

        cfg = self.config
        base = synth.densest(cfg.volume_s)
        out = []
        for v in cfg.volumes:
            want = max(int(round(len(base) * v)), 10)
            s = Sampler(models.aggregate, models.flow, getattr(models, "packet", None))
            parts = [_own(b) for b in s.batches(n_packets=want, seed=self._seed("volume", v),
                                                start_ns=int(base.raw.ts_ns[0]))]
            traffic = _compress(Traffic.from_batches(parts), cfg.volume_s)
            start = int(traffic.raw.ts_ns[0]) + int(cfg.attack_at * cfg.volume_s * 1e9)
            inj = S.make("syn_scan", Hosts.from_table(traffic.table), start, seed=self._seed("volume-attack"))
            mixed = traffic.inject(inj)
            t0, c0 = time.perf_counter(), _cpu()
            _decode(mixed.raw)  # what any detector pays first: decoding the packets' headers
            decode_s, decode_cpu = time.perf_counter() - t0, _cpu() - c0
            rec = self._record(mixed, "synthetic", f"volume@{v:g}x", "volume",
                               {"volume": v, "seconds": cfg.volume_s, "attack": "syn_scan"})
            rec["volume"] = v
            rec["decode_seconds"], rec["decode_cpu_seconds"] = round(decode_s, 4), round(decode_cpu, 4)
            for d, m in rec["metrics"].items():
                total = m["seconds"] + decode_s
                m["end_to_end_packets_per_s"] = rec["packets"] / total if total else None
                m["packets_per_s"] = rec["packets"] / m["seconds"] if m["seconds"] else None
                m["packets_per_cpu_s"] = rec["packets"] / m["cpu_seconds"] if m["cpu_seconds"] else None
                # scoring cost of one second of this traffic: the wait before a verdict, batch scoring
                m["latency_s_per_traffic_s"] = m["seconds"] / cfg.volume_s
            out.append(rec)
            self.echo(f"volume {v:g}x: {rec['packets']} packets; " + ", ".join(
                f"{d} {m['packets_per_s']:,.0f} packets/s" for d, m in rec["metrics"].items()))
        return out


def _brief(records: list) -> str:
    parts = []
    for r in records:
        aucs = [m.get("roc_auc") for m in r["metrics"].values()]
        parts.append(f"{r['background']} " + "/".join("-" if a is None else f"{a:.3f}" for a in aucs))
    return "; ".join(parts) + " ROC AUC"


def run_bench(detectors: Sequence[str | Path], normal: str | Path, out: str | Path, *, model=None,
              config: BenchConfig | None = None, force: bool = False, echo=None) -> dict:
    """The API behind ``necst bench``."""
    return Bench(detectors, normal, out, model=model, config=config, force=force, echo=echo).run()
