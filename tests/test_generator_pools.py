"""What a generator bundle stores so that generating costs less: the packet pools of the flow level,
and the heads' hidden width as a flow setting. Neither may change what is generated."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from necst.model.bundle import POOLS, POOLS_META, load_generator, save_generator
from necst.model.flow import FlowModel, _Labels
from necst.model.length_codes import LengthCodes
from test_flow_model import _reloaded_without, make_features

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"


def _same_pool(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for col in a:
        x, y = a[col], b[col]
        assert isinstance(x, _Labels) == isinstance(y, _Labels), col
        if isinstance(x, _Labels):
            assert x.labels == y.labels and np.array_equal(x.codes, y.codes), col
        else:
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), col


@pytest.fixture(scope="module")
def resaved(tmp_path_factory):
    """The default model saved again by this necst: with its packet pools."""
    if not DEFAULT_MODEL.is_dir():
        pytest.skip("no bundled default model")
    g = load_generator(DEFAULT_MODEL)
    out = tmp_path_factory.mktemp("pools") / "model"
    save_generator(out, packet=g.packet, flow=g.flow, aggregate=g.aggregate)
    return out


def test_stored_pools_are_the_decoded_pools_and_give_the_same_capture(resaved, tmp_path):
    from necst.generate.sampler import generate

    assert (resaved / POOLS).is_file() and (resaved / POOLS_META).is_file()
    stored = load_generator(resaved)
    decoded = load_generator(resaved)
    decoded.flow.__dict__.pop("_pools")  # as from a bundle without pools: decoded on first use
    assert set(stored.flow._pools) == set(stored.flow.vocab_)
    for ki, kind in enumerate(("tcp", "udp", "noflow")):
        if kind not in decoded.flow.vocab_:
            continue
        got = stored.flow._pools[kind]
        assert got[0] is stored.packet
        from necst.model.flow import KINDS

        decoded.flow._packet_fields(kind, KINDS.index(kind), np.zeros(0, np.int64), decoded.packet, 0)
        _same_pool(got[1], decoded.flow._pools[kind][1])
    runs = []
    for g in (stored, decoded):
        r = generate(tmp_path / f"{len(runs)}.pcap", g, n_packets=4000, seed=3, workers=0)
        runs.append(r.path.read_bytes())
    assert runs[0] == runs[1]


def test_another_packet_model_rebuilds_the_pools(resaved):
    """The stored pools go with the bundle's packet level: another packet model passed to the flow
    level decodes its own (seeded, so here the same draws)."""
    g = load_generator(resaved)
    kind = next(iter(g.flow.vocab_))
    pool = g.flow._pools[kind]
    other = load_generator(DEFAULT_MODEL).packet
    from necst.model.flow import KINDS

    g.flow._packet_fields(kind, KINDS.index(kind), np.zeros(0, np.int64), other, 0)
    assert g.flow._pools[kind][0] is other and g.flow._pools[kind] is not pool
    _same_pool(pool[1], g.flow._pools[kind][1])  # seeded: the same draws


def test_no_pools_without_a_pool_size(tmp_path):
    if not DEFAULT_MODEL.is_dir():
        pytest.skip("no bundled default model")
    g = load_generator(DEFAULT_MODEL)
    g.flow.code_pool = 0
    out = save_generator(tmp_path / "m", packet=g.packet, flow=g.flow, aggregate=g.aggregate)
    assert not (out / POOLS).exists()
    assert "_pools" not in load_generator(out).flow.__dict__


def test_head_width_is_a_setting_and_old_bundles_load_with_64(tmp_path, monkeypatch):
    pf = make_features(n_tcp=30, n_udp=0, n_noflow=0)
    pm = LengthCodes(n_bins=4).fit(pf)
    fm = FlowModel(units=8, head_units=12, window=32, epochs=1, batch_size=64, val_fraction=0.0).fit(pf, pm)
    assert fm.arrays_["tcp"]["flag_hidden_kernel"].shape[1] == 12
    assert fm.get_config()["head_units"] == 12
    back = _reloaded_without(fm, "head_units", tmp_path, monkeypatch)
    assert back.head_units == 64  # what every head had before it was a setting
    assert back._net("tcp").hidden == 12  # sampling follows the stored weights
