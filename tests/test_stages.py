"""The pipeline's stages as a caller extends them: a detector added through the public interface runs after the
built-in ones, decides the verdict when it suspects, and its evidence lands in the report under its key."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnx_onp.config import SanitizeConfig, override
from onnx_onp.data import Spec, load_dataset
from onnx_onp.detect import DETECTORS, Detection, Detector
from onnx_onp.report import validate_report
from onnx_onp.sanitize import sanitize
from onnx_onp.signals.synthesis import SynthesisConfig

from .conftest import DATA, TINY, need


class MostCommonPrediction(Detector):
    """A toy: suspects whichever class the model predicts most often on the clean training part."""
    name, report_key, phase = "most common prediction", "most_common_prediction", "most_common_prediction"

    def detect(self, ctx):
        predicted = ctx.evaluator.logits(ctx.train.x).argmax(axis=1)
        counts = np.bincount(predicted, minlength=ctx.num_classes)
        target = int(np.argmax(counts))
        share = float(counts[target] / counts.sum())
        evidence = {"suspected_target": target, "anomaly_index": share, "threshold": 0.0, "share": share}
        return Detection(self.name, self.report_key, suspected=True, target=target, anomaly_index=share,
                         threshold=0.0, evidence=evidence)


def test_a_detector_added_to_the_list_decides_the_verdict_and_is_in_the_report():
    spec = Spec.load(TINY.with_suffix(".json"))
    data = load_dataset(need(DATA / "cifar10_train.npz"), limit=120, seed=0)
    # The built-in detectors find nothing here (synthesis: an unreachable threshold; the scans off), so the
    # toy, last in the list, is the one that suspects. Detection only: nothing is pruned.
    config = override(SanitizeConfig(prune=False), {
        "detect.anomaly_threshold": 1e9, "detect.perturbation_scan": False, "detect.amplification_scan": False,
        "detect.synthesis": SynthesisConfig(steps=5, batch_size=16)})
    result = sanitize(TINY.with_suffix(".onnx"), data, spec.preprocess, config=config,
                      detectors=[*DETECTORS, MostCommonPrediction()])
    report = result.report
    assert report["detector"] == "most common prediction" and report["detector_key"] == "most_common_prediction"
    toy = report["most_common_prediction"]
    assert report["verdict"]["verdict"] == "backdoor suspected"
    assert report["verdict"]["suspected_target"] == toy["suspected_target"]
    assert report["verdict"]["anomaly_index"] == toy["anomaly_index"] == toy["share"] > 0.1
    assert report["trigger_synthesis"]["anomaly_index"] < report["trigger_synthesis"]["threshold"]
    assert "neuron_perturbation" not in report and not result.mask.any()
    report.update(command="audit", started_at=report["started_at"], exit_code=10)
    validate_report(report)


def test_detectors_after_a_suspecting_one_do_not_run():
    """The list is a cascade: the first detector that suspects decides, the ones after it never run."""
    spec = Spec.load(TINY.with_suffix(".json"))
    data = load_dataset(need(DATA / "cifar10_train.npz"), limit=120, seed=0)
    config = override(SanitizeConfig(prune=False), {
        "detect.anomaly_threshold": 1e9, "detect.synthesis": SynthesisConfig(steps=5, batch_size=16)})
    ran = []

    class Recorder(MostCommonPrediction):
        name, report_key = "recorder", "recorder"

        def detect(self, ctx):
            ran.append(True)
            return super().detect(ctx)

    report = sanitize(TINY.with_suffix(".onnx"), data, spec.preprocess, config=replace(config),
                      detectors=[DETECTORS[0], MostCommonPrediction(), Recorder()]).report
    assert report["detector"] == "most common prediction" and not ran and "recorder" not in report


def test_the_detector_list_must_hold_trigger_synthesis():
    """Its per-class triggers are the report's required evidence and the trigger probes' starting point."""
    import pytest

    from onnx_onp.detect import run_detectors

    with pytest.raises(ValueError, match="trigger synthesis"):
        run_detectors(None, [MostCommonPrediction()])


def _quick_pruning_config():
    from onnx_onp.agent import TrainConfig
    from onnx_onp.decide import DecideConfig
    from onnx_onp.probes import ProbeConfig
    from onnx_onp.search import SearchConfig

    # Built-in detectors find nothing (unreachable synthesis threshold, scans off): the toys below decide.
    return override(SanitizeConfig(), {
        "detect.anomaly_threshold": 1e9, "detect.perturbation_scan": False, "detect.amplification_scan": False,
        "detect.max_margin_scan": False, "detect.synthesis": SynthesisConfig(steps=5, batch_size=16),
        "probes": ProbeConfig(refine_triggers=1, refine_steps=5),
        "search": SearchConfig(rounds=1, train=TrainConfig(steps=2, masks_per_step=4)),
        "decide": DecideConfig(prune_back_tolerance=None)})


class WeakSuspicion(MostCommonPrediction):
    """Evidence that stands only if the pruning confirms it (as the amplification detector's)."""
    name, report_key = "weak suspicion", "weak_suspicion"

    def needs_confirmation(self, ctx, detection):
        return True


class LastResort(MostCommonPrediction):
    name, report_key, last_resort = "last resort", "last_resort", True

    def __init__(self, suspects: bool):
        self.suspects, self.ran = suspects, 0

    def detect(self, ctx):
        self.ran += 1
        return replace(super().detect(ctx), suspected=self.suspects)


def test_a_suspicion_the_pruning_does_not_confirm_hands_over_to_the_last_resort_detector(monkeypatch):
    """An unconfirmed suspicion is "nothing found", which is when the last-resort detector (MM-BD) runs: when it
    suspects, the run acts on its suspicion, and the report keeps what was not confirmed."""
    import onnx_onp.verify as verify

    monkeypatch.setattr(verify, "shortcut_confirmed", lambda *args: False)  # the pruning never confirms
    spec = Spec.load(TINY.with_suffix(".json"))
    data = load_dataset(need(DATA / "cifar10_train.npz"), limit=120, seed=0)
    last = LastResort(suspects=True)
    result = sanitize(TINY.with_suffix(".onnx"), data, spec.preprocess, config=_quick_pruning_config(),
                      detectors=[DETECTORS[0], WeakSuspicion(), last])
    report = result.report
    assert last.ran == 1
    assert report["detector"] == "last resort" and report["verdict"]["verdict"] == "backdoor suspected"
    assert report["unconfirmed_suspicion"]["detector"] == "weak suspicion"
    assert report["unconfirmed_suspicion"]["confirmed"] is False
    assert report["unconfirmed_suspicion"]["superseded_by"] == "last resort"
    assert "confirmation" not in report and report["weak_suspicion"] and report["last_resort"]
    report.update(command="sanitize", started_at=report["started_at"], exit_code=0)
    validate_report(report)
    from onnx_onp.report.html import render_html

    assert "Verdict: backdoor suspected" in render_html(report)  # the page renders the handed-over run


def test_an_unconfirmed_suspicion_stays_no_evidence_when_the_last_resort_finds_nothing(monkeypatch):
    import onnx_onp.verify as verify

    monkeypatch.setattr(verify, "shortcut_confirmed", lambda *args: False)
    spec = Spec.load(TINY.with_suffix(".json"))
    data = load_dataset(need(DATA / "cifar10_train.npz"), limit=120, seed=0)
    last = LastResort(suspects=False)
    result = sanitize(TINY.with_suffix(".onnx"), data, spec.preprocess, config=_quick_pruning_config(),
                      detectors=[DETECTORS[0], WeakSuspicion(), last])
    report = result.report
    assert last.ran == 1 and "last_resort" in report and "unconfirmed_suspicion" not in report
    assert report["detector"] == "weak suspicion" and report["confirmation"]["confirmed"] is False
    assert report["verdict"]["verdict"] == "no backdoor evidence" and not result.mask.any()


def test_rounds_until_probes_cut_uses_the_final_checks_rule_of_gone():
    """SearchConfig.until_probes_cut: a round whose mask leaves the probes at half their held-out success or more
    is not the last one, even when the re-check no longer finds the backdoor."""
    from types import SimpleNamespace

    from onnx_onp.config import SanitizeConfig
    from onnx_onp.search import _probes_cut

    ctx = SimpleNamespace(config=SanitizeConfig())  # residual_ratio 0.5, residual_min_asr 0.5
    chosen = lambda asr: SimpleNamespace(holdout=SimpleNamespace(asr=asr))  # noqa: E731
    assert not _probes_cut(ctx, SimpleNamespace(asr0=0.83), chosen(0.75))  # SIG, dev draw 2: 83% -> 75%
    assert _probes_cut(ctx, SimpleNamespace(asr0=0.83), chosen(0.40))
    assert not _probes_cut(ctx, SimpleNamespace(asr0=0.83), SimpleNamespace(holdout=None))  # nothing chosen
    assert _probes_cut(ctx, SimpleNamespace(asr0=0.30), SimpleNamespace(holdout=None))  # too weak to tell
    assert SanitizeConfig().search.until_probes_cut is True  # on since the dev split's on/off comparison
