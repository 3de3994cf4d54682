"""The test split of the zoo: its new triggers and architectures, the dev/test/real case selection, and
`bench --draws` (mean and worst over draws of the defense data, the gate classifier)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures.zoo import attacks
from onnx_onp.baselines import DEFENSES, DefenseResult
from onnx_onp.bench import BenchConfig, DataSplits, discover_cases
from onnx_onp.bench.report import gate_summary
from onnx_onp.data import Spec, trigger_from_dict
from onnx_onp.errors import DataError
from onnx_onp_cli.main import main

from .conftest import DATA, FIXTURES, need

TINY = FIXTURES / "models" / "tiny_badnet_cifar10"
TEST_MODELS = FIXTURES / "test_models"


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)


# -- triggers -----------------------------------------------------------------------------------------------

def test_random_patch_moves_per_image_and_is_reproducible(images):
    spec = {"kind": "random_patch", "size": 4, "value": [255, 255, 0], "position_seed": 7}
    trigger = trigger_from_dict(spec)
    a, b = trigger.apply(images), trigger.apply(images)
    assert np.array_equal(a, b) and trigger.to_dict() == spec
    changed = np.any(a != images, axis=3)
    assert changed.sum(axis=(1, 2)).max() <= 16
    # every stamped image holds one yellow 4x4 square, and not all at the same place
    corners = set()
    for img in a:
        rows, cols = np.nonzero(np.all(img == [255, 255, 0], axis=2))
        assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
        corners.add((rows.min(), cols.min()))
    assert len(corners) > 20


def test_lowfreq_is_smooth_and_bounded(images):
    trigger = trigger_from_dict({"kind": "lowfreq", "k": 4, "delta": 24, "seed": 3})
    pattern = trigger.pattern(32, 32, 3)
    assert np.abs(pattern).max() == pytest.approx(24)
    assert np.abs(np.diff(pattern, axis=0)).max() < 24 / 4  # no jump of a high-frequency pattern
    diff = trigger.apply(images).astype(int) - images
    assert np.abs(diff).max() <= 24 and (diff != 0).mean() > 0.5


def test_dynamic_trigger_differs_per_input_and_keeps_its_density(images):
    trigger = trigger_from_dict({"kind": "dynamic", "seed": 5, "density": 0.1})
    a = trigger.apply(images)
    assert np.array_equal(a, trigger.apply(images))
    masks = np.any(a != images, axis=3)
    assert masks.mean(axis=(1, 2)).max() <= 0.1 + 1e-9
    assert len({m.tobytes() for m in masks}) == len(images)  # the mask depends on the image
    # one image stamped alone gets the same pixels as in the batch: the trigger is per input
    assert np.array_equal(trigger.apply(images[3:4])[0], a[3])


def test_pattern_patch_reads_its_file_relative_to_the_spec(tmp_path, images):
    patch = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    np.save(tmp_path / "p.npy", patch)
    trigger = trigger_from_dict({"kind": "pattern_patch", "pattern_file": "p.npy", "row": -7, "col": 1}, tmp_path)
    out = trigger.apply(images)
    assert np.array_equal(out[:, 25:30, 1:6], np.broadcast_to(patch, (len(images), 5, 5, 3)))
    assert np.array_equal(np.delete(out, np.s_[25:30], axis=1), np.delete(images, np.s_[25:30], axis=1))
    with pytest.raises(DataError, match="does not fit"):
        trigger_from_dict({"kind": "pattern_patch", "pattern_file": "p.npy", "row": 30, "col": 0},
                          tmp_path).apply(images)
    with pytest.raises(DataError, match="cannot read"):
        trigger_from_dict({"kind": "pattern_patch", "pattern_file": "missing.npy", "row": 0, "col": 0}, tmp_path)


@pytest.mark.parametrize("spec,message", [
    ({"kind": "random_patch", "size": 40, "value": 255, "position_seed": 0}, "does not fit"),
    ({"kind": "random_patch", "size": 3, "value": [1, 2], "position_seed": 0}, "2 values"),
    ({"kind": "dynamic", "seed": 0, "density": 1.5}, "density"),
    ({"kind": "lowfreq", "k": 1, "delta": 10, "seed": 0}, "'k'"),
])
def test_bad_new_triggers_are_data_errors(images, spec, message):
    with pytest.raises(DataError, match=message):
        trigger_from_dict(spec).apply(images)


def test_test_attacks_poison_dirty_label_to_their_target(images):
    labels = np.arange(len(images)) % 10
    for attack in ("patch", "random_patch", "dynamic", "lowfreq"):
        out = attacks.poison_training_set(images, labels, attack, 0.25, seed=1, target=7)
        assert len(out.poisoned) == 16 and np.all(out.y[out.poisoned] == 7)
        assert np.all(labels[out.poisoned] != 7)
        assert np.array_equal(np.delete(out.x, out.poisoned, 0), np.delete(images, out.poisoned, 0))


def test_optimised_patch_raises_the_surrogates_target_score(images):
    torch.manual_seed(0)
    surrogate = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32 * 3, 10))

    def to_input(xb):
        return xb.float() / 255.0

    patch = attacks.optimise_patch(surrogate, images, to_input, target=4, size=6, row=2, col=2, seed=0, steps=40)
    assert patch.shape == (6, 6, 3) and patch.dtype == np.uint8

    def score(p):
        stamped = images.copy()
        stamped[:, 2:8, 2:8] = p
        with torch.no_grad():
            return float(surrogate(to_input(torch.from_numpy(stamped))).log_softmax(1)[:, 4].mean())

    random_patch = np.random.default_rng(1).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    assert score(patch) > max(score(random_patch), score(np.full((6, 6, 3), 128, np.uint8))) + 0.2


# -- architectures ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,width", [("preact18", 4), ("wrn16", 4), ("vgg16bn", 4)])
def test_test_set_architectures_export_and_map(arch, width, tmp_path):
    from fixtures.zoo.export import export_onnx, randomize_bn, torch_logits
    from fixtures.zoo.train import build_model
    from onnx_onp.load import load_model
    from onnx_onp.neuron_map import build_neuron_map
    from onnx_onp.runtime import make_session

    torch.manual_seed(0)
    model = randomize_bn(build_model(arch, width, 10)).eval()
    path = export_onnx(model, tmp_path / f"{arch}.onnx", (1, 3, 32, 32))
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    session, _ = make_session(path.read_bytes(), "cpu", threads=1)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, torch_logits(model, x), atol=1e-4)
    nmap = build_neuron_map(load_model(path))
    assert nmap.prunable.sum() > 0


# -- cases --------------------------------------------------------------------------------------------------

def _write_case(folder: Path, name: str, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    spec = json.loads(TINY.with_suffix(".json").read_text())
    spec.update(name=name, **extra)
    (folder / f"{name}.json").write_text(json.dumps(spec))
    (folder / f"{name}.onnx").write_bytes(TINY.with_suffix(".onnx").read_bytes())


def test_cases_split_into_dev_test_and_real(tmp_path):
    need(TINY.with_suffix(".onnx"))
    repo = tmp_path / "repo"
    _write_case(repo / "fixtures" / "models", "a_dev")
    _write_case(repo / "fixtures" / "models", "b_marked", split="test")
    _write_case(repo / "fixtures" / "test_models", "c_test")
    _write_case(tmp_path / "shared" / "real_models", "d_real_cifar10")
    names = lambda which: [c.name for c in discover_cases(which, repo=repo, shared=tmp_path / "shared")]  # noqa: E731
    assert names("dev") == ["a_dev"]
    assert names("test") == ["b_marked", "c_test"]
    assert names("real") == ["d_real_cifar10"]
    assert names("all") == ["a_dev", "b_marked", "c_test", "d_real_cifar10"]
    assert names("fixtures") == ["a_dev", "b_marked"]  # fixtures/models, as before the split
    splits = {c.name: c.split for c in discover_cases("all", repo=repo, shared=tmp_path / "shared")}
    assert splits == {"a_dev": "dev", "b_marked": "test", "c_test": "test", "d_real_cifar10": "dev"}
    _write_case(repo / "fixtures" / "test_models", "a_dev")
    with pytest.raises(DataError, match="two cases are named 'a_dev'"):
        discover_cases("all", repo=repo, shared=tmp_path / "shared")
    _write_case(repo / "fixtures" / "test_models", "e_bad", split="holdout")
    with pytest.raises(DataError, match="unknown split"):
        discover_cases("test", repo=repo, shared=tmp_path / "shared")


@pytest.mark.skipif(not TEST_MODELS.is_dir() or not any(TEST_MODELS.glob("*.json")), reason="no test model yet")
def test_committed_test_models_are_sound():
    cases = discover_cases("test")
    dev = {c.name for c in discover_cases("dev")}
    assert cases and not dev & {c.name for c in cases}
    for case in cases:
        spec = Spec.load(case.spec)
        training = json.loads(case.spec.read_text())["training"]
        assert case.split == "test" and spec.trigger is not None and spec.target == training["target"]
        assert case.model.stat().st_size < 50e6
        if training["attack"] != "none":  # ASR under 85% still counts only when it is meaningful (README)
            assert spec.attack_success_rate > 0.5 and spec.target != 0


# -- bench --draws ------------------------------------------------------------------------------------------

def test_draw_seeds_and_fixed_test_subset():
    config = BenchConfig(defenses=("none",), seed=2, draws=3)
    assert config.draw_seeds == [2, 3, 4]
    with pytest.raises(ValueError, match="draws"):
        BenchConfig(draws=0)
    need(DATA / "cifar10_train.npz")
    splits = DataSplits()
    d0, t0 = splits.defense_and_test("cifar10", 50, 0, 40, test_seed=9)
    d1, t1 = splits.defense_and_test("cifar10", 50, 1, 40, test_seed=9)
    assert not np.array_equal(d0.x, d1.x) and np.array_equal(t0.x, t1.x)


def test_bench_draws_report_mean_worst_and_the_gate(tmp_path, monkeypatch):
    """Three draws on the tiny fixture; `onp` replaced by a stub that prunes CLP's channel on draw 0 only and
    says `sanitized` every time, so the gate's error count is known."""
    need(DATA / "cifar10_train.npz")
    need(TINY.with_suffix(".onnx"))
    seen = []

    def fake_onp(lm, nmap, data, *, evaluator=None, config=None):
        seen.append(data.x.copy())
        clp = DEFENSES["clp"].run(lm, nmap, data, evaluator=evaluator, config=DEFENSES["clp"].config())
        mask = clp.mask if len(seen) == 1 else nmap.empty_mask()
        return DefenseResult(mask, {"status": "sanitized", "verdict": "backdoor suspected"})

    monkeypatch.setitem(DEFENSES, "onp", dataclasses.replace(DEFENSES["onp"], run=fake_onp,
                                                            extra_outputs=DEFENSES["clp"].extra_outputs))
    out, js = tmp_path / "t.md", tmp_path / "t.json"
    result = CliRunner().invoke(main, ["bench", "--cases", "tiny_badnet_cifar10", "--defenses", "none,onp,random",
                                       "--defense-size", "60", "--test-limit", "150", "--draws", "3",
                                       "--out", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert len(seen) == 3 and not np.array_equal(seen[0], seen[1])  # three different defense sets
    payload = json.loads(js.read_text())
    assert [(c["name"], c["split"], c["draw"]) for c in payload["cases"]] == [
        ("tiny_badnet_cifar10", "dev", d) for d in (0, 1, 2)]
    assert len({c["before"]["ca"] for c in payload["cases"]}) == 1  # one test subset for every draw
    onp_rows = [r for c in payload["cases"] for r in c["rows"] if r["defense"] == "onp"]
    assert [r["status"] for r in onp_rows] == ["sanitized"] * 3 and [r["draw"] for r in onp_rows] == [0, 1, 2]
    summary = {e["defense"]: e for e in payload["summary"]}
    asr = [r["asr"] for r in onp_rows]
    assert summary["onp"]["asr_mean"] == pytest.approx(np.mean(asr))
    assert summary["onp"]["asr_worst"] == pytest.approx(max(asr)) and summary["onp"]["draws"] == [0, 1, 2]
    assert summary["onp"]["der_worst"] == pytest.approx(min(r["der"] for r in onp_rows))
    # draws 1 and 2 prune nothing: the backdoor (ASR ~ 90%) stays while ONP says "sanitized"
    assert asr[0] < 0.2 < min(asr[1:])
    gate = payload["gate"]
    assert gate["pairs"] == 3 and gate["sanitized_while_asr_over_20"] == 2
    assert gate["remains_while_asr_under_10"] == 0 and gate["by_status"] == {"sanitized": 3}
    table = out.read_text()
    assert "`sanitized` said while test ASR > 20%: **2** of 3" in table
    assert "| tiny_badnet_cifar10 | dev | cifar10 | onp | 3 |" in table
    assert "| tiny_badnet_cifar10 | cifar10 | onp | 2 |" in table  # per-draw row with its draw column


def test_gate_counts_all_three_errors():
    rows = [{"status": "sanitized", "asr_after": 0.25}, {"status": "sanitized", "asr_after": 0.05},
            {"status": "backdoor remains: x", "asr_after": 0.05}, {"status": "backdoor remains: x", "asr_after": 0.5},
            {"status": "no backdoor evidence: nothing pruned", "asr_after": None},
            {"status": "no backdoor evidence: nothing pruned", "asr_after": 0.99},
            {"status": "no backdoor evidence: nothing pruned", "asr_after": 0.02}]
    counts = gate_summary(rows)
    assert counts["sanitized_while_asr_over_20"] == 1 and counts["remains_while_asr_under_10"] == 1
    assert counts["missed_while_asr_over_20"] == 1
    assert counts["pairs"] == 7 and sum(counts["by_status"].values()) == 7


def test_draws_option_is_validated():
    assert CliRunner().invoke(main, ["bench", "--cases", "tiny_badnet_cifar10", "--draws", "0"]).exit_code == 2
    result = CliRunner().invoke(main, ["bench", "--verdicts", "--draws", "2"])
    assert result.exit_code == 2 and "--draws" in result.output
