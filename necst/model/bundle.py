"""The generator bundle: one folder holding the packet, flow and aggregate levels.

It is a ``necst.bundle`` of kind ``generator`` (hash-verified, no pickle). Its manifest config
holds ``levels`` (those present), ``dataset_fingerprint`` and one entry per level with that
level's config (the packet level's includes its fitted FeatureSpec). Each level class has
``write_to(writer)`` and ``read_from(bundle)``; this module only assembles them, and runs
``necst train`` over the levels asked for.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from necst._version import __version__
from necst.bundle import BundleWriter, load
from necst.errors import BundleError, NecstError

KIND = "generator"
SEAL = "generator.json"
POOLS = "packet_pools.npz"  # the packet fields the flow level draws per code (see write_packet_pools)
POOLS_META = "packet_pools.json"
POOLS_FORMAT = 1
LEVELS = ("packet", "flow", "aggregate")
# level -> (module, class); flow and aggregate come from their own modules when present
LEVEL_CLASSES = {"packet": ("necst.model.packet", "PacketModel"),
                 "flow": ("necst.model.flow", "FlowModel"),
                 "aggregate": ("necst.model.aggregate", "AggregateModel")}


@dataclass
class GeneratorModels:
    packet: Any = None
    flow: Any = None
    aggregate: Any = None


def dataset_fingerprint(meta: dict) -> str:
    """sha256 over the sha256 of each input capture, in the dataset's order."""
    try:
        digests = [str(e["sha256"]) for e in meta["inputs"]]
    except (KeyError, TypeError):
        raise NecstError("dataset meta has no inputs with sha256") from None
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def level_class(level: str):
    """The model class of a level (imported only when asked for: the levels load TensorFlow)."""
    if level not in LEVEL_CLASSES:
        raise NecstError(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
    module, name = LEVEL_CLASSES[level]
    return getattr(importlib.import_module(module), name)


def _seal(config: dict, necst_version: str) -> dict:
    return json.loads(json.dumps({"config": config, "necst_version": necst_version}, sort_keys=True))


def save_generator(out: str | Path, packet=None, flow=None, aggregate=None, *,
                   dataset_fingerprint: str | None = None, force: bool = False) -> Path:
    """Write the levels given into one generator bundle (temporary folder, renamed when done)."""
    models = {"packet": packet, "flow": flow, "aggregate": aggregate}
    if all(m is None for m in models.values()):
        raise NecstError("no model level to save")
    writer = BundleWriter(out, KIND, {"levels": [], "dataset_fingerprint": dataset_fingerprint},
                          force=force)
    try:
        for level in LEVELS:
            if models[level] is not None:
                models[level].write_to(writer)
                if level not in writer.config["levels"]:
                    writer.config["levels"].append(level)
        if packet is not None and flow is not None:
            write_packet_pools(writer, packet, flow)
        # The manifest itself is not hashed: a hashed copy of its config lets loading see any
        # edit to it (a changed number in a level's config would otherwise pass unnoticed).
        writer.add_json(SEAL, _seal(writer.config, __version__))
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def verify_seal(bundle) -> None:
    """Refuse a generator bundle whose manifest differs from its hashed copy."""
    try:
        sealed = bundle.json(SEAL)
    except ValueError:
        raise BundleError(f"{SEAL} is unreadable", bundle.path) from None
    if sealed != _seal(bundle.config, bundle.manifest.get("necst_version")):
        raise BundleError(f"manifest.json does not match {SEAL} (edited or corrupt)", bundle.path)


def load_generator(path: str | Path) -> GeneratorModels:
    """Every level of a generator bundle, verified (hashes, schema, format)."""
    bundle = load(path, kind=KIND)
    verify_seal(bundle)
    levels = bundle.config.get("levels")
    if not isinstance(levels, list) or not levels:
        raise BundleError("manifest lists no model levels", bundle.path)
    out = GeneratorModels()
    for level in levels:
        if level not in LEVELS:
            raise BundleError(f"unknown level {level!r} in manifest", bundle.path)
        try:
            cls = level_class(level)
        except NecstError:
            raise BundleError(f"bundle holds the {level} level, which this necst version cannot read",
                              bundle.path) from None
        setattr(out, level, cls.read_from(bundle))
    read_packet_pools(bundle, out)
    return out


def _pool_kinds(flow) -> list[tuple[int, str]]:
    """(index in KINDS, kind) of the flow level's kinds, as ``FlowModel.sample`` numbers them."""
    from necst.model.flow import KINDS

    return [(ki, kind) for ki, kind in enumerate(KINDS) if kind in getattr(flow, "vocab_", {})]


def write_packet_pools(writer, packet, flow) -> None:
    """Store the flow level's per-code packet pools (``code_pool`` decoded draws of the packet
    level per code, seeded): decoding them costs about 2 CPU-s in every generating process, reading
    them a few ms. The stored pools are the ones the flow level would decode, so captures do not
    change; a bundle without them (older ones, or ``code_pool=0``) decodes them on first use."""
    from necst.model.flow import _Labels

    P = int(getattr(flow, "code_pool", 0) or 0)
    if P <= 0 or not hasattr(flow, "_packet_fields"):
        return
    arrays, kinds = {}, {}
    for ki, kind in _pool_kinds(flow):
        flow._packet_fields(kind, ki, np.zeros(0, np.int64), packet, 0)  # builds (or keeps) the pool
        cols = flow._pools[kind][1]
        meta = {"n_codes": int(flow.vocab_[kind].n_codes), "columns": list(cols), "labels": {}, "dtypes": {}}
        for col, a in cols.items():
            if isinstance(a, _Labels):
                if not all(isinstance(x, str) for x in a.labels):
                    return  # labels JSON cannot hold exactly: leave the pools to be decoded
                meta["labels"][col] = list(a.labels)
                a = a.codes
            a = np.asarray(a)
            if a.dtype == object:
                return
            meta["dtypes"][col] = a.dtype.str
            arrays[f"{kind}__{col}"] = _narrow(a)
        kinds[kind] = meta
    # compressed, integers in their narrowest type (read back exactly): 0.8 MB instead of 5.8 MB for the default model
    writer.add_file(POOLS, lambda path: np.savez_compressed(path, **arrays))
    writer.add_json(POOLS_META, {"format": POOLS_FORMAT, "code_pool": P, "kinds": kinds})


def _narrow(a: np.ndarray) -> np.ndarray:
    """Integers in the narrowest type that holds them (the value range), others as they are."""
    if a.dtype.kind not in "iu" or a.size == 0:
        return a
    lo, hi = int(a.min()), int(a.max())
    for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32):
        if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max:
            return a.astype(t)
    return a


def read_packet_pools(bundle, models: GeneratorModels) -> None:
    """Hand the stored packet pools to the flow level (see ``write_packet_pools``); pools that do
    not fit the levels loaded (another pool size or code count) are left to be decoded."""
    flow, packet = models.flow, models.packet
    if flow is None or packet is None or POOLS not in bundle.files or POOLS_META not in bundle.files:
        return
    from necst.model.flow import _Labels

    try:
        meta = bundle.json(POOLS_META)
        if meta.get("format") != POOLS_FORMAT or int(meta["code_pool"]) != int(getattr(flow, "code_pool", 0)):
            return
        arrays = bundle.arrays(POOLS)
        P = int(meta["code_pool"])
        pools = {}
        for _, kind in _pool_kinds(flow):
            m = meta["kinds"][kind]
            n = int(flow.vocab_[kind].n_codes)
            if int(m["n_codes"]) != n:
                return
            cols = {}
            for col in m["columns"]:
                a = arrays[f"{kind}__{col}"].astype(np.dtype(m["dtypes"][col]))
                if len(a) != n * P:
                    raise ValueError(f"pool column {kind}/{col} has {len(a)} rows, not {n * P}")
                cols[col] = _Labels(a, m["labels"][col]) if col in m["labels"] else a
            pools[kind] = (packet, cols)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{POOLS} is incomplete or malformed ({e.__class__.__name__}: {e})",
                          bundle.path) from None
    flow.__dict__.setdefault("_pools", {}).update(pools)


def train_generator(dataset: str | Path, out: str | Path, level: str = "packet", *,
                    model: str | Path | None = None, force: bool = False, seed: int = 0,
                    packet_params: dict | None = None, flow_params: dict | None = None, verbose: int = 1,
                    echo: Callable[[str], None] = print) -> GeneratorModels:
    """``necst train``: fit the level(s) asked for and write one bundle holding every level.

    ``level``: packet, flow, aggregate or all. Flow needs a packet level: from ``model`` (an
    existing bundle) or trained here for ``all``. Levels not trained are carried over from
    ``model``. ``packet_params`` / ``flow_params`` go to the level's constructor (sizes, epochs).
    """
    from necst.process.dataset import load_dataset

    if level not in LEVELS + ("all",):
        raise NecstError(f"unknown level {level!r}; choose from packet, flow, aggregate, all")
    wanted = list(LEVELS) if level == "all" else [level]
    classes = {lv: level_class(lv) for lv in wanted}  # fail early, before a long training
    out = Path(out)
    if out.exists() and not force:
        raise NecstError("exists already (use --force to overwrite)", out)
    models = load_generator(model) if model is not None else GeneratorModels()
    if "packet" in wanted and "flow" not in wanted and models.flow is not None:
        # the flow level speaks in the old packet level's codes: it cannot ride along
        echo("note: the flow level of --model is dropped (it was learned on the old packet codes)")
        models.flow = None
    data = load_dataset(dataset)
    fingerprint = dataset_fingerprint(data.meta)
    for lv in wanted:
        echo(f"training the {lv} level on {data.packets.num_rows} packets")
        if lv == "packet":
            m = classes[lv](seed=seed, verbose=verbose, **(packet_params or {})).fit(data)
            echo(f"packet level: {m.epochs_run_} epochs, best validation loss {m.val_loss_:.4f}, "
                 f"{len(m.mixtures_)} mixtures, {m.fit_seconds_:.1f} s")
        elif lv == "flow":
            if models.packet is None:
                raise NecstError("the flow level needs a packet level: give --model with one, "
                                 "or train --level all")
            m = classes[lv](seed=seed, **(flow_params or {})).fit(data, models.packet)
        else:
            m = classes[lv](seed=seed).fit(data)
        setattr(models, lv, m)
    save_generator(out, packet=models.packet, flow=models.flow, aggregate=models.aggregate,
                   dataset_fingerprint=fingerprint, force=force)
    return models
