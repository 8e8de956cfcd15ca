"""necst: learn traffic from captures, write valid synthetic captures, stress-test a detector.

The public API, re-exported here lazily (importing ``necst`` loads none of the stages):

    from necst import process_captures, load_dataset, CaptureReader   # process
    from necst import compare, evaluate                              # evaluate
    from necst import Detector, IsolationForestDetector, LOFDetector  # detect
"""
from __future__ import annotations

import importlib

from necst._version import SCHEMA_VERSION, __version__
from necst.errors import NecstError

_EXPORTS = {
    "CaptureReader": "necst.capture.reader",
    "process_captures": "necst.process.dataset",
    "load_dataset": "necst.process.dataset",
    "read_packets": "necst.process.dataset",
    "read_flows": "necst.process.dataset",
    "FlowMeter": "necst.process.flows",
    "FeatureSpec": "necst.process.features",
    "compare": "necst.evaluate",
    "evaluate": "necst.evaluate",
    "Detector": "necst.detect",
    "IsolationForestDetector": "necst.detect",
    "LOFDetector": "necst.detect",
}

__all__ = ["__version__", "SCHEMA_VERSION", "NecstError", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'necst' has no attribute {name!r}")
