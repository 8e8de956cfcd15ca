"""necst: learn traffic from captures, write valid synthetic captures, stress-test a detector.

The public API, re-exported here lazily (importing ``necst`` loads none of the stages):

    from necst import process_captures, load_dataset, CaptureReader   # process
    from necst import PacketModel, FlowModel, AggregateModel          # models
    from necst import generate, CaptureWriter                        # generate
    from necst import compare, evaluate                              # evaluate
    from necst import Detector, IsolationForestDetector, LOFDetector  # detect
    from necst import run_bench, BenchConfig                         # bench
"""
from __future__ import annotations

import importlib
import os

# TensorFlow's C++ logging prints a CUDA error line on every machine without a GPU; necst reports
# its own errors. Set TF_CPP_MIN_LOG_LEVEL yourself to see TensorFlow's.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from necst._version import SCHEMA_VERSION, __version__
from necst.errors import NecstError

_EXPORTS = {
    "CaptureReader": "necst.capture.reader",
    "CaptureWriter": "necst.capture.writer",
    "write_capture": "necst.capture.writer",
    "process_captures": "necst.process.dataset",
    "load_dataset": "necst.process.dataset",
    "read_packets": "necst.process.dataset",
    "read_flows": "necst.process.dataset",
    "FlowMeter": "necst.process.flows",
    "FeatureSpec": "necst.process.features",
    "PacketModel": "necst.model.packet",
    "FlowModel": "necst.model.flow",
    "AggregateModel": "necst.model.aggregate",
    "generate": "necst.generate",
    "compare": "necst.evaluate",
    "evaluate": "necst.evaluate",
    "Detector": "necst.detect",
    "IsolationForestDetector": "necst.detect",
    "LOFDetector": "necst.detect",
    "run_bench": "necst.bench",
    "BenchConfig": "necst.bench",
}

__all__ = ["__version__", "SCHEMA_VERSION", "NecstError", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'necst' has no attribute {name!r}")
