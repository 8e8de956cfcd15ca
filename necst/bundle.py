"""The safe bundle: a folder of models and arrays that loads only if nothing was changed.

A bundle holds ``manifest.json`` (necst version, schema version, kind, a free-form JSON
config, and the sha256 of every other file), Keras models (``.keras``), arrays (``.npz``,
loaded with ``allow_pickle=False``) and JSON files. Nothing in it is a pickle, so loading a
bundle from elsewhere cannot run code; hashes make tampering and truncation a clear error.

Writing goes to a temporary sibling folder renamed into place when complete, so a
crash never leaves a half-written bundle under the final name.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping

import numpy as np

from necst._files import sha256_file
from necst._version import SCHEMA_VERSION, __version__
from necst.errors import BundleError, OutputExistsError

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1  # the layout of the manifest itself
_ALLOWED_SUFFIXES = (".keras", ".npz", ".json")


class BundleWriter:
    """Collects files in a temporary folder; :meth:`commit` hashes them and renames into place.

    Use as a context manager::

        with BundleWriter(out, kind="detector", config={...}) as w:
            w.add_arrays("scaler.npz", center=c, scale=s)
            w.add_json("thresholds.json", {...})
            w.add_file("model.keras", lambda p: model.save(p))
    """

    def __init__(self, out: str | Path, kind: str, config: Mapping[str, Any] | None = None,
                 force: bool = False):
        self.out = Path(out)
        self.kind = kind
        self.config = dict(config or {})
        if self.out.exists() and not force:
            raise OutputExistsError("exists already (use --force to overwrite)", self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self._names: list[str] = []

    def _target(self, name: str) -> Path:
        if "/" in name or "\\" in name or name.startswith(".") or name == MANIFEST:
            raise BundleError(f"invalid file name in bundle: {name!r}")
        if not name.endswith(_ALLOWED_SUFFIXES):
            raise BundleError(f"bundle files must end in {', '.join(_ALLOWED_SUFFIXES)}: {name!r}")
        if name in self._names:
            raise BundleError(f"file added twice to bundle: {name!r}")
        self._names.append(name)
        return self.tmp / name

    def add_arrays(self, name: str, **arrays: np.ndarray) -> None:
        for key, a in arrays.items():
            if np.asarray(a).dtype == object:
                raise BundleError(f"array {key!r} in {name} has dtype object; bundles hold no pickles")
        np.savez(self._target(name), **{k: np.asarray(v) for k, v in arrays.items()})

    def add_json(self, name: str, obj: Any) -> None:
        self._target(name).write_text(json.dumps(obj, indent=1, sort_keys=True))

    def add_file(self, name: str, write: Callable[[Path], None]) -> None:
        """Let a library write its own file (``model.save(path)``) under a checked name."""
        write(self._target(name))

    def commit(self) -> Path:
        files = {}
        for name in self._names:
            p = self.tmp / name
            if not p.is_file():
                raise BundleError(f"bundle file {name!r} was not written")
            files[name] = sha256_file(p)
        manifest = {
            "bundle_format": BUNDLE_FORMAT,
            "necst_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "config": self.config,
            "files": files,
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Bundle:
    """A verified bundle: every file's hash checked, nothing missing, nothing extra."""

    def __init__(self, path: str | Path, kind: str | None = None):
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not self.path.is_dir():
            raise BundleError("not a bundle folder", self.path)
        if not mpath.is_file():
            raise BundleError("no manifest.json; not a necst bundle", self.path)
        try:
            manifest = json.loads(mpath.read_text())
            files: Dict[str, str] = dict(manifest["files"])
            schema = manifest["schema_version"]
            bkind = manifest["kind"]
        except (ValueError, KeyError, TypeError) as e:
            raise BundleError(f"manifest.json is unreadable ({e.__class__.__name__})", self.path) from None
        if schema != SCHEMA_VERSION:
            raise BundleError(
                f"bundle has schema version {schema}, this necst reads {SCHEMA_VERSION}; "
                "retrain or use a matching necst", self.path)
        if manifest.get("bundle_format") != BUNDLE_FORMAT:
            raise BundleError(f"unknown bundle format {manifest.get('bundle_format')!r}", self.path)
        if kind is not None and bkind != kind:
            raise BundleError(f"bundle holds a {bkind!r}, expected a {kind!r}", self.path)
        present = {p.name for p in self.path.iterdir()} - {MANIFEST}
        missing = sorted(set(files) - present)
        extra = sorted(present - set(files))
        if missing:
            raise BundleError(f"missing file(s): {', '.join(missing)}", self.path)
        if extra:
            raise BundleError(f"unexpected file(s) not in the manifest: {', '.join(extra)}", self.path)
        for name, digest in files.items():
            if sha256_file(self.path / name) != digest:
                raise BundleError(f"{name} does not match its sha256 in manifest.json (tampered or corrupt)",
                                  self.path)
        self.manifest = manifest
        self.kind = bkind
        self.config = manifest.get("config", {})
        self.files = files

    def file(self, name: str) -> Path:
        if name not in self.files:
            raise BundleError(f"bundle has no file {name!r}", self.path)
        return self.path / name

    def arrays(self, name: str) -> Dict[str, np.ndarray]:
        try:
            with np.load(self.file(name), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except ValueError as e:
            raise BundleError(f"{name}: {e}", self.path) from None

    def json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())


def load(path: str | Path, kind: str | None = None) -> Bundle:
    """Open and verify a bundle; raises BundleError with a one-line reason."""
    return Bundle(path, kind=kind)
