"""Stage: detect. Is there a backdoor, and which class does it send inputs to? On clean defense data only.

Detectors run in the order of the list given to the pipeline (``DETECTORS`` by default) until one suspects a
backdoor; each one that ran writes its evidence under its ``report_key``. A new detector is one class and one
line in that list::

    class LogitOutlier(Detector):
        name, report_key, phase = "logit outlier", "logit_outlier", "logit_outlier_scan"

        def detect(self, ctx):
            index, target = ...  # anything computed from ctx.train, ctx.mirror or ctx.evaluator
            return Detection(self.name, self.report_key, suspected=index >= 3.0, target=target,
                             anomaly_index=index, threshold=3.0,
                             evidence={"suspected_target": target, "anomaly_index": index, "threshold": 3.0})

    sanitize(model, data, None, detectors=[*DETECTORS, LogitOutlier()])

A suspect is then probed with triggers synthesized for its class (``probe_kind = "trigger"``) or with the
neuron perturbation that sends images to it (``"perturbation"``), and searched for again after every pruning
round (``recheck``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..signals.amplification import AmplificationConfig
from ..signals.amplification import scan as scan_amplification
from ..signals.max_margin import MaxMarginConfig, max_margins, robust_z_above, starts_per_class
from ..signals.max_margin import scan as scan_max_margin
from ..signals.perturbation import PerturbationConfig, perturb_towards
from ..signals.perturbation import scan as scan_perturbation
from ..signals.synthesis import SynthesisConfig, anomaly_indices, synthesize
from ..signals.thresholds import for_classes


@dataclass
class DetectConfig:
    # Below it: no backdoor evidence, nothing is pruned (unless force). The three detectors' thresholds are for
    # 10 classes; with more, each is raised so a clean model is flagged as often (signals/thresholds.py).
    anomaly_threshold: float = 2.0
    # A synthesized trigger is a backdoor's only when its mask is smaller than this share of the other classes'
    # median: for the verdict (with the anomaly index) and for "still found" after a round. The index alone is a
    # z-score, large whenever the clean classes' masks are close together.
    found_ratio: float = 0.75
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    # The second detector, run when trigger synthesis finds nothing (warping and whole-image triggers).
    perturbation_scan: bool = True
    perturbation_threshold: float = 3.0  # anomaly index of the target's share among the classes' shares
    # ... and the share itself: on nets where no class moves (shares of 0-14%) the index alone is noise
    perturbation_min_share: float = 0.5
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    # The third, run when neither finds anything (SIG): one group at a time amplified; the suspect's probe is
    # then its synthesized trigger, as for the first detector.
    amplification_scan: bool = True
    amplification_threshold: float = 5.0  # anomaly index of the target's count of settings
    amplification_min_fraction: float = 0.05  # ... and its count as a share of all settings
    amplification: AmplificationConfig = field(default_factory=AmplificationConfig)
    # The fourth, run when none of the others finds anything: the per-class maximum logit margin (MM-BD), which
    # assumes no trigger shape. 4.0: the largest clean model's index on the development models was 3.34
    # (experiments/max_margin_scan.py, fixed there before any test model was scanned).
    max_margin_scan: bool = True
    max_margin_threshold: float = 4.0
    max_margin: MaxMarginConfig = field(default_factory=MaxMarginConfig)


@dataclass
class Detection:
    detector: str
    report_key: str
    suspected: bool
    target: int
    anomaly_index: float
    threshold: float
    evidence: dict  # the report's section for this detector
    probe_kind: str = "trigger"  # "trigger" or "perturbation": what probes the suspect's backdoor
    result: object = None  # the detector's own result object (SynthesisResult, PerturbationScan, ...)


@dataclass
class Recheck:
    """A detector's search for the backdoor again, against the model as pruned so far."""
    found: bool
    probe: object  # the probe it found: joins the reward's probes for the next round
    record: dict  # what the round's report entry says about it


class Detector:
    name = "detector"
    report_key = "detector"
    phase = "detector"  # the timer's phase name
    probe_kind = "trigger"
    # A last-resort detector runs when the others find nothing, and also when what they found is not confirmed
    last_resort = False

    def enabled(self, config: DetectConfig) -> bool:
        return True

    def detect(self, ctx) -> Detection:
        raise NotImplementedError

    def needs_confirmation(self, ctx, detection: Detection) -> bool:
        """Weak evidence: it stands only if the pruning search then takes most of the probe's success away."""
        return False

    def recheck(self, ctx, detection: Detection, keep: torch.Tensor, round_index: int) -> Recheck:
        """Is the backdoor still found in the model pruned to ``keep``? By default: its trigger re-synthesized."""
        return _resynthesize(ctx, detection, keep, round_index)


def _note(ctx, detection: Detection) -> None:
    ctx.progress.note(f"{detection.detector}: suspected target {detection.target}, anomaly index "
                      f"{detection.anomaly_index:.2f}"
                      + (f", mask {detection.result.size_ratio:.2f} of the others'"
                         if detection.report_key == "trigger_synthesis" else "")
                      + f" ({'backdoor suspected' if detection.suspected else 'no backdoor evidence'})")


class TriggerSynthesis(Detector):
    """Neural-Cleanse style: one small trigger per class; the backdoor's is an outlier in size."""
    name, report_key, phase = "trigger synthesis", "trigger_synthesis", "trigger_synthesis"

    def detect(self, ctx) -> Detection:
        config = ctx.config.detect
        ctx.progress.stage("trigger synthesis, one candidate per class", total=ctx.num_classes)
        synthesis = synthesize(ctx.mirror, ctx.train.x, ctx.train.y, ctx.num_classes, ctx.layout, config.synthesis,
                               progress=lambda c: ctx.progress.advance())
        ctx.timer.lap(self.phase)
        threshold = for_classes(config.anomaly_threshold, ctx.num_classes)
        suspected = synthesis.anomaly_index >= threshold and synthesis.size_ratio < config.found_ratio
        evidence = {"suspected_target": synthesis.suspect, "anomaly_index": round(synthesis.anomaly_index, 3),
                    "threshold": round(threshold, 3), "size_ratio": round(synthesis.size_ratio, 3),
                    "max_size_ratio": config.found_ratio,
                    "mask_l1_per_class": [round(n, 2) for n in synthesis.norms],
                    "success_per_class": [round(c.success, 3) for c in synthesis.candidates],
                    "seconds": round(synthesis.seconds, 2)}
        return Detection(self.name, self.report_key, bool(suspected), synthesis.suspect, synthesis.anomaly_index,
                         threshold, evidence, self.probe_kind, synthesis)

    def needs_confirmation(self, ctx, detection: Detection) -> bool:
        return detection.anomaly_index < for_classes(ctx.config.verify.confirm_below, ctx.num_classes)


class NeuronPerturbation(Detector):
    """ANP's finding: small bounded changes to the neurons send a backdoored model's inputs to its target."""
    name, report_key, phase, probe_kind = "neuron perturbation", "neuron_perturbation", "perturbation_scan", \
        "perturbation"

    def enabled(self, config: DetectConfig) -> bool:
        return config.perturbation_scan

    def detect(self, ctx) -> Detection:
        config = ctx.config.detect
        ctx.progress.stage("neuron-perturbation scan, one per class", total=ctx.num_classes)
        scan = scan_perturbation(ctx.mirror, ctx.nmap.num_groups, ctx.train.x, ctx.train.y, ctx.num_classes,
                                 config.perturbation, progress=lambda c: ctx.progress.advance())
        ctx.timer.lap(self.phase)
        threshold = for_classes(config.perturbation_threshold, ctx.num_classes)
        suspected = scan.anomaly_index >= threshold and scan.best.share >= config.perturbation_min_share
        evidence = {"suspected_target": scan.suspect, "anomaly_index": round(scan.anomaly_index, 3),
                    "threshold": round(threshold, 3), "min_share": config.perturbation_min_share,
                    "epsilon": config.perturbation.epsilon, "share_per_class": [round(v, 3) for v in scan.shares],
                    "seconds": round(scan.seconds, 2)}
        return Detection(self.name, self.report_key, bool(suspected), scan.suspect, scan.anomaly_index, threshold,
                         evidence, self.probe_kind, scan)

    def recheck(self, ctx, detection: Detection, keep: torch.Tensor, round_index: int) -> Recheck:
        config = ctx.config.detect
        again = perturb_towards(ctx.mirror, perturbation_images(ctx, detection.target), detection.target,
                                ctx.nmap.num_groups, replace(config.perturbation, seed=ctx.seed + 100 + round_index),
                                keep)
        # Still an outlier against the other classes' shares in the unpruned model?
        others = [v for c, v in enumerate(detection.result.shares) if c != detection.target]
        index = float(anomaly_indices(1.0 - np.array(others + [again.share]))[-1])
        found = index >= detection.threshold and again.share >= config.perturbation_min_share
        return Recheck(bool(found), again, {"reperturbed_share": round(again.share, 3),
                                            "reperturbed_anomaly_index": round(index, 3)})


def perturbation_images(ctx, target: int) -> torch.Tensor:
    """Other classes' training images the perturbations are fitted on (a seeded subset)."""
    others = np.flatnonzero(ctx.train.y != target)
    others = np.sort(np.random.default_rng(ctx.seed).permutation(others)[:ctx.config.detect.perturbation.images])
    return torch.from_numpy(ctx.train.x[others])


class NeuronAmplification(Detector):
    """One group at a time amplified: a backdoor's neurons, turned up, send other classes' images to its target."""
    name, report_key, phase = "neuron amplification", "neuron_amplification", "amplification_scan"

    def enabled(self, config: DetectConfig) -> bool:
        return config.amplification_scan

    def detect(self, ctx) -> Detection:
        config = ctx.config.detect
        ctx.progress.stage("neuron-amplification scan, one group at a time")
        scan = scan_amplification(ctx.evaluator, ctx.train.x, ctx.train.y, ctx.num_classes, config.amplification,
                                  seed=ctx.seed)
        ctx.timer.lap(self.phase)
        threshold = for_classes(config.amplification_threshold, ctx.num_classes)
        suspected = scan.anomaly_index >= threshold and scan.fraction >= config.amplification_min_fraction
        evidence = {"suspected_target": scan.suspect, "anomaly_index": round(scan.anomaly_index, 3),
                    "threshold": round(threshold, 3), "min_fraction": config.amplification_min_fraction,
                    "factors": list(config.amplification.factors), "settings": scan.settings,
                    "count_per_class": scan.counts, "seconds": round(scan.seconds, 2)}
        return Detection(self.name, self.report_key, bool(suspected), scan.suspect, scan.anomaly_index, threshold,
                         evidence, self.probe_kind, scan)

    def needs_confirmation(self, ctx, detection: Detection) -> bool:
        return True


class MaxMargin(Detector):
    """MM-BD: a backdoor's target reaches logit margins no clean class does, from optimised noise inputs. The
    suspect's probe is its synthesized trigger, as for the first detector."""
    name, report_key, phase = "max margin", "max_margin", "max_margin_scan"
    last_resort = True

    def enabled(self, config: DetectConfig) -> bool:
        return config.max_margin_scan

    def detect(self, ctx) -> Detection:
        config = ctx.config.detect
        ctx.progress.stage("maximum-margin scan, all classes at once")
        scan = scan_max_margin(ctx.mirror, ctx.train.x, ctx.num_classes, ctx.layout,
                               replace(config.max_margin, seed=ctx.seed))
        ctx.timer.lap(self.phase)
        threshold = for_classes(config.max_margin_threshold, ctx.num_classes)
        evidence = {"suspected_target": scan.suspect, "anomaly_index": round(scan.anomaly_index, 3),
                    "threshold": round(threshold, 3), "margin_per_class": [round(float(m), 2) for m in scan.margins],
                    "steps": config.max_margin.steps,
                    "starts": starts_per_class(config.max_margin, ctx.num_classes),
                    "seconds": round(scan.seconds, 2)}
        return Detection(self.name, self.report_key, bool(scan.anomaly_index >= threshold), scan.suspect,
                         scan.anomaly_index, threshold, evidence, self.probe_kind, scan)

    def recheck(self, ctx, detection: Detection, keep: torch.Tensor, round_index: int) -> Recheck:
        """The target's maximum margin in the pruned model, against the other classes' in the unpruned one; the
        trigger re-synthesized in it is the next round's probe (its size is recorded, the margin decides)."""
        config = ctx.config.detect
        synthesized = _resynthesize(ctx, detection, keep, round_index)
        again = max_margins(ctx.mirror, ctx.train.x, ctx.num_classes, ctx.layout,
                            replace(config.max_margin, seed=ctx.seed + 100 + round_index),
                            classes=[detection.target], keep=keep)[0]
        others = [m for c, m in enumerate(detection.result.margins) if c != detection.target]
        index = float(robust_z_above(np.array(others + [again]))[-1])
        return Recheck(bool(index >= detection.threshold), synthesized.probe,
                       {**synthesized.record, "remaximized_margin": round(float(again), 2),
                        "remaximized_anomaly_index": round(index, 3)})


DETECTORS: list[Detector] = [TriggerSynthesis(), NeuronPerturbation(), NeuronAmplification(), MaxMargin()]


def run_detectors(ctx, detectors: list[Detector]) -> Detection:
    """Each enabled detector in turn until one suspects a backdoor. Returns the deciding detection: the suspecting
    one, or the first one's when none suspects. Every detection is kept in ``ctx.detections``."""
    if not any(isinstance(d, TriggerSynthesis) for d in detectors):
        raise ValueError("the detector list must hold trigger synthesis: its per-class triggers are the report's "
                         "evidence and the trigger probes' starting point")
    deciding = None
    for detector in detectors:
        if not detector.enabled(ctx.config.detect):
            continue
        detection = detector.detect(ctx)
        ctx.detections[detector.name] = detection
        _note(ctx, detection)
        if deciding is None or detection.suspected:
            deciding = detection
        if detection.suspected:
            break
    if deciding is None:
        raise ValueError("no detector is enabled")
    return deciding


def run_last_resort(ctx, detectors: list[Detector]) -> Detection | None:
    """The last-resort detectors that have not run yet, in turn until one suspects a backdoor (after a suspicion
    that the pruning did not confirm). None when there is none to run."""
    found = None
    for detector in detectors:
        if not detector.last_resort or detector.name in ctx.detections or not detector.enabled(ctx.config.detect):
            continue
        found = detector.detect(ctx)
        ctx.detections[detector.name] = found
        _note(ctx, found)
        if found.suspected:
            break
    return found


def detector_named(detectors: list[Detector], name: str) -> Detector:
    return next(d for d in detectors if d.name == name)


def synthesis_result(ctx):
    """The trigger-synthesis detector's result: every class's trigger (trigger probes and rechecks start there)."""
    return ctx.detections[TriggerSynthesis.name].result


def others_median(ctx, target: int) -> float:
    """The other classes' median trigger mask norm: a trigger for the target much smaller than it is a backdoor's."""
    norms = synthesis_result(ctx).norms
    return float(np.median([n for c, n in enumerate(norms) if c != target]))


def refinement(config, seed: int) -> SynthesisConfig:
    """The synthesis settings of every search for the suspect's probe after the first look (more steps; each
    search its own seed, so the probes differ)."""
    return replace(config.detect.synthesis, steps=config.probes.refine_steps, seed=seed)


def _resynthesize(ctx, detection: Detection, keep: torch.Tensor, round_index: int) -> Recheck:
    target = detection.target
    again = synthesize(ctx.mirror, ctx.train.x, ctx.train.y, ctx.num_classes, ctx.layout,
                       refinement(ctx.config, ctx.seed + 100 + round_index), classes=[target], keep=keep).candidates[0]
    found = again.success >= 0.8 and again.mask_l1 < ctx.config.detect.found_ratio * others_median(ctx, target)
    return Recheck(bool(found), again, {"resynthesized_mask_l1": round(again.mask_l1, 2),
                                        "resynthesized_success": round(again.success, 3)})
