"""bench stage: how a detector holds up, with ground truth, on traffic no capture on disk offers.

``scenarios`` (parameterized attack generators crafted by necst's crafter), ``hosts`` (who lives in a
background), ``frames`` (explicit fields -> frames, payload text, replay remapping), ``inject``
(backgrounds, exact per-packet labels, capture + labels.csv), ``replay`` (real and learned attacks),
``metrics``, ``runner`` (``necst bench``) and ``report`` (bench.json, bench.html, plots).
TensorFlow is imported only to load or train a generator.
"""
from necst.bench.hosts import Hosts
from necst.bench.inject import Traffic, read_labels
from necst.bench.runner import Bench, BenchConfig, run_bench
from necst.bench.scenarios import SCENARIOS, Injection, make, scenario_names

__all__ = ["Bench", "BenchConfig", "Hosts", "Injection", "SCENARIOS", "Traffic", "make", "read_labels", "run_bench",
           "scenario_names"]
