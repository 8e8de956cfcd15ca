"""notebooks/demo.ipynb runs from top to bottom: its code cells are executed in order, in the
notebook's folder, so the walk-through can never silently go stale."""
from __future__ import annotations

import json
import os
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "demo.ipynb"


def test_demo_notebook_runs(shared_data):
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
            for c in cells if c["cell_type"] == "code"]
    assert len(code) >= 4
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(NOTEBOOK.parent)
    try:
        for i, src in enumerate(code):
            exec(compile(src, f"{NOTEBOOK.name}[cell {i}]", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert len(namespace["packets"]) > 1000 and len(namespace["sample"]) == len(namespace["packets"])
