"""ONP: the torch mirror against onnxruntime, graph construction, determinism, and an end-to-end sanitize."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from onnx_onp.agent import PruningPolicy, RewardConfig, RewardEnv, TrainConfig, train_policy
from onnx_onp.data import Spec, load_dataset
from onnx_onp.graphs import batch_graphs, build_graphs
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model
from onnx_onp.metrics import attack_scores, prepare, prepare_triggered
from onnx_onp.mirror import TorchMirror
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.signals.features import SIGNALS, GroupSignals, compute_signals
from onnx_onp.signals.noise import noise_blend_probe
from onnx_onp.signals.perturbation import PerturbationConfig, perturb_towards
from onnx_onp.signals.synthesis import (SynthesisConfig, TriggerCandidate, amplify, anomaly_indices, channel_range,
                                        synthesize, synthesize_blend)
from onnx_onp_cli.main import main

from .conftest import DATA, FIXTURES, REAL_MODELS, need
from .test_neuron_map import _export, _inputs, _random_mask

TINY = FIXTURES / "models" / "tiny_badnet_cifar10"


@pytest.mark.parametrize("name,dynamo", [("resnet18", False), ("mobilenetv2", False), ("densenet", False),
                                         ("keras", False), ("resnet18", True), ("vggbn", True)])
def test_mirror_matches_onnxruntime_with_masks(name, dynamo, tmp_path):
    _, path = _export(name, tmp_path, dynamo=dynamo)
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    mirror = TorchMirror(lm, nmap)
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    x = _inputs(name, 16)
    for seed in (0, 1):
        mask = _random_mask(nmap, 0.3, seed)
        with torch.no_grad():
            got = mirror(torch.from_numpy(x), torch.from_numpy((~mask).astype(np.float32))).numpy()
        np.testing.assert_allclose(got, evaluator.logits(x, mask), atol=1e-4)
    # Per-sample masks too: row i uses mask i.
    masks = np.stack([_random_mask(nmap, 0.2, s) for s in range(4)])
    keep = torch.from_numpy(np.repeat(~masks, 4, axis=0).astype(np.float32))
    with torch.no_grad():
        got = mirror(torch.from_numpy(np.concatenate([x[:4]] * 4)), keep).numpy()
    expected = np.concatenate([evaluator.logits(x[:4], m) for m in masks])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # Per-sample multipliers (the neuron-perturbation probe): keep-values above 1 too, where the ONNX graph
    # must not leak group 0's value into elements that belong to no group.
    multipliers = np.random.default_rng(2).uniform(0.7, 1.3, (4, nmap.num_groups)).astype(np.float32)
    with torch.no_grad():
        got = mirror(torch.from_numpy(x[:4]), torch.from_numpy((~masks[0]) * multipliers)).numpy()
    np.testing.assert_allclose(got, evaluator.logits(x[:4], masks[0], multipliers), atol=1e-4)
    scores = evaluator.score_many(x[:4], np.zeros(4, np.int64), masks, multipliers)
    for m, s in zip(masks, scores):
        np.testing.assert_array_equal(s.predictions, evaluator.logits(x[:4], m, multipliers).argmax(1))


def test_anomaly_index_flags_the_small_outlier():
    index = anomaly_indices(np.array([50.0, 52, 48, 51, 49, 10, 53, 47]))
    assert int(np.argmax(index)) == 5 and index[5] > 10


def _fake_signals(nmap, seed=0):
    rng = np.random.default_rng(seed)
    return GroupSignals(SIGNALS, rng.standard_normal((nmap.num_groups, len(SIGNALS))).astype(np.float32))


def test_graphs_follow_connection_strength(tmp_path):
    model, path = _export("vggbn", tmp_path)
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    graphs = build_graphs(lm, nmap, _fake_signals(nmap))
    prunable_layers = [layer for layer in nmap.layers[:-1]]
    assert [g.layer for g in graphs] == [layer.name for layer in prunable_layers]
    second = graphs[1]  # conv 2: its own 16 channels and the 8 channels of conv 1 as context
    layer = nmap.layers[1]
    assert int((second.group >= 0).sum()) == layer.size
    assert second.num_nodes == layer.size + nmap.layers[0].size
    w = np.abs(lm.initializer_array(layer.weight)).sum(axis=(2, 3))  # [out, in]
    strength = w / w.max()
    src, dst = second.edge_index.numpy()
    cross = src >= layer.size
    for s, d, weight in zip(src[cross][:20], dst[cross][:20], second.edge_weight.numpy()[cross][:20]):
        assert abs(weight - strength[d, s - layer.size]) < 1e-5
    # Similarity edges stay inside the layer and only between similar neurons.
    inner = ~cross
    assert (src[inner] < layer.size).all() and (second.edge_weight.numpy()[inner] >= 0.5).all()


def test_residual_group_is_one_decision_node_per_graph(tmp_path):
    _, path = _export("resnet18", tmp_path)
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    graphs = build_graphs(lm, nmap, _fake_signals(nmap))
    stream = nmap.group_of(nmap.layers[0].name, 0)  # the stem channel, tied to layer1's second convs
    holders = [g for g in graphs if (g.group == stream.index).any()]
    assert len(holders) == 3  # stem, layer1.0.conv2, layer1.1.conv2: one node in each
    assert all(int((g.group == stream.index).sum()) == 1 for g in holders)
    policy = PruningPolicy(graphs[0].x.shape[1], nmap.num_groups)
    logits = policy(batch_graphs(graphs))
    assert torch.isfinite(logits[stream.index]) and not torch.isfinite(logits[~torch.from_numpy(nmap.prunable)]).any()


@pytest.fixture(scope="module")
def tiny():
    spec = Spec.load(need(TINY.with_suffix(".json")))
    lm = load_model(TINY.with_suffix(".onnx"))
    nmap = build_neuron_map(lm)
    defense = prepare(lm, load_dataset(need(DATA / "cifar10_train.npz"), limit=300, seed=0), spec.preprocess)
    return spec, lm, nmap, defense


@pytest.mark.parametrize("algorithm", ["reinforce", "ppo"])
def test_policy_training_is_repeatable(tiny, algorithm):
    spec, lm, nmap, defense = tiny
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    mirror = TorchMirror(lm, nmap)
    synthesis = synthesize(mirror, defense.x, defense.y, lm.num_classes, "NCHW",
                           SynthesisConfig(steps=10, batch_size=16), classes=[0])
    stamped = synthesis.best.apply(defense.x[defense.y != 0], (2, 3))
    signals = compute_signals(lm, nmap, mirror, defense.x, defense.y, stamped, 0)
    batch = batch_graphs(build_graphs(lm, nmap, signals))
    env = RewardEnv(evaluator, defense.x, defense.y, stamped, 0, RewardConfig())

    def run(seed):
        torch.manual_seed(123)  # the policy's initial weights come from the global generator
        policy = PruningPolicy(batch.x.shape[1], nmap.num_groups, prior={4: 1.0})
        result = train_policy(policy, batch, env, TrainConfig(steps=3, masks_per_step=4, seed=seed,
                                                              algorithm=algorithm))
        return np.array([m for m, _ in result.tried]), result.probabilities

    masks_a, probs_a = run(7)
    masks_b, probs_b = run(7)
    masks_c, _ = run(8)
    assert masks_a.any() and np.array_equal(masks_a, masks_b) and np.allclose(probs_a, probs_b)
    assert not np.array_equal(masks_a, masks_c)
    torch.manual_seed(123)
    initial = torch.sigmoid(PruningPolicy(batch.x.shape[1], nmap.num_groups, prior={4: 1.0})(batch)).detach().numpy()
    assert not np.allclose(probs_a, initial)  # the policy learned something from three batches


def test_training_stops_once_the_policy_samples_one_mask(tiny):
    """A policy that prunes nothing (rate ~0) samples the empty mask every step: with a patience of 2 it stops
    after two such steps instead of running all ten; without one it runs them all."""
    spec, lm, nmap, defense = tiny
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    x, y = defense.x[:64], defense.y[:64]
    env = RewardEnv(evaluator, x, y, x[y != 0], 0, RewardConfig())
    signals = _fake_signals(nmap)
    batch = batch_graphs(build_graphs(lm, nmap, signals))
    policy = PruningPolicy(batch.x.shape[1], nmap.num_groups, initial_rate=1e-9)
    settled = train_policy(policy, batch, env, TrainConfig(steps=10, masks_per_step=2, settled_patience=2))
    assert settled.stopped_settled and len(settled.history) == 2
    policy = PruningPolicy(batch.x.shape[1], nmap.num_groups, initial_rate=1e-9)
    full = train_policy(policy, batch, env, TrainConfig(steps=10, masks_per_step=2))
    assert not full.stopped_settled and len(full.history) == 10


def test_large_models_get_the_lighter_schedule():
    from onnx_onp.sanitize import SanitizeConfig, large_model_schedule
    from onnx_onp.search import SearchConfig

    given = SanitizeConfig(search=SearchConfig(rounds=3))
    large = large_model_schedule(given)
    assert large.search.rounds == 2 and large.search.max_clean and large.search.train.settled_patience
    assert large.detect.synthesis.batch_size < given.detect.synthesis.batch_size
    assert large.probes.refine_triggers < given.probes.refine_triggers
    assert large.detect.amplification.max_groups * large.detect.amplification.images < (
        given.detect.amplification.max_groups * given.detect.amplification.images)
    assert large.search.train.steps < given.search.train.steps and large.probes.refine_steps < given.probes.refine_steps
    assert large.decide.prune_back_max_clean and given.decide.prune_back_max_clean is None
    # the given config is untouched
    assert given.search.max_clean is None and given.search.train.settled_patience is None
    assert large_model_schedule(SanitizeConfig(search=SearchConfig(rounds=6, large_model_rounds=4))).search.rounds == 4
    assert large_model_schedule(SanitizeConfig(search=SearchConfig(rounds=1, large_model_rounds=4))).search.rounds == 1


def test_sanitize_end_to_end_prunes_the_backdoor_and_says_so_honestly(tiny_sanitized):
    """The committed tiny BadNets fixture, clean data only: ASR must fall far; the outcome may be "sanitized" only
    when the real trigger no longer works, and the final check ran on the 100 defense images set aside."""
    from onnx_onp.report import gate_exit_code
    from onnx_onp.report.verdict import NOT_SANITIZED

    result, paths = tiny_sanitized
    spec_path, out = TINY.with_suffix(".json"), paths["model"]
    assert result.exit_code == 0, result.output  # --fail-on never
    report = json.loads(paths["json"].read_text())
    assert report["backdoor_suspected"] and report["trigger_synthesis"]["suspected_target"] == 0
    check = report["final_check"]
    assert check["images"] == report["defense_data"]["check"] == 100
    assert report["defense_data"]["train"] + report["defense_data"]["holdout"] == 400
    assert gate_exit_code(report, "unsanitizable") == (11 if report["status"] in NOT_SANITIZED else 0)
    # Measure the written model on test data the run never saw.
    spec = Spec.load(spec_path)
    lm = load_model(out)
    nmap = build_neuron_map(lm)
    test = load_dataset(DATA / "cifar10_test.npz", limit=2000, seed=1)
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    before = attack_scores(MaskedEvaluator(*_loaded(TINY.with_suffix(".onnx")), provider="cpu"),
                           prepare_triggered(lm, test, spec, spec.preprocess), 0).asr
    after = attack_scores(evaluator, prepare_triggered(lm, test, spec, spec.preprocess), 0).asr
    assert before > 0.9 and after < 0.5, (before, after)
    if report["status"] == "sanitized":  # the gate's promise
        assert after < 0.2, after


def _loaded(path):
    lm = load_model(path)
    return lm, build_neuron_map(lm)


def test_mirror_gives_the_scores_before_a_final_softmax():
    """Losses need logits: a model that ends in Softmax (verazuo's) gets its pre-Softmax scores for them."""
    path = need(REAL_MODELS / "verazuo_badnet_mnist.onnx")
    lm = load_model(path)
    mirror = TorchMirror(lm, build_neuron_map(lm))
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        probabilities, scores = mirror(x), mirror(x, logits=True)
    assert torch.allclose(probabilities.sum(1), torch.ones(8), atol=1e-5)  # the output really is Softmax
    assert not torch.allclose(scores.sum(1), torch.ones(8), atol=1e-2)
    assert torch.allclose(torch.softmax(scores, 1), probabilities, atol=1e-6)


def test_amplified_trigger_is_solid_grown_and_saturated():
    x = np.stack([np.full((3, 8, 8), v, np.float32) for v in (-1.0, 0.2, 1.0)])
    mask = np.zeros((8, 8), np.float32)
    mask[3, 4], mask[4, 4] = 0.9, 0.35
    pattern = np.full((3, 8, 8), 0.3, np.float32)
    pattern[1] = -0.4
    strong = amplify(TriggerCandidate(0, mask, pattern, float(mask.sum()), 1.0), x, "NCHW", grow=1)
    assert set(np.unique(strong.mask)) == {0.0, 1.0}
    assert strong.mask[2:6, 3:6].all() and strong.mask.sum() == 12  # two pixels grown by one in each direction
    assert np.all(strong.pattern[0] == 1.0) and np.all(strong.pattern[1] == -1.0)  # pushed to the data's range


def test_blend_probe_is_a_whole_image_blend_at_a_fixed_alpha(tiny):
    """The blend probe stamps (1 - alpha)·x + alpha·p on every pixel, p within the data's range, the same for the
    same seed; its success is measured by the torch mirror and agrees with onnxruntime on the same images."""
    spec, lm, nmap, defense = tiny
    mirror = TorchMirror(lm, nmap)
    config = SynthesisConfig(steps=8, batch_size=16, seed=3)
    blend = synthesize_blend(mirror, defense.x, defense.y, 0, "NCHW", alpha=0.05, config=config)
    again = synthesize_blend(mirror, defense.x, defense.y, 0, "NCHW", alpha=0.05, config=config)
    assert np.array_equal(blend.pattern, again.pattern) and blend.success == again.success
    assert np.all(blend.mask == np.float32(0.05)) and blend.mask.shape == defense.x.shape[2:]
    low, high = channel_range(defense.x, "NCHW")
    assert np.all(blend.pattern >= low - 1e-6) and np.all(blend.pattern <= high + 1e-6)
    others = defense.x[defense.y != 0][:256]
    stamped = blend.apply(others, (2, 3))
    np.testing.assert_allclose(stamped, 0.95 * others + 0.05 * blend.pattern, atol=1e-5)
    share = float((MaskedEvaluator(lm, nmap, provider="cpu").logits(stamped).argmax(1) == 0).mean())
    assert abs(share - blend.success) <= 1 / len(others) + 1e-9


def test_noise_probe_blends_each_image_with_its_own_noise(tiny):
    """(1 - alpha)·x + alpha·u with u uniform in the data's range, a fresh u per image, the same for the same seed;
    its success is the share of other classes' images onnxruntime sends to the target."""
    spec, lm, nmap, defense = tiny
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    probe = noise_blend_probe(evaluator, defense.x, defense.y, 0, "NCHW", alpha=0.2, seed=5)
    others = defense.x[defense.y != 0][:256]
    stamped = probe.apply(others)
    assert np.array_equal(stamped, noise_blend_probe(evaluator, defense.x, defense.y, 0, "NCHW", alpha=0.2,
                                                     seed=5).apply(others))
    assert not np.array_equal(stamped, noise_blend_probe(evaluator, defense.x, defense.y, 0, "NCHW", alpha=0.2,
                                                         seed=6).apply(others))
    noise = (stamped - 0.8 * others) / 0.2
    low, high = channel_range(defense.x, "NCHW")
    assert np.all(noise >= low - 1e-4) and np.all(noise <= high + 1e-4)
    assert not np.allclose(noise[0], noise[1])  # each image its own pattern
    assert probe.probe(others)[1] is None
    share = float((evaluator.logits(stamped).argmax(1) == 0).mean())
    assert probe.success == pytest.approx(share)


def test_noise_probe_finds_the_noise_blend_backdoor_and_not_a_clean_model():
    """The Blended fixture was poisoned with one random pattern at alpha 0.2; fresh noise at that strength sends
    other classes' images to its target, and does not on the clean twin or the BadNets model."""
    train = load_dataset(need(DATA / "cifar10_train.npz")).take(300, seed=0)
    shares = {}
    for name in ("resnet18_blended_cifar10", "resnet18_clean_cifar10", "resnet18_badnets_cifar10"):
        case = FIXTURES / "models" / name
        spec = Spec.load(case.with_suffix(".json"))
        lm = load_model(case.with_suffix(".onnx"))
        data = prepare(lm, train, spec.preprocess)
        evaluator = MaskedEvaluator(lm, build_neuron_map(lm), provider="cpu")
        shares[name] = noise_blend_probe(evaluator, data.x, data.y, 0, "NCHW", alpha=0.2, seed=0).success
    assert shares["resnet18_blended_cifar10"] >= 0.9, shares
    assert shares["resnet18_clean_cifar10"] <= 0.1 and shares["resnet18_badnets_cifar10"] <= 0.1, shares


def test_neuron_perturbation_finds_the_warping_backdoor():
    """WaNet escapes trigger synthesis; a ±5% perturbation of the neurons sends nearly all clean images of
    other classes to its target, far more than to another class, and pruning the groups it runs through
    (ranked by the backdoor-loss change under that probe) takes the real attack success rate down."""
    case = FIXTURES / "models" / "resnet18_wanet_cifar10"
    spec = Spec.load(case.with_suffix(".json"))
    lm = load_model(case.with_suffix(".onnx"))
    nmap = build_neuron_map(lm)
    mirror = TorchMirror(lm, nmap)
    train = load_dataset(need(DATA / "cifar10_train.npz")).take(300, seed=0)
    data = prepare(lm, train, spec.preprocess)
    config = PerturbationConfig(images=150)
    shares = {}
    for target in (0, 3):
        others = torch.from_numpy(data.x[data.y != target][:150])
        shares[target] = perturb_towards(mirror, others, target, nmap.num_groups, config)
    assert shares[0].share >= 0.8 and shares[3].share <= 0.6, (shares[0].share, shares[3].share)
    probe_x, multipliers = shares[0].probe(data.x[data.y != 0], (2, 3))
    signals = compute_signals(lm, nmap, mirror, data.x, data.y, probe_x, 0, stamped_multipliers=multipliers)
    order = [g for g in np.argsort(-signals["blc"]) if nmap.prunable[g]]
    mask = nmap.empty_mask()
    mask[order[:2]] = True
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    test = load_dataset(need(DATA / "cifar10_test.npz")).take(1000, seed=0)
    triggered = prepare_triggered(lm, test, spec, spec.preprocess)
    before = attack_scores(evaluator, triggered, 0).asr
    after = attack_scores(evaluator, triggered, 0, mask).asr
    assert before > 0.9 and after < 0.2, (before, after)


def test_amplified_shares_match_the_torch_mirror(tiny):
    """The amplification scan's onnxruntime shares (many settings per run) against the torch mirror run one
    setting at a time."""
    from onnx_onp.signals.amplification import amplified_shares

    spec, lm, nmap, defense = tiny
    evaluator = MaskedEvaluator(lm, nmap, provider="cpu")
    mirror = TorchMirror(lm, nmap)
    x, y = defense.x[:40], defense.y[:40]
    groups = np.flatnonzero(nmap.prunable)[[0, 3, -1]]
    shares = amplified_shares(evaluator, x, y, lm.num_classes, groups, (32.0, 100.0))
    assert shares.shape == (6, lm.num_classes)
    row = 0
    for factor in (32.0, 100.0):
        for g in groups:
            keep = torch.ones(nmap.num_groups)
            keep[g] = factor
            with torch.no_grad():
                predictions = mirror(torch.from_numpy(x), keep).numpy().argmax(axis=1)
            expected = [float((predictions[y != c] == c).mean()) for c in range(lm.num_classes)]
            np.testing.assert_allclose(shares[row], expected, atol=1e-9)
            row += 1


def test_amplification_index_is_a_robust_z_score_with_a_floored_spread():
    """Constructed counts: the index is (count - median) / (1.4826 * MAD); one class far above the others crosses
    the default cut-off, a spread-out clean-like set does not, and a single setting moving images somewhere is not
    an outlier because the spread is floored at 1% of the settings (and at one setting)."""
    from onnx_onp.detect import DetectConfig
    from onnx_onp.signals.amplification import count_indices

    threshold = DetectConfig().amplification_threshold
    # median 10, MAD 2 -> spread 2.9652 (over the 1% floor of 200 settings): class 0 sits (40 - 10) / 2.9652 above.
    backdoor = count_indices([40, 8, 12, 10, 10, 8, 12, 10, 12, 8], 200)
    assert int(np.argmax(backdoor)) == 0 and backdoor[0] == pytest.approx(30 / 2.9652) and backdoor[0] >= threshold
    spread = count_indices([5, 20, 10, 15, 25, 10, 30, 12, 18, 8], 200)
    assert spread.max() < threshold
    # MAD 0: without the floor one setting would be an infinite outlier; with it, 1 / max(0.01 * 720, 1) = 0.139.
    assert count_indices([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], 720).max() == pytest.approx(1 / 7.2)
    assert count_indices([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], 50).max() == pytest.approx(1.0)

def test_prune_back_returns_the_groups_the_probe_does_not_need(monkeypatch):
    """Groups 0 and 1 hold the backdoor (either one back: probe ASR up), groups 2 and 3 cost clean accuracy only,
    group 4 costs nothing: the prune-back gives back 3 (the dearer), then 2, and keeps 0 and 1, and 4 (its return
    would give back no clean accuracy, so it stays as a margin)."""
    from types import SimpleNamespace

    from onnx_onp.agent.reinforce import Outcome
    from onnx_onp.decide import DecideConfig
    from onnx_onp.decide import prune_back as prune_back_module
    from onnx_onp.sanitize import SanitizeConfig

    probed = []

    class Env:
        clean_y = np.zeros(100)
        ca0 = 0.9

        def score(self, masks, max_drop=None):
            out = []
            for m in masks:
                ca = 0.8 - 0.01 * m[2] - 0.03 * m[3]
                run = max_drop is None or self.ca0 - ca <= max_drop
                probed.append(run)
                out.append(Outcome(ca=ca, asr=0.1 + 0.5 * (not m[0]) + 0.4 * (not m[1]) if run else 1.0,
                                   pruned=int(m.sum()), reward=0.0, probed=run))
            return out

    monkeypatch.setattr(prune_back_module, "probe_env", lambda *args, **kwargs: Env())
    nmap = SimpleNamespace(label=lambda n: f"layer:{n}", groups=[SimpleNamespace(neurons=[g]) for g in range(5)])
    config = SanitizeConfig(decide=DecideConfig(prune_back_tolerance=0.02))
    mask = np.array([True, True, True, True, True])
    kept, detail = prune_back_module.prune_back(SimpleNamespace(nmap=nmap), None, [], 0, (2, 3), config, mask)
    assert kept.tolist() == [True, True, False, False, True]
    assert detail["restored"] == ["layer:3", "layer:2"] and detail["probe_asr"] == {"before": 0.1, "after": 0.1}
    assert detail["defense_ca"]["after"] == pytest.approx(0.8)
    # Returns that give back no clean accuracy (groups 0, 1, 4 each step) are never run on the probe.
    assert probed.count(True) == 1 + 2 + 1 + 0  # the start; returns of 3 and 2; of 2; none


def test_detector_thresholds_rise_with_the_number_of_classes():
    """10 classes keep the cut-offs as configured and fewer never lower them; with more classes the cut-off rises
    so that the chance of any one of K standard-normal clean scores crossing it, K times the tail, stays what it
    is at 10 classes (Bonferroni)."""
    from statistics import NormalDist

    from onnx_onp.signals.thresholds import for_classes

    assert for_classes(2.0, 10) == 2.0 and for_classes(2.0, 2) == 2.0 and for_classes(5.0, 10) == 5.0

    def tail(z):
        return 1 - NormalDist().cdf(z)

    for cut in (2.0, 3.0, 5.0):
        for classes in (11, 43, 100, 1000):
            raised = for_classes(cut, classes)
            assert raised > cut and classes * tail(raised) == pytest.approx(10 * tail(cut), rel=1e-6)
    assert for_classes(2.0, 10) < for_classes(2.0, 43) < for_classes(2.0, 100)

def test_shortcut_confirmation_at_its_boundary():
    """Confirmed when pruning leaves the probe at most max_ratio of its success: exactly at the ratio yes, just
    above no. Nothing pruned, or a probe that never worked, confirms nothing."""
    from onnx_onp.verify import shortcut_confirmed

    assert shortcut_confirmed(0.8, 0.4, True, 0.5) and shortcut_confirmed(0.8, 0.0, True, 0.5)
    assert not shortcut_confirmed(0.8, 0.41, True, 0.5)
    assert shortcut_confirmed(0.8, 0.6, True, 0.75) and not shortcut_confirmed(0.8, 0.6, True, 0.7)
    assert not shortcut_confirmed(0.9, 0.0, False, 0.5) and not shortcut_confirmed(0.0, 0.0, True, 0.5)

@pytest.mark.parametrize("detector", ["neuron amplification", "trigger synthesis"])
def test_unconfirmed_weak_suspicion_prunes_nothing(detector):
    """Weak evidence (amplification: synthesis and perturbation switched off, any count an outlier; synthesis: every
    index below the confirmation bar) runs the pruning search as the confirmation; the report keeps its numbers,
    and when it does not confirm, nothing is pruned, the verdict is no evidence and the status clean; when it does,
    the pruned mask is the tentative one."""
    from dataclasses import replace

    from onnx_onp.report import STATUS_CLEAN, STATUS_SANITIZED
    from onnx_onp.decide import DecideConfig
    from onnx_onp.detect import DetectConfig
    from onnx_onp.probes import ProbeConfig
    from onnx_onp.sanitize import SanitizeConfig, sanitize
    from onnx_onp.search import SearchConfig
    from onnx_onp.signals.amplification import AmplificationConfig
    from onnx_onp.verify import VerifyConfig

    tiny = FIXTURES / "models" / "tiny_badnet_cifar10"
    spec = Spec.load(tiny.with_suffix(".json"))
    data = load_dataset(need(DATA / "cifar10_train.npz"), limit=200, seed=0)
    by_amplification = detector == "neuron amplification"
    base = SanitizeConfig(
        detect=DetectConfig(anomaly_threshold=1e9 if by_amplification else 2.0, perturbation_scan=False,
                            amplification_threshold=-1e9, amplification_min_fraction=0.0,
                            synthesis=SynthesisConfig(steps=20, batch_size=16),
                            amplification=AmplificationConfig(images=30, max_groups=20, factors=(100.0,))),
        # No final check (tests/test_verify.py has it): the confirmation alone decides here.
        verify=VerifyConfig(confirm_below=1e9, check_share=None), probes=ProbeConfig(refine_triggers=1, refine_steps=20),
        search=SearchConfig(rounds=1, train=TrainConfig(steps=2, masks_per_step=4)),
        decide=DecideConfig(prune_back_tolerance=None))
    outcomes = []
    for ratio in (0.0, 1.0):  # 0: nothing short of a probe at 0% confirms; 1: any pruning does
        report = sanitize(tiny.with_suffix(".onnx"), data, spec.preprocess,
                          config=replace(base, verify=replace(base.verify, confirm_ratio=ratio))).report
        check = report["confirmation"]
        probe = check["probe_asr_holdout"]
        assert report["detector"] == check["detector"] == detector and check["max_ratio"] == ratio
        outcomes.append(check["confirmed"])
        assert check["confirmed"] == (bool(check["tentative_pruned"]) and probe["after"] <= ratio * probe["before"]
                                      and probe["before"] > 0)
        if check["confirmed"]:
            assert report["status"] == STATUS_SANITIZED and report["pruned"]["per_layer"] == check["tentative_pruned"]
            assert report["verdict"]["verdict"] == "backdoor suspected"
        else:
            assert report["status"] == STATUS_CLEAN and report["pruned"]["groups"] == 0
            assert report["verdict"]["verdict"] == "no backdoor evidence" and not report["backdoor_suspected"]
            assert report["clean_accuracy_holdout"]["drop"] == 0
    assert outcomes == [False, True]  # both paths ran


def test_a_backdoor_trigger_must_also_be_small():
    """The anomaly index is a z-score, so a class whose mask is only a little smaller than tightly clustered
    others scores as high as a real trigger's far smaller mask. Constructed norms: both suspects' indices are over
    the synthesis cut-off; only the size rule (mask under found_ratio of the others' median) tells them apart."""
    from onnx_onp.detect import DetectConfig
    from onnx_onp.signals.synthesis import SynthesisResult

    def result(norms):
        index = anomaly_indices(np.array(norms))
        suspect = int(np.argmax(index))
        return SynthesisResult(candidates=[], anomaly_index=float(index[suspect]), suspect=suspect, norms=norms)

    tight = result([60.0, 61.0, 59.0, 60.5, 52.0, 59.5, 60.0, 61.5, 58.5, 60.0])  # class 4: 13% smaller
    patch = result([60.0, 20.0, 75.0, 50.0, 66.0, 58.0, 71.0, 49.0, 63.0, 80.0])  # class 1: a third of the others
    config = DetectConfig()
    assert tight.suspect == 4 and patch.suspect == 1
    assert tight.anomaly_index > config.anomaly_threshold and patch.anomaly_index > config.anomaly_threshold
    assert tight.size_ratio == pytest.approx(52 / 60) and patch.size_ratio == pytest.approx(20 / 63)
    assert patch.size_ratio < config.found_ratio < tight.size_ratio

def test_the_decision_says_which_candidate_won():
    """Group 2 alone carries the probe. When only a signal mask prunes it, the decision takes that mask and says so;
    when the agent also sampled it, the agent's sample is credited (ties go to the agent)."""
    from types import SimpleNamespace

    from onnx_onp.agent.reinforce import Outcome
    from onnx_onp.decide.choose import choose_mask

    def outcome(m):
        asr = 0.0 if m[2] else 0.9
        return Outcome(ca=0.8 - 0.001 * m.sum(), asr=asr, pruned=int(m.sum()), reward=-asr - 0.01 * m.sum())

    def env():
        return SimpleNamespace(base_mask=np.zeros(4, bool), ca0=0.8, clean_y=np.zeros(100),
                               score=lambda masks, max_drop=None: [outcome(np.asarray(m)) for m in masks])

    probabilities = np.array([0.9, 0.5, 0.1, 0.2])  # the policy ranks group 2 last
    prunable = np.ones(4, bool)
    signal = np.array([[False, False, True, False]])
    sampled = np.array([True, False, False, False])
    decision = choose_mask(env(), env(), [(sampled, outcome(sampled))], probabilities, prunable, max_ca_drop=0.02,
                           max_fraction=0.5, extra=signal)
    assert decision.mask.tolist() == [False, False, True, False] and decision.source == "signal mask"
    tried = [(sampled, outcome(sampled)), (signal[0], outcome(signal[0]))]
    decision = choose_mask(env(), env(), tried, probabilities, prunable, max_ca_drop=0.02, max_fraction=0.5,
                           extra=signal)
    assert decision.mask.tolist() == [False, False, True, False] and decision.source == "agent sample"
    decision = choose_mask(env(), env(), [], np.array([0.1, 0.2, 0.9, 0.3]), prunable, max_ca_drop=0.02,
                           max_fraction=0.5)
    assert decision.mask.tolist() == [False, False, True, False] and decision.source == "policy ranking"


def test_later_rounds_see_the_signals_of_the_pruned_model(tiny):
    """A round after the first ranks groups in the model as pruned so far: the pruned groups' signals are 0 and no
    signal mask picks them again, while the groups after them see the changed activations. With nothing pruned
    the signals are exactly those of the unpruned model."""
    from onnx_onp.decide.choose import signal_masks

    spec, lm, nmap, defense = tiny
    mirror = TorchMirror(lm, nmap)
    x, y = defense.x[:96], defense.y[:96]
    stamped = x[y != 0].copy()
    stamped[:, :, -4:, -4:] = x.max()  # a corner patch: any probe will do here
    target = 0
    unpruned = compute_signals(lm, nmap, mirror, x, y, stamped, target)
    same = compute_signals(lm, nmap, mirror, x, y, stamped, target, pruned=nmap.empty_mask())
    assert np.array_equal(unpruned.values, same.values)
    pruned = nmap.empty_mask()
    pruned[np.argsort(-np.where(nmap.prunable, unpruned["act_shift"], -np.inf))[:3]] = True
    after = compute_signals(lm, nmap, mirror, x, y, stamped, target, pruned=pruned)
    assert not after.values[pruned].any()
    later = ~pruned & (np.abs(after["act_clean"] - unpruned["act_clean"]) > 1e-6)
    assert later.any()  # pruning changes what the groups downstream see
    masks = signal_masks(nmap, after, exclude=pruned)
    assert len(masks) and not (masks & pruned).any()
    assert (signal_masks(nmap, unpruned) & pruned).any()  # unexcluded, the top groups are picked again


def test_signal_walk_skips_the_costly_group_and_stops_once_the_probe_is_gone():
    """Groups ranked 0..5 by the signal; 0, 2 and 3 carry the probe, 1 costs 5 points of clean accuracy and 4
    would raise the probe's ASR. The walk joins 0, 2, 3 (skipping 1), stops there, and offers each step."""
    from types import SimpleNamespace

    from onnx_onp.agent.reinforce import Outcome
    from onnx_onp.decide.choose import signal_walk_masks

    def outcome(m):
        asr = max(0.0, 0.9 - 0.3 * int(m[[0, 2, 3]].sum())) + 0.05 * m[4]
        ca = 0.8 - 0.05 * m[1] - 0.001 * m.sum()
        return Outcome(ca=ca, asr=asr, pruned=int(m.sum()), reward=0.0)

    calls, probed = [], []

    def score(masks, max_drop=None):
        calls.append(len(masks))
        out = [outcome(np.asarray(m)) for m in masks]
        for o in out:  # as RewardEnv.score: over max_drop, the probe is not run
            o.probed = max_drop is None or 0.8 - o.ca <= max_drop
            o.asr = o.asr if o.probed else 1.0
            probed.append(o.probed)
        return out

    env = SimpleNamespace(base_mask=np.zeros(6, bool), ca0=0.8, score=score)
    nmap = SimpleNamespace(layers=["conv"], layer_groups=lambda layer: np.arange(6), prunable=np.ones(6, bool),
                           num_groups=6)
    signals = {"act_shift": np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])}
    masks = signal_walk_masks(env, nmap, signals, max_drop=0.015, names=("act_shift",))
    assert [np.flatnonzero(m).tolist() for m in masks] == [[0], [0, 2], [0, 2, 3]]
    assert sum(calls) == 5  # the start, then groups 0-3: group 4 is not looked at once the probe is gone
    assert probed == [True, True, False, True, True]  # group 1's trial costs too much: not run on the probe
    fewer = signal_walk_masks(env, nmap, signals, max_drop=0.015, names=("act_shift",), max_groups=2)
    assert [np.flatnonzero(m).tolist() for m in fewer] == [[0]]
