"""Baseline defenses (CLP, Fine-Pruning, random) and the benchmark harness, end to end through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnx_onp.baselines import (DEFENSES, ClpConfig, FpConfig, RandomConfig, activation_tensor, channel_lipschitz, clp,
                                fine_pruning, last_conv_layer, pruned_neuron_count, random_pruning)
from onnx_onp.bench import DataSplits, PeakRss, der, discover_cases, open_case
from onnx_onp.data import Spec
from onnx_onp.errors import MaskError
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model, load_model_proto
from onnx_onp.metrics import Prepared, prepare
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp_cli.main import main

from .conftest import DATA, FIXTURES, REAL_MODELS, need

TINY = FIXTURES / "models" / "tiny_badnet_cifar10"


def convnet(w1: np.ndarray, w2: np.ndarray, *, bn_scale: np.ndarray | None = None, classes: int = 4,
            seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(w1) -> [BN] -> Relu -> Conv(w2) -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    c1, c2 = w1.shape[0], w2.shape[0]
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(c1, np.float32), "b1"),
             numpy_helper.from_array(w2.astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(c2, np.float32), "b2"),
             numpy_helper.from_array(rng.normal(size=(classes, c2)).astype(np.float32), "wf"),
             numpy_helper.from_array(np.zeros(classes, np.float32), "bf")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1")]
    first = "c1"
    if bn_scale is not None:
        inits += [numpy_helper.from_array(bn_scale.astype(np.float32), "gamma"),
                  numpy_helper.from_array(np.zeros(c1, np.float32), "beta"),
                  numpy_helper.from_array(np.zeros(c1, np.float32), "mean"),
                  numpy_helper.from_array(np.ones(c1, np.float32), "var")]
        nodes.append(helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"],
                                      epsilon=1e-5, name="bn1"))
        first = "n1"
    nodes += [helper.make_node("Relu", [first], ["r1"], name="relu1"),
              helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _weights(seed=0, c1=8, c2=12):
    rng = np.random.default_rng(seed)
    return rng.normal(scale=0.3, size=(c1, 3, 3, 3)), rng.normal(scale=0.3, size=(c2, c1, 3, 3))


# -- CLP ----------------------------------------------------------------------------------------------------


def test_clp_flags_the_planted_channel():
    w1, w2 = _weights(c1=16, c2=16)
    w2[7] *= 25  # one channel with a huge kernel norm
    lm = load_model_proto(convnet(w1, w2))
    nmap = build_neuron_map(lm)
    result = clp(lm, nmap)
    assert nmap.pruned_neurons(result.mask) == {"conv2": [7]}
    assert result.info["per_layer"]["conv2"]["flagged"] == 1
    assert result.info["per_layer"]["conv1"]["flagged"] == 0
    assert result.info["skipped_unprunable"] == 0
    # UCLC is the largest singular value of each channel's [C_in, kh*kw] kernel
    uclc, bn = channel_lipschitz(lm, nmap.layer("conv2"))
    assert bn is None
    expected = [np.linalg.svd(w2[k].reshape(w2.shape[1], -1), compute_uv=False)[0] for k in range(w2.shape[0])]
    np.testing.assert_allclose(uclc, expected, rtol=1e-5)
    # a high enough threshold flags nothing
    assert not clp(lm, nmap, config=ClpConfig(u=10.0)).mask.any()


def test_clp_uses_the_batchnorm_scale():
    w1, w2 = _weights(c1=16, c2=16)
    scale = np.ones(16)
    scale[2] = -40.0  # |gamma / sqrt(var + eps)| counts, whatever its sign
    lm = load_model_proto(convnet(w1, w2, bn_scale=scale))
    nmap = build_neuron_map(lm)
    uclc, bn = channel_lipschitz(lm, nmap.layer("conv1"))
    assert bn == "bn1"
    norms = [np.linalg.svd(w1[k].reshape(3, -1), compute_uv=False)[0] for k in range(16)]
    np.testing.assert_allclose(uclc, np.array(norms) * np.abs(scale) / np.sqrt(1 + 1e-5), rtol=1e-5)
    assert nmap.pruned_neurons(clp(lm, nmap).mask) == {"conv1": [2]}


def test_clp_cannot_flag_in_layers_of_ten_channels_or_fewer():
    # With the unbiased std, one outlier among n values is at most (n - 1) / sqrt(n) std above the mean:
    # 2.85 for n = 10, so u = 3 never fires there, however extreme the channel.
    w1, w2 = _weights(c1=10, c2=11)
    w1[0] *= 1000
    w2[0] *= 1000
    lm = load_model_proto(convnet(w1, w2))
    nmap = build_neuron_map(lm)
    assert nmap.pruned_neurons(clp(lm, nmap).mask) == {"conv2": [0]}


# -- ANP ----------------------------------------------------------------------------------------------------


def test_anp_is_seeded_prunes_only_prunable_groups_and_nothing_without_steps():
    from onnx_onp.baselines import AnpConfig, anp

    w1, w2 = _weights(c1=8, c2=12)
    lm = load_model_proto(convnet(w1, w2))
    nmap = build_neuron_map(lm)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3, 8, 8)).astype(np.float32)
    y = MaskedEvaluator(lm, nmap).logits(x).argmax(axis=1)  # the model is right on its data: any loss is ANP's
    data = Prepared(x, y)
    config = AnpConfig(steps=20, batch_size=16, epsilon=0.8, threshold=0.5)
    first, again = anp(lm, nmap, data, config=config), anp(lm, nmap, data, config=config)
    assert np.array_equal(first.mask, again.mask) and first.info == {**again.info, "seconds_learning":
                                                                     first.info["seconds_learning"]}
    assert first.mask.any() and not (first.mask & ~nmap.prunable).any()
    assert 0 <= first.info["mask_min"] <= first.info["mask_p10"] <= first.info["mask_median"] <= 1
    assert not anp(lm, nmap, data, config=AnpConfig(steps=0)).mask.any()  # untrained masks stay at 1
    assert DEFENSES["anp"].needs_data and DEFENSES["anp"].config is AnpConfig


# -- Fine-Pruning -------------------------------------------------------------------------------------------


class ScriptedEvaluator:
    """Stands in for MaskedEvaluator: fixed activations, accuracy scripted by the number of pruned groups."""

    def __init__(self, tensor, activations, accuracy_by_count):
        self.extra_outputs = [tensor]
        self.provider = "scripted"
        self._act = {tensor: activations}
        self._acc = accuracy_by_count
        self.scored: list[np.ndarray] = []

    def activations(self, x, mask=None):
        return self._act

    def _one(self, mask):
        mask = np.zeros(0, bool) if mask is None else np.asarray(mask)
        self.scored.append(mask)
        return type("S", (), {"accuracy": self._acc[int(mask.sum())]})()

    def score(self, x, y, mask=None):
        return self._one(mask)

    def score_many(self, x, y, masks):
        return [self._one(m) for m in masks]


def test_fine_pruning_order_and_stopping_rule():
    lm = load_model_proto(convnet(*_weights()))
    nmap = build_neuron_map(lm)
    layer = last_conv_layer(nmap)
    assert layer.name == "conv2"
    tensor = activation_tensor(lm, layer.output)
    assert tensor == "r2"  # followed through the ReLU
    # per-channel activations with known ReLU means; channel 4 is large but negative: ReLU makes it the least
    means = np.array([5, 3, 9, 1, -50, 7, 2, 8, 6, 4, 10, 11], float)
    act = np.broadcast_to(means[None, :, None, None], (6, 12, 8, 8)).copy()
    expected_order = [4, 3, 6, 1, 9, 0, 8, 5, 7, 2, 10, 11]
    data = Prepared(x=np.zeros((6, 3, 8, 8), np.float32), y=np.zeros(6, np.int64))
    # base 0.90; the drop exceeds 0.05 first after 4 channels (0.84), later steps would look fine again
    acc = {0: 0.90, 1: 0.90, 2: 0.88, 3: 0.86, 4: 0.84}
    acc.update({k: 0.90 for k in range(5, 13)})
    ev = ScriptedEvaluator(tensor, act, acc)
    result = fine_pruning(lm, nmap, data, evaluator=ev, config=FpConfig(max_drop=0.05, chunk=2))
    assert result.info["order"] == expected_order
    assert nmap.pruned_neurons(result.mask) == {"conv2": sorted(expected_order[:3])}
    assert result.info["pruned_channels"] == 3 and result.info["stopped_at"] == 3
    assert result.info["curve"] == [0.90, 0.88, 0.86, 0.84]  # chunks of 2: stops after the chunk with the drop
    # every scored mask prunes a prefix of the order
    for mask in ev.scored[1:]:
        k = int(mask.sum())
        assert nmap.pruned_neurons(mask).get("conv2", []) == sorted(expected_order[:k])
    # never dropping: everything prunable in the layer goes
    ev = ScriptedEvaluator(tensor, act, {k: 0.9 for k in range(13)})
    assert fine_pruning(lm, nmap, data, evaluator=ev).info["pruned_channels"] == 12
    # dropping at once: nothing is pruned
    ev = ScriptedEvaluator(tensor, act, {0: 0.9, **{k: 0.5 for k in range(1, 13)}})
    result = fine_pruning(lm, nmap, data, evaluator=ev)
    assert not result.mask.any() and result.info["pruned_channels"] == 0


def test_fine_pruning_on_real_evaluator_matches_its_curve():
    lm = load_model_proto(convnet(*_weights(seed=3)))
    nmap = build_neuron_map(lm)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3, 8, 8)).astype(np.float32)
    ev = MaskedEvaluator(lm, nmap, provider="cpu", extra_outputs=["r2"])
    data = Prepared(x=x, y=ev.logits(x).argmax(axis=1))  # the model's own labels: accuracy 1 before pruning
    result = fine_pruning(lm, nmap, data, config=FpConfig(max_drop=0.1, full_curve=True))
    relu_mean = np.maximum(ev.activations(data.x)["r2"], 0).mean(axis=(0, 2, 3))
    assert result.info["order"] == list(np.argsort(relu_mean, kind="stable"))
    k = result.info["pruned_channels"]
    base = ev.score(data.x, data.y).accuracy
    curve = result.info["curve"]  # rounded to 4 decimals
    assert base == 1.0 and 0 < k < 12
    assert len(curve) == 12  # full_curve scores every step
    assert all(base - a <= 0.1 + 1e-4 for a in curve[:k])
    assert k == 12 or base - curve[k] > 0.1 - 1e-4
    if k:
        assert ev.score(data.x, data.y, result.mask).accuracy == pytest.approx(curve[k - 1], abs=1e-4)


# -- random -------------------------------------------------------------------------------------------------


def test_random_pruning_is_seeded_and_has_the_count():
    lm = load_model(need(TINY.with_suffix(".onnx")))
    nmap = build_neuron_map(lm)
    a = random_pruning(lm, nmap, config=RandomConfig(count=17, seed=3)).mask
    b = random_pruning(lm, nmap, config=RandomConfig(count=17, seed=3)).mask
    c = random_pruning(lm, nmap, config=RandomConfig(count=17, seed=4)).mask
    assert (a == b).all() and (a != c).any()
    assert pruned_neuron_count(nmap, a) == 17 and not (a & ~nmap.prunable).any()
    assert random_pruning(lm, nmap, config=RandomConfig(count=5, unit="groups")).mask.sum() == 5
    assert not random_pruning(lm, nmap).mask.any()
    with pytest.raises(MaskError):
        random_pruning(lm, nmap, config=RandomConfig(count=int(nmap.prunable.sum()) + 1))


def residual_net(c=6, classes=3) -> onnx.ModelProto:
    """x -> conv1 -> Relu -> conv2 -> Add(conv1's Relu) -> Relu -> pool -> Gemm: conv1 and conv2 tied per channel,
    plus a free conv3 branch concatenated in."""
    rng = np.random.default_rng(0)
    arr = {"w1": rng.normal(size=(c, 3, 3, 3)), "w2": rng.normal(size=(c, c, 3, 3)),
           "w3": rng.normal(size=(c, 3, 3, 3)), "wf": rng.normal(size=(classes, 2 * c))}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arr.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
             helper.make_node("Conv", ["x", "w3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
             helper.make_node("Concat", ["s", "c3"], ["cat"], axis=1, name="concat"),
             helper.make_node("Relu", ["cat"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_random_pruning_counts_neurons_of_tied_groups():
    lm = load_model_proto(residual_net())
    nmap = build_neuron_map(lm)
    sizes = sorted(len(g.neurons) for g in nmap.groups if g.prunable)
    assert sizes == [1] * 6 + [2] * 6  # conv3's channels alone, conv1+conv2 tied
    for seed in range(5):
        for count in (3, 7, 12, 18):
            mask = random_pruning(lm, nmap, config=RandomConfig(count=count, seed=seed)).mask
            assert pruned_neuron_count(nmap, mask) == count
    assert random_pruning(lm, nmap, config=RandomConfig(count=4, unit="groups")).mask.sum() == 4


# -- harness pieces -----------------------------------------------------------------------------------------


def test_der():
    assert der({"ca": 0.9, "asr": 1.0}, 0.9, 0.0) == 1.0
    assert der({"ca": 0.9, "asr": 1.0}, 0.8, 1.0) == pytest.approx(0.45)
    assert der({"ca": 0.9, "asr": 0.1}, 0.95, 0.3) == 0.5  # no credit for gains, no penalty for ASR rising


def test_peak_memory_is_the_highest_level_the_poller_saw_above_the_start(monkeypatch):
    """PeakRss on a scripted VmRSS (the real one depends on the allocator and the machine's load): a level the
    block reaches and leaves again still counts, and a block that ends below its start reports 0."""
    import threading

    from onnx_onp.bench import harness

    level = {"kb": 100_000}
    seen_high = threading.Event()

    def rss_kb():
        if level["kb"] > 150_000:
            seen_high.set()
        return level["kb"]

    monkeypatch.setattr(harness, "_rss_kb", rss_kb)
    with PeakRss() as memory:
        level["kb"] = 100_000 + 64 * 1024  # 64 MiB more, then back
        assert seen_high.wait(10), "the poller never ran"
        level["kb"] = 100_000
    assert memory.mb == 64
    with PeakRss() as lower:
        level["kb"] = 50_000
    assert lower.mb == 0


def test_gtsrb_split_is_the_training_split_of_the_zoo():
    from fixtures.zoo import train

    from onnx_onp.bench import GTSRB_SPLIT_SEED, GTSRB_TRAIN

    assert (GTSRB_TRAIN, GTSRB_SPLIT_SEED) == (train.GTSRB_TRAIN, train.GTSRB_SPLIT_SEED)
    need(DATA / "gtsrb_test.npz")
    zoo_train, zoo_test, _ = train.load_splits("gtsrb")
    pool, test = DataSplits(DATA).splits("gtsrb")
    assert (len(pool), len(test)) == (10_000, 2_630)
    np.testing.assert_array_equal(pool.x, zoo_train.x)
    np.testing.assert_array_equal(test.y, zoo_test.y)
    need(DATA / "mnist_test.npz")
    pool, test = DataSplits(DATA).splits("mnist")
    assert (len(pool), len(test)) == (2_000, 8_000)


def test_cases_are_discovered_with_their_datasets():
    cases = {c.name: c for c in discover_cases("all")}
    assert cases["tiny_badnet_cifar10"].dataset == "cifar10" and cases["tiny_badnet_cifar10"].family == "fixture"
    if REAL_MODELS.is_dir():
        assert cases["verazuo_badnet_mnist"].dataset == "mnist"
        assert cases["sashank_badnet_cifar10_clean"].dataset == "cifar10"
        assert {c.name for c in discover_cases("real")} == {p.stem for p in REAL_MODELS.glob("*.json")}
    assert [c.name for c in discover_cases("tiny_badnet_cifar10,tiny_badnet_cifar10")] == ["tiny_badnet_cifar10"]
    result = CliRunner().invoke(main, ["bench", "--cases", "no_such_model"])
    assert result.exit_code == 2 and "unknown case" in result.output



def test_open_case_gives_the_case_its_spec_model_map_and_evaluator():
    case, spec, model, nmap, evaluator = open_case("tiny_badnet_cifar10")
    assert case.name == "tiny_badnet_cifar10" and spec.target == Spec.load(case.spec).target
    assert nmap.num_groups == build_neuron_map(load_model(case.model)).num_groups
    x = np.zeros((2, *model.input_shape[1:]), dtype=np.float32)
    assert evaluator.logits(x).shape == (2, 10) and evaluator.provider == "CPUExecutionProvider"

# -- end to end ---------------------------------------------------------------------------------------------


def test_bench_end_to_end_on_the_tiny_fixture(tmp_path, monkeypatch):
    need(DATA / "cifar10_train.npz")
    spec = json.loads(need(TINY.with_suffix(".json")).read_text())

    # Record what every defense receives, and every input row the evaluator sees while a defense runs.
    received: list[Prepared] = []
    rows_seen: list[np.ndarray] = []
    in_defense = [False]
    for name, defense in list(DEFENSES.items()):
        def wrapped(lm, nmap, data, *, evaluator=None, config=None, _run=defense.run):
            received.append(data)
            in_defense[0] = True
            try:
                return _run(lm, nmap, data, evaluator=evaluator, config=config)
            finally:
                in_defense[0] = False
        monkeypatch.setitem(DEFENSES, name, dataclasses.replace(defense, run=wrapped))
    real_run = MaskedEvaluator.run

    def spy(self, x, mask=None, **kwargs):
        if in_defense[0]:
            rows_seen.append(np.array(x))
        return real_run(self, x, mask, **kwargs)

    monkeypatch.setattr(MaskedEvaluator, "run", spy)

    out, js = tmp_path / "table.md", tmp_path / "results.json"
    # ONP has its own end-to-end test (tests/test_onp.py); the baselines keep this one fast.
    result = CliRunner().invoke(main, ["bench", "--cases", "tiny_badnet_cifar10", "--test-limit", "300",
                                       "--defenses", "none,clp,fp,random",
                                       "--defense-size", "200", "--out", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "provider: CPUExecutionProvider" in result.output or "provider: CUDAExecutionProvider" in result.output
    assert "machine: " in result.output
    defenses = ["none", "clp", "fp", "random@clp", "random@fp"]
    table = out.read_text()
    for d in defenses:
        assert f"| tiny_badnet_cifar10 | cifar10 | {d} |" in result.output
        assert f"| tiny_badnet_cifar10 | cifar10 | {d} |" in table

    payload = json.loads(js.read_text())
    (case,) = payload["cases"]
    assert case["test_samples"] == 300 and case["defense_samples"] == 200
    rows = {r["defense"]: r for r in case["rows"]}
    assert list(rows) == defenses
    # `none` reproduces the fixture's CA/ASR (full test split) within the sampling error of 300 images
    none = rows["none"]
    assert none["pruned_groups"] == 0 and none["der"] == 0.5
    for value, reference, n in ((none["ca"], spec["clean_accuracy"], 300),
                                (none["asr"], spec["attack_success_rate"], case["attack_samples"])):
        assert abs(value - reference) <= 3.5 * math.sqrt(reference * (1 - reference) / n) + 0.01
    for name in ("random@clp", "random@fp"):
        assert rows[name]["pruned_neurons"] == rows[name.split("@")[1]]["pruned_neurons"]
    assert rows["fp"]["info"]["layer"] == "/conv2/Conv"
    # Fine-Pruning scores masks, so its wall time was measured (0.0 is what an unwired timer reports).
    assert rows["fp"]["seconds"] > 0

    # No defense saw poisoned or test data: each got the clean defense set, and every row the evaluator ran
    # during a defense is one of its images.
    lm = load_model(TINY.with_suffix(".onnx"))
    raw, _ = DataSplits().defense_and_test("cifar10", 200, 0)
    expected = prepare(lm, raw, Spec.load(TINY.with_suffix(".json")).preprocess)
    assert len(received) == len(defenses)
    for data in received:
        assert isinstance(data, Prepared)
        np.testing.assert_array_equal(data.x, expected.x)
        np.testing.assert_array_equal(data.y, expected.y)
    allowed = {row.tobytes() for row in expected.x}
    assert rows_seen and all(row.tobytes() in allowed for batch in rows_seen for row in batch)


def test_onp_time_table_lists_every_phase_and_the_ratios():
    from types import SimpleNamespace as NS

    from onnx_onp.bench.report import onp_time_lines

    seconds = {"total": 100.0, "trigger_synthesis": 40.0, "agent_training": 30.0, "decision": 20.0,
               "some_new_phase": 10.0, "onnxruntime": 50.0, "onnxruntime_share": 0.5}
    rows = [NS(defense="onp", seconds=100.0, info={"seconds": seconds, "detector": "trigger synthesis"}),
            NS(defense="clp", seconds=0.5, info={}), NS(defense="fp", seconds=10.0, info={})]
    result = NS(cases=[NS(case=NS(name="m"), rows=rows)])
    line = onp_time_lines(result)[-1]
    from onnx_onp.bench.report import onp_time_lines_from_json
    payload = {"cases": [{"name": "m", "rows": [{"defense": r.defense, "seconds": r.seconds, "info": r.info}
                                                for r in rows]}]}
    assert onp_time_lines_from_json(payload)[-1] == line
    assert line == ("| m | trigger synthesis | 100.0 | synthesis 40, agent training 30, decision 20, some_new_phase 10 "
                    "| 50% | 200× | 10× |")


def test_verdict_table_shows_which_detector_decided():
    from onnx_onp.bench.verdicts import VerdictRow, verdict_markdown, verdict_summary

    rows = [VerdictRow("warp", "fixtures", "WaNet", True, 0, "backdoor suspected", 8.34, 0, 0.85, 84.0,
                       "neuron perturbation", 1.71, 8.34),
            VerdictRow("patch", "fixtures", "BadNets", True, 0, "backdoor suspected", 5.5, 0, 0.88, 51.0,
                       "trigger synthesis", 5.5, None, synthesis_size_ratio=0.312),
            VerdictRow("sine", "fixtures", "SIG", True, 0, "backdoor suspected", 8.47, 0, 0.81, 99.0,
                       "neuron amplification", 1.56, 1.73, 8.47, True, 0.889, 0.222),
            VerdictRow("twin", "fixtures", "none (clean twin)", False, None, "no backdoor evidence", 1.01, 9,
                       0.87, 92.0, "trigger synthesis", 1.01, 1.38, 3.06),
            VerdictRow("lean", "fixtures", "none (clean twin)", False, None, "no backdoor evidence", 6.95, 1,
                       0.87, 303.0, "neuron amplification", 1.6, 1.52, 6.95, False, 0.927, 0.746)]
    table = verdict_markdown(rows, command="c", machine="m")
    assert "| warp | WaNet | **backdoor suspected** | neuron perturbation | 1.71 | 8.34 | – | – | 0 | 0 |" in table
    assert "| patch | BadNets | **backdoor suspected** | trigger synthesis | 5.50 (0.31) | – | – | – | 0 | 0 |" in table
    assert ("| sine | SIG | **backdoor suspected** | neuron amplification | 1.56 | 1.73 | 8.47 | yes (89% → 22%) "
            "| 0 | 0 |") in table
    assert "| twin | none (clean twin) | no backdoor evidence | none found | 1.01 | 1.38 | 3.06 | – | 9 | – |" in table
    # An unconfirmed suspicion is no verdict, but the table shows the search that turned it down.
    assert ("| lean | none (clean twin) | no backdoor evidence | none found | 1.60 | 1.52 | 6.95 | no (93% → 75%) "
            "| 1 | – |") in table
    assert verdict_summary(rows) == {"backdoored": 3, "flagged": 3, "target_right": 3, "clean": 2,
                                     "false_alarms": 0, "missed": []}


def test_draws_from_a_pool_no_larger_than_one_draw_are_refused():
    """Three 'draws' of 500 from a 500-image pool are one draw three times: the bench says so instead."""
    from onnx_onp.bench import BenchConfig, run_bench
    from onnx_onp.data import Dataset

    class SmallPool:
        def splits(self, dataset):
            pool = Dataset(np.zeros((500, 3, 32, 32), np.float32), np.arange(500) % 10, "small")
            return pool, pool

    case = discover_cases("tiny_badnet_cifar10")[0]
    seen = []
    result = run_bench([case], BenchConfig(defenses=("none",), draws=3), splits=SmallPool(),
                       on_error=lambda c, exc: seen.append(str(exc)))
    assert len(result.cases) == 1 and "would all be the same data" in result.cases[0].error
    assert seen == ["3 draws of 500 images from a pool of 500 would all be the same data"]


def test_run_bench_hands_over_each_draw_as_finished_and_skips_the_done_ones():
    """A long benchmark saves after every draw and a resumed one runs only the draws it lacks."""
    from onnx_onp.bench import BenchConfig, run_bench

    case = discover_cases("tiny_badnet_cifar10")[0]
    finished = []
    result = run_bench([case], BenchConfig(defenses=("none",), draws=3, test_limit=50),
                       on_result=lambda r: finished.append((r.draw, len(r.rows))),
                       skip=lambda c, draw: c.name == case.name and draw == 1)
    assert [r.draw for r in result.cases] == [0, 2]
    assert finished == [(0, 1), (2, 1)]


def test_agent_ablation_resume_keeps_earlier_draws_and_replaces_a_draw_measured_again():
    from benchmarks.agent_ablation import done_draws, merge_cases

    def entry(name, draw, error=None):
        return {"name": name, "draw": draw, "error": error, "rows": [{"defense": "onp", "draw": draw}]}

    earlier = {"cases": [entry("m", 0), entry("m", 2, error="DataError: x")], "seconds": 10.0}
    assert done_draws({"v": earlier}) == {("v", "m", 0)}  # a draw that failed is not done
    merged = merge_cases(earlier, {"cases": [entry("m", 2), entry("m", 1)], "seconds": 5.0})
    assert [(c["name"], c["draw"], c["error"]) for c in merged["cases"]] == [("m", 0, None), ("m", 1, None),
                                                                            ("m", 2, None)]
    assert merged["seconds"] == 15.0
    assert merge_cases(None, earlier) is earlier


def test_agent_ablation_baselines_join_a_saved_onp_run_on_the_same_data(tmp_path, capsys):
    """--baselines measures CLP, Fine-Pruning and random@onp beside saved ONP rows; other data is refused."""
    import json

    from benchmarks.agent_ablation import add_baselines
    from onnx_onp.bench import BenchConfig, machine_info, run_bench
    from onnx_onp.bench.report import result_to_json

    case = discover_cases("tiny_badnet_cifar10")[0]
    machine = machine_info()
    # A stand-in for a saved ONP run: CLP's rows, relabelled (ONP itself takes minutes).
    payload = result_to_json(run_bench([case], BenchConfig(defenses=("none", "clp"), test_limit=60)), machine)
    for row in payload["cases"][0]["rows"]:
        row["defense"] = {"clp": "onp"}.get(row["defense"], row["defense"])
    stand_in = next(r for r in payload["cases"][0]["rows"] if r["defense"] == "onp")
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"machine": machine, "runs": {"v": payload}}))

    add_baselines(str(path), None, machine)
    rows = {r["defense"]: r for r in json.loads(path.read_text())["runs"]["v"]["cases"][0]["rows"]}
    assert set(rows) == {"none", "onp", "clp", "fp", "random@clp", "random@fp", "random@onp"}
    assert rows["random@onp"]["pruned_neurons"] == stand_in["pruned_neurons"]
    assert (rows["clp"]["ca"], rows["clp"]["asr"]) == (stand_in["ca"], stand_in["asr"])  # the same mask, the same data
    before = path.read_text()
    assert len(add_baselines(str(path), None, machine)) == 2 and path.read_text() == before  # nothing left to add

    payload["cases"][0]["before"]["ca"] += 0.01  # as if the saved run had other test data
    path.write_text(json.dumps({"machine": machine, "runs": {"v": payload}}))
    with pytest.raises(SystemExit, match="not the same data"):
        add_baselines(str(path), None, machine)
    assert "clp" not in {r["defense"] for r in json.loads(path.read_text())["runs"]["v"]["cases"][0]["rows"]}
