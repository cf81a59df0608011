"""Profile of a graph: operation counts and flash bytes against hand counts; RAM from the
memory plan, planned never above naive."""

import dataclasses
import json

import numpy as np
import pytest

from bnnkit.cli import main
from bnnkit.cost.graph_cost import format_profile, profile
from bnnkit.errors import BnnkitError
from bnnkit.graph import OPS, Graph, Op

rng = np.random.default_rng(0)


def conv_net() -> Graph:
    ops = [
        Op("input_conv2d", ["input"], "a", {"stride": 1, "padding": 1}, {"weight": rng.random((8, 1, 3, 3)) < 0.5}),
        Op("threshold", ["a"], "b", {}, {"thresh": np.zeros(8, np.int32), "flip": np.zeros(8, bool)}),
        Op("maxpool", ["b"], "c", {"kernel": 2, "stride": 2}),
        Op(
            "binary_conv2d",
            ["c"],
            "d",
            {"stride": 1, "padding": 0, "pad": "zero"},
            {"weight": rng.random((3, 8, 3, 3)) < 0.5},
        ),
        Op("flatten", ["d"], "e"),
        Op("affine", ["e"], "f", {}, {"scale": np.ones(12, np.float32), "bias": np.zeros(12, np.float32)}),
        Op("argmax", ["f"], "label"),
    ]
    return Graph((1, 8, 8), ops)


def test_counts_by_hand():
    result = profile(conv_net())
    rows = result["layers"]
    assert rows[0]["int_ops"] == 8 * 8 * 8 * 9  # 8 maps of 8x8, 9 taps each
    assert rows[1]["int_ops"] == 8 * 64  # one comparison per value
    assert rows[2]["int_ops"] == 8 * 16 * 3  # 3 comparisons per 2x2 window
    assert rows[3]["binary_macs"] == 3 * 2 * 2 * 8 * 9  # 4x4 -> 2x2 valid conv
    assert rows[5]["fp_ops"] == 2 * 12 and rows[6]["int_ops"] == 11
    assert rows[0]["weight_bytes"] == 8 * 2  # 9 bits per output channel -> 2 bytes
    assert rows[3]["weight_bytes"] == 3 * 9  # 72 bits -> 9 bytes
    assert rows[1]["weight_bytes"] == 8 * 4 + 1  # thresholds + 8 flip bits
    assert rows[5]["weight_bytes"] == 12 * 8
    assert result["totals"]["binary_macs"] == sum(r["binary_macs"] for r in rows)
    m = result["memory"]
    assert m["input_bytes"] == 64 and m["planned_peak_bytes"] <= m["naive_bytes"]
    assert rows[0]["storage"] == "fused" and rows[4]["storage"] == "view"


def test_an_op_without_a_cost_rule_is_named(monkeypatch):
    # Found by mypy: OpDef.cost may be None while a new op is being added; profile called it
    # anyway ("'NoneType' object is not callable").
    monkeypatch.setitem(OPS, "argmax", dataclasses.replace(OPS["argmax"], cost=None))
    with pytest.raises(BnnkitError, match=r"^op argmax: no cost rule in the op table"):
        profile(conv_net())


def test_cli_profile_json_and_table(tmp_path, capsys):
    g = conv_net()
    g.save(tmp_path / "m.bnn")
    assert main(["profile", str(tmp_path / "m.bnn"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["totals"] == profile(g)["totals"]
    text = format_profile(result)
    assert "naive" in text and "planned" in text and text.count("\n") >= len(g.ops) + 3


def test_energy_prices_each_operation_class():
    result = profile(conv_net())
    t, rows = result["totals"], result["layers"]
    stored = sum(r["activation_bytes"] for r in rows if r["storage"] == "stored")
    e = t["energy"]
    assert e["binary_pj"] == t["binary_macs"] * (1 + 5 + 1) * 0.1 / 32
    assert e["int_pj"] == t["int_ops"] * 0.1 and e["fp_pj"] == t["fp_ops"] * 3.7
    assert e["memory_pj"] == (t["weight_bytes"] + 2 * (64 + stored)) * 10 / 8  # all of it fits 8 KB
    assert e["total_pj"] == sum(v for k, v in e.items() if k != "total_pj")
    assert "Horowitz" in format_profile(result)


def test_device_energy_only_where_a_datasheet_is_cited():
    from bnnkit.runtime.cortex_m import TARGETS, latency_estimate

    m4 = latency_estimate(TARGETS["cortex-m4"], 1e6)
    assert m4["latency_ms_estimate"] == 1e3 * 1e6 / 80e6
    assert m4["energy_uj_estimate"] == 1e6 * 79e-12 * 3.0 * 1e6 and "DS12469" in m4["energy_model"]
    assert "energy_uj_estimate" not in latency_estimate(TARGETS["cortex-m3"], 1e6)
