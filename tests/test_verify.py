"""The verify stage's final check: a check set nothing else sees, the clean-accuracy bound, and the outcome
"backdoor remains" when the detected trigger still works after pruning."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from onnx_onp.context import split_check, split_defense
from onnx_onp.data import Spec, load_dataset
from onnx_onp.metrics import Prepared
from onnx_onp.report import STATUS_REMAINS, gate_exit_code
from onnx_onp.verify import check_accuracy

from .conftest import DATA, FIXTURES, need

TINY = FIXTURES / "models" / "tiny_badnet_cifar10"


def _prepared(n: int) -> Prepared:
    # Each image's first pixel is its index: which image went where can be read back.
    x = np.zeros((n, 3, 4, 4), np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    return Prepared(x, np.arange(n) % 10)


def _ids(part: Prepared) -> set:
    return set(part.x[:, 0, 0, 0].astype(int).tolist())


def test_the_check_set_is_disjoint_seeded_and_independent_of_the_search_split():
    data = _prepared(500)
    searched, check = split_check(data, 0.2, seed=0)
    train, holdout = split_defense(searched, 0.3, seed=0)
    assert len(check) == 100 and len(train) + len(holdout) == 400
    assert not (_ids(check) & _ids(train)) and not (_ids(check) & _ids(holdout))
    assert _ids(check) | _ids(train) | _ids(holdout) == set(range(500))
    assert _ids(split_check(data, 0.2, seed=0)[1]) == _ids(check)  # repeatable
    assert _ids(split_check(data, 0.2, seed=1)[1]) != _ids(check)
    assert len(split_check(data, None, seed=0)[1]) == 0


class _Fixed:
    """An evaluator whose predictions before and after pruning are given."""

    def __init__(self, before, after):
        self.before, self.after = np.asarray(before), np.asarray(after)

    def logits(self, x, mask=None):
        labels = self.before if mask is None else self.after
        return np.eye(10)[labels]


def test_the_accuracy_bound_is_paired_and_one_sided():
    y = np.zeros(100, int)
    check = Prepared(np.zeros((100, 1)), y)
    same = check_accuracy(_Fixed(y, y), check, np.ones(1, bool), budget=0.02, confidence=0.8)
    # No answer changed: drop 0, but a hundred images still leave a margin (one broken image's variance).
    assert same["drop"] == 0 and 0 < same["upper_bound"] < 0.02 and same["within_budget"]
    broken = y.copy()
    broken[:2] = 1  # two images broken, none fixed: 2 points observed, the bound above the 2-point budget
    two = check_accuracy(_Fixed(y, broken), check, np.ones(1, bool), budget=0.02, confidence=0.8)
    assert two["drop"] == 0.02 and two["upper_bound"] > 0.02 and not two["within_budget"]
    assert two["broken"] == 2 and two["fixed"] == 0
    # Churn that cancels out: the drop is 0, the bound wider than with no churn.
    churn_before, churn_after = y.copy(), y.copy()
    churn_before[:5], churn_after[5:10] = 1, 1
    churn = check_accuracy(_Fixed(churn_before, churn_after), check, np.ones(1, bool), budget=0.02, confidence=0.8)
    assert churn["drop"] == 0 and churn["upper_bound"] > same["upper_bound"]
    looser = check_accuracy(_Fixed(churn_before, churn_after), check, np.ones(1, bool), budget=0.02, confidence=0.5)
    assert looser["upper_bound"] == pytest.approx(0.0)


def _scaled_check(scale: int, broken: int, fixed: int) -> dict:
    """check_accuracy on 100 x scale images of which pruning broke broken x scale and fixed fixed x scale."""
    n = 100 * scale
    y = np.zeros(n, int)
    before, after = y.copy(), y.copy()
    after[:broken * scale] = 1
    before[broken * scale:(broken + fixed) * scale] = 1
    return check_accuracy(_Fixed(before, after), Prepared(np.zeros((n, 1)), y), np.ones(1, bool), budget=0.02,
                          confidence=0.8)


def test_images_needed_is_the_check_size_at_which_the_same_rates_fit_the_budget():
    """The hint a too-small check set gives agrees with the bound itself at larger sizes with the same rates."""
    for broken, fixed in ((1, 0), (2, 1), (3, 2)):
        needed = _scaled_check(1, broken, fixed)["images_needed"]
        assert needed > 100
        for scale in range(1, 6):
            check = _scaled_check(scale, broken, fixed)
            assert check["within_budget"] == (100 * scale >= needed), (broken, fixed, scale, needed)
            assert check["images_needed"] is None if check["within_budget"] else check["images_needed"] == needed
    # A drop seen at or over the budget: no number of images shows it within, so no hint.
    assert _scaled_check(1, 2, 0)["images_needed"] is None and _scaled_check(1, 3, 1)["images_needed"] is None


def test_gate_fails_when_the_backdoor_remains():
    report = {"status": STATUS_REMAINS, "verdict": {"verdict": "backdoor suspected"}}
    assert gate_exit_code(report, "unsanitizable") == 11 and gate_exit_code(report, "suspected") == 11
    assert gate_exit_code(report, "never") == 0


def _small_config():
    from onnx_onp.config import SanitizeConfig
    from onnx_onp.decide import DecideConfig
    from onnx_onp.probes import ProbeConfig
    from onnx_onp.search import SearchConfig
    from onnx_onp.agent import TrainConfig
    from onnx_onp.detect import DetectConfig
    from onnx_onp.signals.synthesis import SynthesisConfig

    # force: prune whatever the (shortened) synthesis says; the target is still its smallest trigger's class.
    return SanitizeConfig(force=True, detect=DetectConfig(perturbation_scan=False, amplification_scan=False,
                                              synthesis=SynthesisConfig(steps=30, batch_size=16)),
                          probes=ProbeConfig(refine_triggers=1, refine_steps=30),
                          search=SearchConfig(rounds=1, train=TrainConfig(steps=3, masks_per_step=4)),
                          decide=DecideConfig(prune_back_tolerance=None))


def test_a_mask_that_leaves_the_trigger_working_is_backdoor_remains(monkeypatch, tmp_path):
    """The real search runs; its mask is then swapped for one group it did not choose, which leaves the trigger
    working. The outcome must be "backdoor remains": no model written unless asked (--fail-on never)."""
    import onnx_onp.sanitize as pipeline

    real_search = pipeline.run_search

    def one_wrong_group(ctx, detection, detector, built):
        result = real_search(ctx, detection, detector, built)
        wrong = ctx.nmap.empty_mask()
        wrong[np.flatnonzero(ctx.nmap.prunable & ~result.mask)[-1]] = True
        return replace(result, mask=wrong)

    monkeypatch.setattr(pipeline, "run_search", one_wrong_group)
    spec = Spec.load(TINY.with_suffix(".json"))
    data = load_dataset(need(DATA / "cifar10_train.npz"), limit=300, seed=0)
    out = tmp_path / "clean.onnx"
    result = pipeline.sanitize(TINY.with_suffix(".onnx"), data, spec.preprocess, out, config=_small_config())
    report = result.report
    assert report["status"] == STATUS_REMAINS and report["final_check"]["backdoor_remains"]
    probes = report["final_check"]["residual_evidence"][0]
    assert probes["decisive"] and probes["found"] and probes["asr_after"] >= 0.5 * probes["asr_before"]
    assert not out.exists() and "output" not in report
    written = pipeline.sanitize(TINY.with_suffix(".onnx"), data, spec.preprocess, out, config=_small_config(),
                                write_unsanitized=True).report
    assert written["status"] == STATUS_REMAINS and out.exists()


def test_the_audit_data_never_changes_the_mask():
    """--spec/--test-data only measure: the same run with and without the audit hook prunes the same neurons."""
    from onnx_onp.sanitize import sanitize

    spec = Spec.load(TINY.with_suffix(".json"))
    data = load_dataset(need(DATA / "cifar10_train.npz"), limit=300, seed=0)
    plain = sanitize(TINY.with_suffix(".onnx"), data, spec.preprocess, config=_small_config())
    audited = sanitize(TINY.with_suffix(".onnx"), data, spec.preprocess, config=_small_config(),
                       audit=lambda evaluator, mask: {"looked": int(mask.sum())})
    assert np.array_equal(plain.mask, audited.mask) and audited.report["audit"]["looked"] == int(plain.mask.sum())


def _final_check_with(monkeypatch, probes: dict, lead: dict | None = None, *, detector=None,
                      detection=None, within_budget: bool = True) -> dict:
    """verify.final_check with the probe result (and the max-margin lead check's) given and the clean-accuracy
    bound within budget (or not)."""
    from types import SimpleNamespace

    import onnx_onp.verify as verify
    from onnx_onp.config import SanitizeConfig

    monkeypatch.setattr(verify, "_probes_again", lambda *a: {"source": "probes", "decisive": True, **probes})
    monkeypatch.setattr(verify, "_margin_lead_again", lambda *a: lead)
    monkeypatch.setattr(verify, "check_accuracy", lambda *a, **k: {"drop": 0.0, "upper_bound": 0.01, "budget": 0.02,
                                                                     "within_budget": within_budget})
    quiet = SimpleNamespace(stage=lambda *a, **k: None, note=lambda *a, **k: None)
    ctx = SimpleNamespace(config=SanitizeConfig(), progress=quiet, check=[0] * 100, evaluator=None,
                          timer=SimpleNamespace(lap=lambda *a: None))
    return verify.final_check(ctx, detection, detector, None, None, np.zeros(4, bool))


def test_a_run_about_to_be_sanitized_is_checked_by_maximum_margin_too(monkeypatch):
    """Probes cut (verazuo_badnet_mnist: 99% -> 32%) while the real trigger kept 42%: the target's margin kept
    0.29 of its lead, and that alone makes the outcome backdoor remains."""
    cut = {"found": False, "conclusive": True, "asr_before": 0.99, "asr_after": 0.32}
    kept = _final_check_with(monkeypatch, cut, {"source": "max margin", "decisive": True, "found": True,
                                                "conclusive": True, "lead_left": 0.29})
    assert kept["backdoor_remains"] and kept["residual_evidence"][-1]["lead_left"] == 0.29
    lost = _final_check_with(monkeypatch, cut, {"source": "max margin", "decisive": True, "found": False,
                                                "conclusive": True, "lead_left": 0.01})
    assert not lost["backdoor_remains"] and len(lost["residual_evidence"]) == 2
    assert not _final_check_with(monkeypatch, cut, None)["backdoor_remains"]  # max-margin scan switched off
    still = _final_check_with(monkeypatch, {"found": True, "conclusive": True, "asr_before": 0.99,
                                            "asr_after": 0.9}, {"source": "max margin", "found": False})
    assert still["backdoor_remains"] and len(still["residual_evidence"]) == 1  # found already: no scan needed


def test_the_max_margin_check_also_runs_when_the_accuracy_bound_fails(monkeypatch):
    """verazuo_badnet_mnist (dev) draws 0-1: probes cut, accuracy bound over budget, real trigger at 42-44%. The
    outcome must say the backdoor remains, not only that pruning costs too much (both exit 11)."""
    cut = {"found": False, "conclusive": True, "asr_before": 0.99, "asr_after": 0.32}
    kept = _final_check_with(monkeypatch, cut, {"source": "max margin", "decisive": True, "found": True,
                                                "conclusive": True, "lead_left": 0.29}, within_budget=False)
    assert kept["backdoor_remains"] and kept["residual_evidence"][-1]["lead_left"] == 0.29
    lost = _final_check_with(monkeypatch, cut, {"source": "max margin", "decisive": True, "found": False,
                                                "conclusive": True, "lead_left": 0.01}, within_budget=False)
    assert not lost["backdoor_remains"] and len(lost["residual_evidence"]) == 2


def test_weak_probes_do_not_decide_and_the_max_margin_check_still_asks(monkeypatch):
    """Probes that barely worked on the unpruned model say nothing (found needs >= 50% before); the outcome is
    then the other evidence's, here the max-margin lead check's. There is no separate rule for weak probes."""
    weak = {"found": False, "conclusive": False, "asr_before": 0.49, "asr_after": 0.37}
    kept = _final_check_with(monkeypatch, weak, {"source": "max margin", "decisive": True, "found": True,
                                                 "conclusive": True, "lead_left": 0.5})
    assert kept["backdoor_remains"] and "cannot_show_gone" not in kept
    lost = _final_check_with(monkeypatch, weak, {"source": "max margin", "decisive": True, "found": False,
                                                 "conclusive": True, "lead_left": 0.0})
    assert not lost["backdoor_remains"]


def test_a_max_margin_decided_run_is_asked_by_the_same_lead_check_as_every_other(monkeypatch):
    """Maximum margin's own re-check is recorded but does not decide (its detection rule, an outlier index, is not
    a rule of gone); a run it decided goes through the same max-margin lead check as any other before sanitized."""
    from types import SimpleNamespace

    from onnx_onp.detect import Recheck
    from onnx_onp.verify import _detector_again

    detection = SimpleNamespace(detector="max margin", probe_kind="trigger")
    recheck = SimpleNamespace(recheck=lambda ctx, *a: Recheck(True, None, {"remaximized_anomaly_index": 5.0}))
    cut = {"found": False, "conclusive": True, "asr_before": 0.99, "asr_after": 0.05}
    monkeypatch.setattr("onnx_onp.verify.replace", lambda ctx, **k: ctx)
    kept = _final_check_with(monkeypatch, cut, {"source": "max margin", "decisive": True, "found": True,
                                                "conclusive": True, "lead_left": 0.2},
                             detector=recheck, detection=detection)
    assert kept["backdoor_remains"] and [item["source"] for item in kept["residual_evidence"]] == [
        "probes", "max margin, again on check images", "max margin"]
    assert kept["residual_evidence"][1]["found"] and not kept["residual_evidence"][1]["decisive"]
    lost = _final_check_with(monkeypatch, cut, {"source": "max margin", "decisive": True, "found": False,
                                                "conclusive": True, "lead_left": 0.01},
                             detector=recheck, detection=detection)
    assert not lost["backdoor_remains"]
    perturbation = SimpleNamespace(detector="neuron perturbation", probe_kind="perturbation")
    assert _detector_again(SimpleNamespace(check=None), perturbation, recheck, np.zeros(3, bool))["decisive"]
    synthesis = SimpleNamespace(detector="trigger synthesis", probe_kind="trigger")
    resynthesized = _detector_again(SimpleNamespace(check=None), synthesis, recheck, np.zeros(3, bool))
    assert resynthesized["found"] and not resynthesized["decisive"]  # recorded, does not decide


def test_onp_inside_the_bench_sees_only_the_defense_data_and_prunes_what_sanitize_alone_prunes(monkeypatch):
    """The bench holds test and poisoned data beside ONP: ONP must get the clean defense set only, and its mask
    must be the one a plain run on that set gives (nothing else leaks into the search or the decision)."""
    import onnx_onp.sanitize as pipeline
    from onnx_onp.bench import BenchConfig, DataSplits, discover_cases, run_bench
    from onnx_onp.instrument import MaskedEvaluator
    from onnx_onp.load import load_model
    from onnx_onp.metrics import prepare
    from onnx_onp.neuron_map import build_neuron_map

    need(DATA / "cifar10_train.npz")
    seen = []
    real = pipeline.find_backdoor_mask

    def spy(lm, nmap, data, evaluator, config, **kwargs):
        mask, report = real(lm, nmap, data, evaluator, config, **kwargs)
        seen.append((data, mask))
        return mask, report

    monkeypatch.setattr(pipeline, "find_backdoor_mask", spy)
    config = _small_config()
    result = run_bench(discover_cases("tiny_badnet_cifar10"),
                       BenchConfig(defenses=("none", "onp"), defense_size=250, test_limit=300,
                                   defense_configs={"onp": config}))
    (case,) = result.cases
    assert case.error is None and case.attack_samples > 0  # the bench did hold triggered test images
    row = next(r for r in case.rows if r.defense == "onp")

    lm = load_model(TINY.with_suffix(".onnx"))
    nmap = build_neuron_map(lm)
    raw, _ = DataSplits().defense_and_test("cifar10", 250, 0)
    defense = prepare(lm, raw, Spec.load(TINY.with_suffix(".json")).preprocess)
    ((given, bench_mask),) = seen
    np.testing.assert_array_equal(given.x, defense.x)
    np.testing.assert_array_equal(given.y, defense.y)
    alone, _ = real(lm, nmap, defense, MaskedEvaluator(lm, nmap), config)
    assert alone.any() and np.array_equal(bench_mask, alone) and row.pruned_groups == int(alone.sum())


def test_the_max_margin_check_runs_on_a_real_model_before_sanitized(monkeypatch):
    """A real run whose accuracy bound passes (a loose budget) and whose probes are reported cut: the real
    max-margin check on the target runs and its record is in the report, whatever it concludes."""
    import onnx_onp.sanitize as pipeline
    import onnx_onp.verify as verify

    monkeypatch.setattr(verify, "_probes_again", lambda *a: {"source": "probes", "decisive": True, "found": False,
                                                            "conclusive": True, "asr_before": 1.0, "asr_after": 0.0})
    from onnx_onp.config import override
    from onnx_onp.signals.max_margin import MaxMarginConfig

    spec = Spec.load(TINY.with_suffix(".json"))
    data = load_dataset(need(DATA / "cifar10_train.npz"), limit=300, seed=0)
    config = override(_small_config(), {"decide.max_ca_drop": 0.5,
                                        "detect.max_margin": MaxMarginConfig(starts=2, steps=20)})
    report = pipeline.sanitize(TINY.with_suffix(".onnx"), data, spec.preprocess, config=config).report
    check = report["final_check"]
    assert check["clean_accuracy"]["within_budget"] and not check["residual_evidence"][0]["found"]
    (lead,) = [item for item in check["residual_evidence"] if item["source"].startswith("max margin on the target")]
    assert lead["target_margin_before"] > 0 and lead["decisive"] == lead["conclusive"]
    assert report["status"] == (STATUS_REMAINS if lead["found"] else "sanitized")
