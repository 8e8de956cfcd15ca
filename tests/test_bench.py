"""necst bench: scenario packets valid by tshark's verdict, labels exact, same seed -> same captures."""
from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from necst.bench import scenarios as S
from necst.bench.frames import merge
from necst.bench.hosts import Hosts
from necst.bench.inject import Traffic, read_labels
from necst.bench.metrics import detection_metrics, unit_labels
from necst.bench.replay import replay, roles
from necst.capture.reader import CaptureReader
from necst.capture.writer import write_capture

from test_craft import tshark_verdict

DEVICES = ["HueBridge", "EdimaxCam1", "TP-LinkPlugHS100", "WeMoSwitch2"]


def _concat(paths) -> Traffic:
    """Captures one after another (1 ms apart), as the held-out timeline is built."""
    parts, clock = [], None
    for p in paths:
        t = Traffic.from_capture(p)
        ts = t.raw.ts_ns.astype(np.int64)
        shift = 0 if clock is None else clock + 1_000_000 - int(ts[0])
        t.raw.ts_ns = ts + shift
        clock = int(t.raw.ts_ns[-1])
        parts.append(t.raw)
    return Traffic.from_batches(parts)


@pytest.fixture(scope="module")
def background(shared_data):
    paths = [p for d in DEVICES for p in sorted((shared_data / "benign" / "iot_sentinel" / d).glob("*.pcap"))[:2]]
    if not paths:
        pytest.skip("iot_sentinel captures not found")
    return _concat(paths)


@pytest.fixture(scope="module")
def hosts(background):
    return Hosts.from_table(background.table)


def _small(name):
    """Each scenario at a tenth of its rate over a shorter span: the same code, fewer packets."""
    _, rate, dur = S.defaults(name)
    return dict(intensity=0.2, duration_s=min(dur, 20.0))


def _all_scenarios(hosts, seed=3):
    start = 1_600_000_000 * 10**9
    return [S.make(n, hosts, start + i * 10**9, seed=seed + i, **_small(n))
            for i, n in enumerate(S.scenario_names(slow=False) + ["syn_scan_slow", "ssh_bruteforce_slow"])]


def test_every_scenario_is_valid_by_tshark(tmp_path, tshark, hosts):
    injections = _all_scenarios(hosts)
    raw, part, _ = merge([i.frames for i in injections])
    path = write_capture(tmp_path / "attacks.pcap", [raw])
    v = tshark_verdict(tshark, path)
    assert v["packets"] == sum(len(i) for i in injections) > 1000
    assert v["malformed"] == 0 and v["expert_errors"] == 0 and v["bad_checksums"] == 0, v
    # the payload text is read as the protocol it claims to be
    out = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "frame.protocols"], capture_output=True,
                         text=True, check=True).stdout
    for proto in ("ftp", "ssh", "dns", "tls"):
        assert f":{proto}" in out, proto
    for inj in injections:  # every scenario addresses hosts of the background
        assert set(inj.victim) <= set(hosts.lan), inj.name
        if inj.name not in ("syn_flood", "dns_amplification", "slow_exfiltration"):
            assert set(inj.attacker) <= set(hosts.lan), inj.name


def test_labels_exact(tmp_path, background, hosts, shared_data):
    start = int(background.raw.ts_ns[len(background) // 3])
    injections = [S.make("ftp_bruteforce", hosts, start, seed=1, **_small("ftp_bruteforce")),
                  S.make("udp_scan_slow", hosts, start + 5 * 10**9, seed=2),
                  replay(Traffic.from_capture(shared_data / "attacks" / "scan" / "nmap-xmas-scan.pcap"),
                         "replay:xmas", hosts, start + 7 * 10**9)]
    mixed = background.inject(*injections)
    path = mixed.write(tmp_path / "mixed.pcap")
    labels = read_labels(tmp_path / "mixed.labels.csv")
    back = merge(list(CaptureReader(path)))[0]
    packets = [back.packet(i) for i in range(len(back))]
    assert len(packets) == len(background) + sum(len(i) for i in injections)
    rows = labels["packet_index"]
    assert np.all(np.diff(rows) > 0) and len(rows) == sum(len(i) for i in injections)
    # every labelled packet is, byte for byte and in order, a packet of its scenario; and vice versa
    for inj in injections:
        mine = rows[labels["scenario"] == inj.name]
        assert [packets[i] for i in mine] == [inj.frames.packet(j) for j in range(len(inj))], inj.name
        assert np.array_equal(back.ts_ns[mine], inj.frames.ts_ns)
        assert list(labels["victim"][labels["scenario"] == inj.name]) == list(inj.victim)
        assert list(labels["attacker"][labels["scenario"] == inj.name]) == list(inj.attacker)
    normal = np.setdiff1d(np.arange(len(packets)), rows)
    assert [packets[i] for i in normal] == [background.raw.packet(j) for j in range(len(background))]
    # the decoded table the detector scores is the written capture, row for row
    assert mixed.table.column("ts_ns").to_numpy().tolist() == back.ts_ns.tolist()


def test_replay_remaps_roles_and_keeps_checksums(tmp_path, tshark, shared_data, hosts):
    src = shared_data / "attacks" / "scan" / "nmap-syn-scan.pcap"
    att = Traffic.from_capture(src)
    role = roles(att)
    inj = replay(att, "replay:syn", hosts, 1_600_000_000 * 10**9)
    path = write_capture(tmp_path / "r.pcap", [inj.frames])
    before, after = tshark_verdict(tshark, src), tshark_verdict(tshark, path)
    ipv4 = int(np.sum(att.table.column("ip_version").to_numpy(zero_copy_only=False) == 4))
    assert after["packets"] == ipv4 == len(att) - inj.params["packets_dropped_not_ipv4"] > 2000
    assert after["bad_checksums"] == before["bad_checksums"] and after["malformed"] == before["malformed"] == 0
    out = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "ip.src", "-e", "ip.dst"],
                         capture_output=True, text=True, check=True).stdout.split()
    seen = set(out)
    assert {hosts.victim(), hosts.attacker()} <= seen and not {role.victim, role.attacker} & seen
    assert out.count(hosts.victim()) > 0.9 * len(out) / 2  # nearly every packet is to or from the victim
    assert role.victim != hosts.victim() and inj.frames.ts_ns[0] == 1_600_000_000 * 10**9


def test_metrics_on_known_units():
    import pandas as pd

    scored = pd.DataFrame({"start_ns": [0, 10, 20, 30], "end_ns": [10, 20, 30, 40]})
    ts = np.array([1, 12, 15, 33])
    y = unit_labels("window", None, scored, ts, np.array([False, True, True, False]))
    assert y.tolist() == [False, True, False, False]
    m = detection_metrics(y, np.array([0.1, 0.9, 0.2, 0.3]), np.array([False, True, False, True]),
                          scored["end_ns"].to_numpy(), attack_start_ns=12)
    assert m["roc_auc"] == 1.0 and m["tp"] == 1 and m["fp"] == 1 and m["f1"] == pytest.approx(2 / 3)
    assert m["delay_s"] == pytest.approx(8e-9)


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory, background, shared_data):
    from necst.detect.detector import IsolationForestDetector

    d = tmp_path_factory.mktemp("bench_inputs")
    normal = background.write(d / "normal.pcap")
    det = IsolationForestDetector(mode="window", threshold="gaussian_fit", n_estimators=30).fit([background.table])
    det.save(d / "det")
    attacks = d / "attacks" / "scan"
    attacks.mkdir(parents=True)
    (attacks / "icmp-portscan.pcap").symlink_to(shared_data / "attacks" / "scan" / "icmp-portscan.pcap")
    return normal, d / "det", d / "attacks"


def _digest(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "captures").rglob("*")) if p.is_file()}


def test_same_seed_same_bench_captures(tmp_path, bench_inputs):
    from necst.bench.runner import BenchConfig, run_bench
    from necst.cli import app

    normal, det, attacks = bench_inputs
    cfg = dict(scenarios=["syn_scan", "dns_amplification_slow"], background_s=120.0, attacks_dir=str(attacks),
               learned=(), sweep_scenarios=("syn_scan",), intensities=(0.1, 1.0), volumes=(1.0,), volume_s=30.0)
    rep = run_bench([det], normal, tmp_path / "a", config=BenchConfig(seed=5, **cfg))
    res = CliRunner().invoke(app, ["bench", "-d", str(det), "--normal", str(normal), "--out", str(tmp_path / "b"),
                                   "--scenarios", "syn_scan", "--scenarios", "dns_amplification_slow",
                                   "--attacks", str(attacks), "--background", "120", "--no-learned", "--no-sweeps",
                                   "--seed", "5", "-q"])
    assert res.exit_code == 0, res.output
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    shared = [k for k in a if k in b]
    assert len(shared) >= 8 and all(a[k] == b[k] for k in shared)  # normal, scenarios and replays
    quick = dict(cfg, scenarios=["syn_scan"], replay=False, sweep_scenarios=(), volumes=())
    run_bench([det], normal, tmp_path / "c", config=BenchConfig(seed=6, **quick))
    assert _digest(tmp_path / "c")["captures/scenarios/real/syn_scan.pcap"] != a["captures/scenarios/real/syn_scan.pcap"]
    # the report: every capture with its labels, metrics per detector, a self-contained page
    assert {r["name"] for r in rep["scenarios"]} == {"syn_scan", "dns_amplification_slow"}
    assert len(rep["replays"]) == 2 and len(rep["intensity"]) == 2 and len(rep["volume"]) == 1
    for r in rep["scenarios"] + rep["replays"] + rep["intensity"] + rep["volume"]:
        labels = read_labels(tmp_path / "a" / r["labels"])
        assert len(labels["packet_index"]) == r["attack_packets"] > 0
        m = r["metrics"]["isolation_forest/window"]
        assert m["attack_units"] > 0 and set(m) >= {"roc_auc", "pr_auc", "tpr_at_fpr_0.001", "f1", "delay_s"}
    page = (tmp_path / "a" / "bench.html").read_text()
    assert "data:image/png;base64" in page and "http" not in page.replace("http-equiv", "")
    assert (tmp_path / "a" / "plots" / "roc_real.png").is_file()
    assert rep["normal"]["real"]["detectors"]["isolation_forest/window"]["units"] > 0
    assert CliRunner().invoke(app, ["bench", "-d", str(det), "--normal", str(normal), "--out",
                                    str(tmp_path / "a"), "-q"]).exit_code == 2  # exists: needs --force
