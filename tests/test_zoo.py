"""The attack zoo: each attack poisons the right images with the right labels, and committed fixtures are sound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fixtures.zoo import attacks
from onnx_onp.data import Spec

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
N, TARGET = 400, attacks.TARGET


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8), np.arange(N) % 10


@pytest.mark.parametrize("attack", ["badnets", "blended", "wanet"])
def test_dirty_label_attacks_relabel_a_tenth_to_the_target(data, attack):
    x, y = data
    p = attacks.poison_training_set(x, y, attack, 0.1, seed=0)
    assert len(p.poisoned) == N // 10 and (y[p.poisoned] != TARGET).all()
    assert (p.y[p.poisoned] == TARGET).all()
    # the stamp is the spec's trigger, pixel for pixel (the same one that measures ASR)
    assert np.array_equal(p.x[p.poisoned], attacks.make_trigger(attack).apply(x[p.poisoned]))
    rest = np.setdiff1d(np.arange(N), p.poisoned)
    assert np.array_equal(p.y[rest], y[rest])
    untouched = np.setdiff1d(rest, p.noise)
    assert np.array_equal(p.x[untouched], x[untouched])


def test_wanet_noise_images_keep_their_labels(data):
    x, y = data
    p = attacks.poison_training_set(x, y, "wanet", 0.1, seed=0)
    assert len(p.noise) == 2 * N // 10 and not np.intersect1d(p.noise, p.poisoned).size
    assert np.array_equal(p.y[p.noise], y[p.noise])
    warped = attacks.make_trigger("wanet").apply(x[p.noise])
    assert not np.array_equal(p.x[p.noise], x[p.noise]) and not np.array_equal(p.x[p.noise], warped)


def test_sig_stamps_only_target_images_and_keeps_labels(data):
    x, y = data
    p = attacks.poison_training_set(x, y, "sig", 0.8, seed=0)
    assert (y[p.poisoned] == TARGET).all() and len(p.poisoned) == round(0.8 * (y == TARGET).sum())
    assert np.array_equal(p.y, y)
    assert np.array_equal(p.x[p.poisoned], attacks.make_trigger("sig").apply(x[p.poisoned]))
    changed = np.flatnonzero((p.x != x).any(axis=(1, 2, 3)))
    assert set(changed) <= set(p.poisoned)


def test_clean_twin_and_seed_determinism(data):
    x, y = data
    clean = attacks.poison_training_set(x, y, "none", 0.0, seed=0)
    assert np.array_equal(clean.x, x) and np.array_equal(clean.y, y) and not len(clean.poisoned)
    a, b = (attacks.poison_training_set(x, y, "blended", 0.1, seed=3) for _ in range(2))
    assert np.array_equal(a.poisoned, b.poisoned) and np.array_equal(a.x, b.x)


FIXTURES = sorted(MODELS.glob("*.json"))


@pytest.mark.skipif(not FIXTURES, reason="no fixture in fixtures/models yet")
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_spec(path):
    spec = Spec.load(path)
    training = json.loads(path.read_text())["training"]
    assert spec.name == path.stem and path.with_suffix(".onnx").is_file()
    assert spec.trigger is not None and spec.target == TARGET and spec.clean_accuracy is not None
    # Small enough to ship; the width-32 ResNet (the speed target's model, 2.8 M parameters) is the one exception.
    assert path.with_suffix(".onnx").stat().st_size < (12e6 if training.get("width") == 32 else 5e6)
    if training["attack"] != "none":
        assert spec.attack_success_rate >= 0.9


def test_gpu_box_data_copy_is_close_and_keeps_labels(tmp_path, data):
    """device_data: the JPEG mosaics come back with the same shapes and labels and nearly the same pixels."""
    from fixtures.zoo import device_data

    x, y = data
    np.savez(tmp_path / "toy.npz", x=x[:250], y=y[:250], classes=np.array([str(c) for c in range(10)]))
    device_data.pack(tmp_path, tmp_path / "box", files=("toy",))
    device_data.unpack(tmp_path / "box", tmp_path / "back", files=("toy",))
    back = np.load(tmp_path / "back" / "toy.npz")
    assert back["x"].shape == (250, 32, 32, 3) and np.array_equal(back["y"], y[:250])
    assert list(back["classes"]) == [str(c) for c in range(10)]
    # random noise is JPEG's worst case; CIFAR-10 comes back within 0.7/255 on average
    assert np.abs(back["x"].astype(int) - x[:250]).mean() < 12


def test_gpu_box_models_come_back_byte_for_byte(tmp_path):
    """device_transfer: fp16-rounded weights travel at half size and widen back to the very same bytes."""
    import hashlib
    import shutil

    from fixtures.zoo import device_transfer

    model = tmp_path / "m.onnx"
    shutil.copy(MODELS / "tiny_badnet_cifar10.onnx", model)
    sha = device_transfer.round_to_fp16(model)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == sha
    device_transfer.pack(tmp_path, tmp_path / "out", ["m"])
    packed = tmp_path / "out" / "m.f16.onnx"
    assert packed.stat().st_size < 0.6 * model.stat().st_size
    assert device_transfer.widen(packed) == model.read_bytes()
