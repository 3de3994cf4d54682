"""The third backdoor detector: amplify one neuron group at a time (after ABS's neuron stimulation, design.md §3).

SIG's trigger is a faint sinusoid over the whole image: trigger synthesis looks for a patch, and the joint
neuron perturbation (every group within ±5%) sends other classes' images to SIG's target *less* easily than
to other classes (share 0.155 against a median of 0.31 on the benchmark's fixture). What does stand out is the
target's pull on single neurons: multiply one group's output by a large factor (32 or 100) and the model sends
nearly every clean image to one class; in a backdoored model many more groups send them to the target than to
any other class (our reading: the backdoor has taught the late layers that a strong signal means the target;
measured on the SIG fixture, not proven). Per class we count the (group, factor) settings that send at least
``share`` of the other classes' images to it; the target's count is an outlier above the others' (robust
z-score, its spread floored so that models where hardly any group moves anything, and the count is mostly 0, do
not divide by zero).

Every setting runs in onnxruntime through the masked evaluator's per-sample multipliers, many settings per run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..instrument import MaskedEvaluator


@dataclass
class AmplificationConfig:
    factors: tuple[float, ...] = (32.0, 100.0)  # multipliers of one group's output
    share: float = 0.9  # a setting "sends to c" when at least this share of the non-c images end up in c
    images: int = 100  # clean defense images, every class
    # Floor on the counts' spread (1.4826 x MAD), as a share of all settings: a class ahead by a handful of
    # settings in a model where nothing else moves is not an outlier.
    spread_floor: float = 0.01
    max_groups: int | None = 800  # settings scale with the groups: evenly spaced ones beyond this (large models)


@dataclass
class AmplificationScan:
    counts: list[int]  # per class: settings that send at least `share` of the other images to it
    settings: int
    anomaly_index: float
    suspect: int
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        """The suspect's count as a share of all settings."""
        return self.counts[self.suspect] / max(1, self.settings)


def amplified_shares(evaluator: MaskedEvaluator, x: np.ndarray, y: np.ndarray, num_classes: int,
                     groups: np.ndarray, factors) -> np.ndarray:
    """[settings, classes], settings ordered factor-major: share of the images not of class c that the model
    sends to c when one group's output is multiplied by the factor."""
    num_groups = evaluator.nmap.num_groups
    settings = [(g, k) for k in factors for g in groups]
    per_run = max(1, evaluator.batch_size // max(1, len(x)))
    others = [y != c for c in range(num_classes)]
    rows = []
    for start in range(0, len(settings), per_run):
        chunk = settings[start:start + per_run]
        multipliers = np.ones((len(chunk) * len(x), num_groups), np.float32)
        for i, (g, k) in enumerate(chunk):
            multipliers[i * len(x):(i + 1) * len(x), g] = k
        predictions = evaluator.logits(np.concatenate([x] * len(chunk)), None, multipliers).argmax(axis=1)
        for i in range(len(chunk)):
            p = predictions[i * len(x):(i + 1) * len(x)]
            rows.append([float((p[o] == c).mean()) if o.any() else 0.0 for c, o in enumerate(others)])
    return np.array(rows).reshape(len(settings), num_classes)  # also [0, classes] when nothing is prunable


def count_indices(counts, settings: int, spread_floor: float = 0.01) -> np.ndarray:
    """Robust z-score of each class's count above the median; the spread is at least spread_floor x settings
    (and at least one setting)."""
    counts = np.asarray(counts, dtype=np.float64)
    median = float(np.median(counts))
    spread = max(1.4826 * float(np.median(np.abs(counts - median))), spread_floor * settings, 1.0)
    return (counts - median) / spread


def scan(evaluator: MaskedEvaluator, x: np.ndarray, y: np.ndarray, num_classes: int,
         config: AmplificationConfig = AmplificationConfig(), seed: int = 0) -> AmplificationScan:
    start = time.perf_counter()
    pick = np.sort(np.random.default_rng(seed).permutation(len(x))[:config.images])
    groups = np.flatnonzero(evaluator.nmap.prunable)
    if config.max_groups is not None and len(groups) > config.max_groups:
        groups = groups[np.linspace(0, len(groups) - 1, config.max_groups).round().astype(int)]
    shares = amplified_shares(evaluator, x[pick], y[pick], num_classes, groups, config.factors)
    counts = (shares >= config.share).sum(axis=0)
    index = count_indices(counts, len(shares), config.spread_floor)
    suspect = int(np.argmax(index))
    return AmplificationScan(counts=counts.astype(int).tolist(), settings=len(shares),
                             anomaly_index=float(index[suspect]), suspect=suspect,
                             seconds=time.perf_counter() - start)
