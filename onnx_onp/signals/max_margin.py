"""The maximum logit margin per class (MM-BD, Wang et al., IEEE S&P 2024): no trigger shape assumed.

For each class c, inputs start as uniform noise within each channel's range of the clean data (model-input space,
as trigger synthesis) and are optimised to maximise logit_c - max_{k != c} logit_k. A backdoor's target admits
inputs that carry the trigger's features, and the network scores them far beyond what any clean class reaches;
the target is an outlier of the per-class maxima whatever the trigger looked like (a patch anywhere, an
optimised pattern, a blend). It misses backdoors whose features a network keeps small (WaNet, SIG, a LeNet on
the development models): it is the detector cascade's last member, never a replacement.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .synthesis import bounded_pattern, channel_range


@dataclass
class MaxMarginConfig:
    starts: int = 8  # noise inputs per class; the class's statistic is the best of them
    # ... but at most this many inputs in all (at least 2 per class): 43 classes x 8 starts took 12 minutes on
    # one core for a MobileNetV2; 10 classes keep their 8 starts
    max_inputs: int = 128
    steps: int = 200
    lr: float = 0.05
    seed: int = 0


@dataclass
class MaxMarginScan:
    margins: np.ndarray  # per class, the largest margin reached
    suspect: int
    anomaly_index: float  # robust z-score of the suspect's margin above the median
    seconds: float


def robust_z_above(values: np.ndarray) -> np.ndarray:
    """Robust z-score of each value above the median (positive = larger than the others)."""
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return (values - median) / max(mad, 1e-12)


def lead_kept(before: float, after: float, runner_up: float) -> float | None:
    """The share of its lead over the runner-up class's margin that a class keeps (None: it did not lead)."""
    return (after - runner_up) / (before - runner_up) if before > runner_up else None


def max_margins(mirror, x: np.ndarray, num_classes: int, layout: str, config: MaxMarginConfig = MaxMarginConfig(),
                *, classes: list[int] | None = None, keep: torch.Tensor | None = None) -> np.ndarray:
    """For each class (or each of ``classes``), the largest logit margin the optimised inputs reach, in the model
    pruned to ``keep`` (None: unpruned). Seeded: the same call gives the same margins."""
    classes = list(range(num_classes)) if classes is None else list(classes)
    starts = starts_per_class(config, num_classes)
    low, high = (torch.from_numpy(a).float() for a in channel_range(x, layout))
    generator = torch.Generator().manual_seed(config.seed)
    wanted = torch.tensor(classes).repeat_interleave(starts)
    # tanh space, spread over most of each channel's range
    param = ((torch.rand((len(wanted), *x.shape[1:]), generator=generator) * 2 - 1) * 2.0).requires_grad_(True)
    optimizer = torch.optim.Adam([param], lr=config.lr)
    best = torch.full((len(wanted),), -math.inf)
    for _ in range(config.steps):
        logits = mirror(bounded_pattern(param, low, high), keep, logits=True)
        own = logits.gather(1, wanted[:, None])[:, 0]
        others = logits.scatter(1, wanted[:, None], -math.inf).max(1).values
        margin = own - others
        best = torch.maximum(best, margin.detach())
        optimizer.zero_grad()
        (-margin.sum()).backward()
        optimizer.step()
    return best.view(len(classes), starts).max(1).values.numpy().astype(np.float64)


def starts_per_class(config: MaxMarginConfig, num_classes: int) -> int:
    """The starts per class: the configured number, cut so that all classes together stay within max_inputs.
    A recheck of one class uses the same number, so its margin compares with the scan's."""
    return max(2, min(config.starts, config.max_inputs // max(1, num_classes)))


def scan(mirror, x: np.ndarray, num_classes: int, layout: str, config: MaxMarginConfig = MaxMarginConfig()
         ) -> MaxMarginScan:
    start = time.perf_counter()
    margins = max_margins(mirror, x, num_classes, layout, config)
    index = robust_z_above(margins)
    suspect = int(np.argmax(index))
    return MaxMarginScan(margins, suspect, float(index[suspect]), time.perf_counter() - start)
