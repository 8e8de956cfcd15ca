"""The `necst` command: parse arguments, call the API, print. No logic lives here.

Heavy modules (TensorFlow, the model stages) are imported inside the commands that need
them, so `necst --help` and `necst process` start fast.
"""
from __future__ import annotations

import functools
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
            typer.echo(f"discriminator ROC AUC, reference vs {key}: {d['auc']:.3f} "
                       f"(0.5 = indistinguishable)")
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
