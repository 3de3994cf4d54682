"""The maximum-margin detector (MM-BD): it singles out a BadNets model's target, not a clean twin's class, it is
seeded, and a pruned model's margin is measured through the mirror's keep-mask. Clean sample data only."""

from __future__ import annotations

import numpy as np
import torch

from onnx_onp.data import load_dataset
from onnx_onp.data.spec import Spec
from onnx_onp.load import load_model
from onnx_onp.metrics import prepare
from onnx_onp.mirror import TorchMirror
from onnx_onp.neuron_map import build_neuron_map
from onnx_onp.signals.max_margin import MaxMarginConfig, max_margins, scan

from .conftest import FIXTURES

MODELS = FIXTURES / "models"
SAMPLE = FIXTURES / "data" / "cifar10_defense_sample.npz"
QUICK = MaxMarginConfig(starts=4, steps=60)


def _setup(name: str):
    spec = Spec.load(MODELS / f"{name}.json")
    lm = load_model(MODELS / f"{name}.onnx")
    nmap = build_neuron_map(lm)
    images = prepare(lm, load_dataset(SAMPLE).take(200, 0), spec.preprocess)
    return lm, nmap, TorchMirror(lm, nmap), images.x, spec


def test_a_badnets_target_is_an_outlier_and_its_clean_twin_has_none():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lm, _, mirror, x, spec = _setup("resnet18_badnets_cifar10")
        backdoored = scan(mirror, x, lm.num_classes, spec.preprocess.layout, QUICK)
        lm, _, mirror, x, spec = _setup("resnet18_clean_cifar10")
        clean = scan(mirror, x, lm.num_classes, spec.preprocess.layout, QUICK)
    finally:
        torch.set_num_threads(threads)
    assert backdoored.suspect == 0 and backdoored.anomaly_index >= 4.0  # the fixture's target is class 0
    assert clean.anomaly_index < 4.0


def test_margins_are_seeded_and_a_keep_mask_changes_them():
    lm, nmap, mirror, x, spec = _setup("tiny_badnet_cifar10")
    layout = spec.preprocess.layout
    first = max_margins(mirror, x, lm.num_classes, layout, QUICK, classes=[0])
    assert np.array_equal(first, max_margins(mirror, x, lm.num_classes, layout, QUICK, classes=[0]))
    keep = torch.ones(nmap.num_groups)
    keep[np.flatnonzero(nmap.prunable)[: nmap.num_groups // 2]] = 0.0
    assert not np.allclose(first, max_margins(mirror, x, lm.num_classes, layout, QUICK, classes=[0], keep=keep))
