"""The `necst` command: parse arguments, call the API, print. No logic lives here.

Heavy modules (TensorFlow, the model stages) are imported inside the commands that need
them, so `necst --help` and `necst process` start fast.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from necst.errors import NecstError

app = typer.Typer(
    name="necst",
    help="Learn network traffic from captures, generate valid synthetic captures, "
    "and stress-test an autoencoder anomaly detector.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from necst._version import __version__

        typer.echo(f"necst {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Learn network traffic from captures, generate valid synthetic captures, stress-test a detector."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def clean_errors(func):
    """Turn a NecstError (or a missing file) into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except NecstError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted")

    return wrapper


@app.command()
@clean_errors
def process(
    captures: List[Path] = typer.Argument(..., help="Capture files (pcap, pcapng, optionally gzip-compressed)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing dataset folder."),
    workers: int = typer.Option(1, "--workers", "-j", help="Captures processed in parallel."),
    idle_timeout: float = typer.Option(120.0, help="Seconds of silence that end a flow (as NFStream's idle_timeout)."),
    active_timeout: float = typer.Option(1800.0, help="Seconds after which a flow is cut (as NFStream's active_timeout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Read captures into a dataset: packets.parquet, flows.parquet and meta.json."""
    from necst.process.dataset import process_captures

    meta = process_captures(
        captures, out, force=force, workers=workers, idle_timeout=idle_timeout,
        active_timeout=active_timeout, progress=not quiet,
    )
    for w in meta["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    typer.echo(
        f"{meta['packets']} packets, {meta.get('flows', 0)} flows from {len(meta['inputs'])} "
        f"capture(s) -> {out}"
    )


@app.command()
@clean_errors
def train(
    dataset: Path = typer.Argument(..., help="A dataset folder from `necst process` (or a capture)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model bundle folder to write."),
    level: str = typer.Option("packet", "--level", help="packet, flow, aggregate or all."),
    model: Optional[Path] = typer.Option(None, "--model", help="An existing bundle: its levels are kept, and the flow level reads its packet level."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Most epochs of the packet VAE (early stopping may end sooner)."),
    latent_dim: Optional[int] = typer.Option(None, "--latent-dim", help="Latent size of the packet VAE."),
    flow_units: Optional[int] = typer.Option(None, "--flow-units", min=1, help="LSTM width of the flow level (default 96; sampling cost grows with it)."),
    flow_head_units: Optional[int] = typer.Option(None, "--flow-head-units", min=1, help="Hidden width of the flow level's output heads (default 32)."),
    flow_epochs: Optional[int] = typer.Option(None, "--flow-epochs", min=1, help="Most epochs of each flow-level LSTM (early stopping may end sooner)."),
    seed: int = typer.Option(0, "--seed", help="Seed for every random step."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing bundle folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Learn a generator from a dataset and save its model bundle."""
    from necst.model.bundle import train_generator

    params = {k: v for k, v in {"epochs": epochs, "latent_dim": latent_dim}.items() if v is not None}
    flow_params = {k: v for k, v in {"units": flow_units, "head_units": flow_head_units,
                                     "epochs": flow_epochs}.items() if v is not None}
    models = train_generator(dataset, out, level, model=model, force=force, seed=seed,
                             packet_params=params, flow_params=flow_params,
                             verbose=0 if quiet else (1 if sys.stdout.isatty() else 2),
                             echo=lambda line: typer.echo(line, err=True))
    if models.packet is not None and level in ("packet", "all"):
        from necst.model.packet import training_fidelity

        typer.echo("fidelity of the packet level against its training data "
                   "(model sample vs training packets; the independent-marginals sampler beside it):")
        typer.echo(training_fidelity(models.packet, dataset, seed=seed))
    typer.echo(f"model ({', '.join(lv for lv in ('packet', 'flow', 'aggregate') if getattr(models, lv) is not None)}) -> {out}")


@app.command()
@clean_errors
def generate(
    out: Path = typer.Option(..., "--out", "-o", help="Capture file to write."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Generator bundle (default: the bundled model)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds of traffic to generate."),
    flows: Optional[int] = typer.Option(None, "--flows", help="Number of flows to generate."),
    packets: Optional[int] = typer.Option(None, "--packets", help="Number of packets to generate."),
    seed: int = typer.Option(0, "--seed", help="Same model, options and seed: the same bytes."),
    start: Optional[str] = typer.Option(None, "--start", help="Time of the first flow, ISO-8601 (default: the training capture's)."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="More (>1) or less (<1) traffic with the same shape."),
    app_names: Optional[List[str]] = typer.Option(None, "--app", help="Only flows of this application (repeatable)."),
    payload: str = typer.Option("zeros", "--payload", help="Payload bytes: zeros, or app (DNS queries, HTTP requests, TLS records)."),
    format: str = typer.Option("pcap", "--format", help="pcap (nanosecond) or pcapng."),
    keep_addresses: bool = typer.Option(False, "--keep-addresses", help="Reuse the training capture's real addresses and MACs (default: pseudonyms keeping subnets and popularity)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing capture."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write a synthetic capture from a trained generator."""
    from datetime import datetime, timezone

    from necst.generate.sampler import generate as run_generate

    if sum(x is not None for x in (duration, flows, packets)) == 0:
        flows = 1000
    start_ns = None
    if start is not None:
        try:
            dt = datetime.fromisoformat(start.replace("Z", "+00:00"))
        except ValueError:
            raise NecstError(f"--start: not an ISO-8601 time: {start!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        start_ns = int(dt.timestamp()) * 10**9 + dt.microsecond * 1000
    kwargs = dict(n_flows=flows, duration_s=duration, n_packets=packets, seed=seed, start_ns=start_ns,
                  rate_scale=rate_scale, apps=app_names or None, keep_addresses=keep_addresses)
    if quiet:
        result = run_generate(out, model_dir=model, payload=payload, format=format, force=force, **kwargs)
    else:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("generating", total=packets)
            result = run_generate(out, model_dir=model, payload=payload, format=format, force=force,
                                  progress=lambda n: bar.advance(task, n), **kwargs)
    typer.echo(f"{result.packets} packets, {result.flows} flows -> {out} "
               f"({result.seconds:.1f} s, {result.packets_per_second:,.0f} packets/s)")


@app.command()
@clean_errors
def evaluate(
    real: Path = typer.Argument(..., help="Real traffic: a capture or a dataset folder."),
    synth: Optional[Path] = typer.Argument(None, help="Synthetic traffic: a capture or a dataset folder (leave out to score only the floor and --baseline)."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder to write."),
    floor: Optional[Path] = typer.Option(None, "--floor", help="A second real sample: the real-vs-real floor."),
    split: Optional[float] = typer.Option(None, "--split", help="Cut REAL by time: the first part is the reference, the rest the floor (e.g. 0.7)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="Also score a trivial generator: 'marginals'."),
    seed: int = typer.Option(0, "--seed", help="Seed of the baseline and the discriminator."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing report folder."),
) -> None:
    """Fidelity report: every metric beside the real-vs-real floor (report.json, report.html, plots/)."""
    import time

    from necst.evaluate import evaluate as run_evaluation, write_report
    from necst.evaluate.report import load_sample

    started = time.perf_counter()

    if floor is not None and split is not None:
        _fail("give --floor or --split, not both")
    if out.exists() and not force:
        _fail(f"{out}: exists already (use --force to overwrite)")
    if synth is None and baseline is None:
        _fail("give SYNTH, or --baseline marginals to score the trivial generator alone")
    labels = {"real": str(real), "synth": str(synth) if synth is not None else "none"}
    if floor is not None:
        labels["floor"] = str(floor)
    result = run_evaluation(
        load_sample(real, name="REAL"),
        None if synth is None else load_sample(synth, name="SYNTH"),
        floor=None if floor is None else load_sample(floor, name="floor"),
        split=split, baseline=baseline, seed=seed, labels=labels,
    )
    write_report(result, out, force=force)
    summary = result.report.get("summary", {})
    for key, s in summary.items():
        typer.echo(f"{key}: median ratio to floor {s['median_ratio']:.2f}x, "
                   f"{s['within_2x']}/{s['metrics_with_ratio']} metrics within 2x")
    for key, d in result.report["discriminator"].items():
        if d and d.get("auc") is not None:
            tells = ", ".join(f"{c} {a:.2f}" for c, a in list(d.get("tells", {}).items())[:3])
            typer.echo(f"discriminator ROC AUC, reference vs {key}: {d['auc']:.3f} "
                       f"(0.5 = indistinguishable)" + (f"; alone: {tells}" if tells else ""))
    typer.echo(f"report -> {out / 'report.html'} ({time.perf_counter() - started:.1f} s)")


detect_app = typer.Typer(help="The autoencoder anomaly detector: train on normal traffic, score captures.",
                         no_args_is_help=True)
app.add_typer(detect_app, name="detect")


@detect_app.command("train")
@clean_errors
def detect_train(
    captures: List[Path] = typer.Argument(..., help="Captures (or dataset folders) of normal traffic."),
    out: Path = typer.Option(..., "--out", "-o", help="Detector folder to write."),
    mode: str = typer.Option("window", help="Units scored: window, flow or packet."),
    detector: str = typer.Option("autoencoder", help="autoencoder, isolation_forest or lof."),
    threshold: str = typer.Option("quantile", help="quantile, gaussian_fit or evt."),
    q: float = typer.Option(0.999, help="Quantile of normal scores (threshold quantile)."),
    min_consecutive: int = typer.Option(2, help="Flag only runs of this many units (overlapping windows: an event spans 2)."),
    cooldown: int = typer.Option(0, help="Alerts fewer units apart merge into one."),
    min_attack_windows: int = typer.Option(3, help="Flagged units that make a capture an attack."),
    seed: int = typer.Option(0, help="Seed for every random step."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing detector folder."),
) -> None:
    """Learn normal traffic from captures and save the detector bundle."""
    from necst.detect.api import train

    det = train(captures, out, mode=mode, detector=detector, threshold=threshold, q=q,
                min_consecutive=min_consecutive, cooldown=cooldown,
                min_attack_windows=min_attack_windows, seed=seed, force=force)
    typer.echo(f"{det.kind} ({det.mode} mode) trained on {det.n_train_units_} units, threshold "
               f"{det.threshold_['threshold']:.6g} ({det.threshold_['method']}) -> {out}")


@detect_app.command("score")
@clean_errors
def detect_score(
    capture: Path = typer.Argument(..., help="Capture (or dataset folder) to score."),
    detector: Path = typer.Option(..., "--detector", "-d", help="Detector folder from `necst detect train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Report JSON; the CSV of every unit goes beside it."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing reports."),
) -> None:
    """Score a capture: report.json (decision, top units, explanations) and report.csv."""
    from necst.detect.api import score_capture

    rep = score_capture(capture, detector, out, force=force)
    for w in rep.get("warnings", []):
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"{rep['decision']}: {rep['anomalous_units']} of {rep['total_units']} {rep['mode']} units "
               f"over threshold {rep['threshold']:.6g} -> {out}")


@detect_app.command("live")
@clean_errors
def detect_live(
    iface: str = typer.Option(..., "--iface", "-i", help="Interface to sniff."),
    duration: float = typer.Option(..., "--duration", help="Seconds to listen."),
    detector: Path = typer.Option(..., "--detector", "-d", help="Detector folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Report JSON (CSV beside it)."),
    batch_s: float = typer.Option(2.0, help="Seconds of traffic scored per batch."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing reports."),
) -> None:
    """Sniff an interface, score batch by batch, print alerts as they happen."""
    from necst.detect.live import run_live

    rep = run_live(iface, duration, detector, out, batch_s=batch_s, force=force,
                   on_alert=lambda line: typer.echo(line))
    typer.echo(f"{rep['decision']}: {rep['anomalous_units']} of {rep['total_units']} units, "
               f"{rep['packets']} packets -> {out}")


@app.command()
@clean_errors
def bench(
    detector: List[Path] = typer.Option(..., "--detector", "-d", help="Detector folder (repeat: modes and baselines side by side)."),
    normal: Path = typer.Option(..., "--normal", help="Real held-out normal capture (Ethernet)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bench folder to write: bench.json, bench.html, plots/, captures/."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Generator bundle (default: the bundled model)."),
    scenarios: Optional[List[str]] = typer.Option(None, "--scenarios", help="Scenario names (repeatable; default: all, with _slow variants)."),
    attacks: Optional[Path] = typer.Option(None, "--attacks", help="Folder of real attack captures (*/*.pcap) to replay (default: ../shared/data/attacks)."),
    background: float = typer.Option(600.0, "--background", help="Seconds of each background that attacks are injected into."),
    synthetic_rate: str = typer.Option("match", "--synthetic-rate", help="'match': scale the generator's rate to the real packet count; or a factor."),
    no_replay: bool = typer.Option(False, "--no-replay", help="Skip the replayed real attacks."),
    no_learned: bool = typer.Option(False, "--no-learned", help="Skip training the generator on attack captures."),
    no_sweeps: bool = typer.Option(False, "--no-sweeps", help="Skip the intensity and volume sweeps."),
    seed: int = typer.Option(0, "--seed", help="Same inputs and seed: the same captures."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing bench folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
) -> None:
    """Stress-test detectors: normal FP rates, labelled attack scenarios, replays, sweeps."""
    from necst.bench.runner import BenchConfig, run_bench

    try:
        rate = synthetic_rate if synthetic_rate == "match" else float(synthetic_rate)
    except ValueError:
        raise NecstError(f"--synthetic-rate: 'match' or a number, not {synthetic_rate!r}") from None
    cfg = BenchConfig(scenarios=scenarios or None, seed=seed, background_s=background, synthetic_rate=rate,
                      attacks_dir=str(attacks) if attacks else None, replay=not no_replay)
    if no_learned:
        cfg.learned = ()
    if no_sweeps:
        cfg.sweep_scenarios, cfg.volumes = (), ()
    rep = run_bench(detector, normal, out, model=model, config=cfg, force=force,
                    echo=None if quiet else (lambda line: typer.echo(line, err=True)))
    n = len(rep["scenarios"]) + len(rep["replays"]) + len(rep["learned"]) + len(rep["intensity"]) + len(rep["volume"])
    typer.echo(f"{n} labelled captures scored by {len(rep['inputs']['detectors'])} detector(s) in "
               f"{rep['seconds']:.0f} s -> {out / 'bench.html'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
