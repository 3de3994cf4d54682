"""Resumed masked evaluation (instrument/resume.py) against the full instrumented model: the same outputs for
every mask, on every zoo architecture and on the committed fixtures, and the cache really resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures.zoo.architectures import VGGBN, DenseNetTiny, KerasStyleNet, LeNetFC, MobileNetV2, ResNet18
from fixtures.zoo.export import export_onnx, randomize_bn
from onnx_onp.instrument import MaskedEvaluator
from onnx_onp.load import load_model
from onnx_onp.neuron_map import build_neuron_map

from .conftest import FIXTURES, need

ZOO = {
    "resnet18": (lambda: ResNet18(width=8), (1, 3, 32, 32)),
    "mobilenetv2": (lambda: MobileNetV2(width_mult=0.25, last_channel=64), (1, 3, 32, 32)),
    "densenet": (lambda: DenseNetTiny(growth=4), (1, 3, 32, 32)),  # concatenations: cuts of several tensors
    "vggbn": (lambda: VGGBN(cfg=(8, "M", 16, "M", 16, "M"), hidden=16), (1, 3, 32, 32)),  # flatten via Shape
    "keras": (lambda: KerasStyleNet(width=4, hidden=16), (1, 32, 32, 3)),
    "lenet": (lambda: LeNetFC(), (1, 3, 32, 32)),
}


def _evaluators(path):
    lm = load_model(path)
    nmap = build_neuron_map(lm)
    return lm, nmap, MaskedEvaluator(lm, nmap, provider="cpu", batch_size=64), \
        MaskedEvaluator(lm, nmap, provider="cpu", batch_size=64)


def _walk_like_masks(nmap, rng, count: int):
    """Masks as the searches make them: grown one group at a time (walk), shrunk one at a time (prune-back),
    and unrelated samples, so the cache is hit at every depth and missed too."""
    prunable = np.flatnonzero(nmap.prunable)
    mask, masks = nmap.empty_mask(), []
    for group in rng.permutation(prunable)[:count]:
        trial = mask.copy()
        trial[group] = True
        masks.append(trial)
        if rng.random() < 0.6:
            mask = trial
    for group in np.flatnonzero(mask):
        less = mask.copy()
        less[group] = False
        masks.append(less)
    masks += [(rng.random(nmap.num_groups) < 0.1) & nmap.prunable for _ in range(3)]
    return masks


def _check_same(resumed, plain, nmap, x, y, masks, multipliers=None):
    a = resumed.score_many(x, y, np.array(masks), multipliers)
    b = plain.score_many(x, y, np.array(masks), multipliers)
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa.predictions, sb.predictions)
        assert sa.loss == pytest.approx(sb.loss, abs=1e-5)
    # The logits themselves, mask by mask.
    for mask in masks[:4]:
        out = resumed.resume.logits(np.ascontiguousarray(x), mask, resumed._keep(mask, len(x), multipliers),
                                    resumed.resume.data_key(x, multipliers))
        np.testing.assert_allclose(out.reshape(len(x), -1), plain.logits(x, mask, multipliers), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_resumed_evaluation_matches_the_full_model_on_every_architecture(name, tmp_path):
    factory, shape = ZOO[name]
    torch.manual_seed(0)
    path = export_onnx(randomize_bn(factory(), seed=1).eval(), tmp_path / f"{name}.onnx", shape)
    lm, nmap, resumed, plain = _evaluators(path)
    rng = np.random.default_rng(0)
    x = rng.random((70, *lm.input_shape[1:])).astype(np.float32)  # two batches of 64: chunked entries
    y = rng.integers(0, lm.num_classes, len(x))
    assert resumed.enable_resume(1 << 30, x)
    assert resumed.resume.levels, "no level to resume from"
    _check_same(resumed, plain, nmap, x, y, _walk_like_masks(nmap, rng, 12))
    assert resumed.resume.resumed > resumed.resume.full > 0
    # Per-image multipliers (the neuron-perturbation probe) are part of what the cut tensors depend on.
    multipliers = (1 + 0.3 * rng.standard_normal((len(x), nmap.num_groups))).astype(np.float32)
    _check_same(resumed, plain, nmap, x, y, _walk_like_masks(nmap, rng, 6), multipliers)


def test_resume_on_the_committed_resnet18_follows_the_walk_and_stays_in_its_budget():
    lm, nmap, resumed, plain = _evaluators(need(FIXTURES / "models" / "resnet18_badnets_cifar10.onnx"))
    rng = np.random.default_rng(1)
    x = rng.random((100, *lm.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, lm.num_classes, len(x))
    budget = 64 << 20
    assert resumed.enable_resume(budget, x)
    cache = resumed.resume
    # The memory plan drops the earliest levels: one run's cuts for 512 images fit half the budget.
    assert 0 < len(cache.levels) < len(nmap.mask_sites)
    masks = _walk_like_masks(nmap, rng, 20)
    _check_same(resumed, plain, nmap, x, y, masks)
    assert cache.bytes <= budget
    # A mask that differs from a scored one only in a group whose first site is the deepest level's resumes there.
    def own(level):
        groups = np.unique(nmap.mask_sites[level.site].groups)
        return [g for g in groups if g >= 0 and nmap.prunable[g] and not level.groups_before[g]]

    last = [level for level in cache.levels if own(level)][-1]
    late = own(last)
    base = masks[0].copy()
    base[late] = False
    resumed.score_many(x, y, base[None])
    trial = base.copy()
    trial[late[0]] = True
    before = cache.resumed
    sessions = dict(cache.sessions)
    resumed.score_many(x, y, trial[None])
    assert cache.resumed == before + 1 and cache.last_start == last.site
    assert set(sessions) <= set(cache.sessions)
    stats = resumed.disable_resume()
    assert stats["runs_resumed"] > 0 and resumed.resume is None
    assert resumed.seconds_in_runtime > 0  # the resumed runs' time still counts


def test_new_data_or_a_changed_early_group_runs_from_the_input():
    lm, nmap, resumed, _ = _evaluators(need(FIXTURES / "models" / "tiny_badnet_cifar10.onnx"))
    rng = np.random.default_rng(2)
    x = rng.random((20, *lm.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, lm.num_classes, len(x))
    assert resumed.enable_resume(1 << 28, x)
    cache = resumed.resume
    mask = nmap.empty_mask()
    resumed.score_many(x, y, mask[None])
    assert (cache.full, cache.resumed) == (1, 0)
    other = x.copy()
    other[0, 0, 0, 0] += 0.5  # one pixel: other data, other cut tensors
    resumed.score_many(other, y, mask[None])
    assert (cache.full, cache.resumed) == (2, 0)
    # Same data, any mask: the first level's cut comes before every mask site, so nothing before it can differ.
    assert not cache.levels[0].groups_before.any()
    resumed.score_many(x, y, ((rng.random(nmap.num_groups) < 0.3) & nmap.prunable)[None])
    assert (cache.full, cache.resumed) == (2, 1)


def test_reward_env_skips_the_probe_only_for_masks_over_the_clean_limit():
    """RewardEnv.score(max_drop=...): masks within the limit get exactly the outcome of a full score; the others
    keep their clean numbers and are not run on the probe (asr 1, probed False)."""
    from onnx_onp.agent.reinforce import RewardConfig, RewardEnv

    lm, nmap, evaluator, _ = _evaluators(need(FIXTURES / "models" / "tiny_badnet_cifar10.onnx"))
    rng = np.random.default_rng(3)
    x = rng.random((60, *lm.input_shape[1:])).astype(np.float32)
    y = evaluator.logits(x).argmax(axis=1)  # the model's own answers: CA 1 unpruned, so drops show
    env = RewardEnv(evaluator, x, y, x[:30], 0, RewardConfig())
    masks = np.array([(rng.random(nmap.num_groups) < p) & nmap.prunable for p in (0.0, 0.02, 0.3, 0.6)])
    full = env.score(masks)
    limit = sorted(env.ca0 - o.ca for o in full)[1]
    limited = env.score(masks, max_drop=limit)
    assert [o.probed for o in full] == [True] * 4
    assert sum(o.probed for o in limited) == 2
    for a, b in zip(full, limited):
        assert b.ca == a.ca and b.clean_loss == a.clean_loss
        assert (b.asr, b.reward) == ((a.asr, a.reward) if b.probed else (1.0, env.reward(a.ca, 1.0, a.pruned, a.clean_loss)))
        assert b.probed == (env.ca0 - a.ca <= limit)
