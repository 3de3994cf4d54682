"""Detector cut-offs that account for the number of classes.

Every detector scores each class and flags the largest score (a robust z-score) when it reaches a cut-off.
The cut-offs were set for 10 classes (Neural Cleanse's 2.0 is a 10-class number); with more classes the
largest score of a clean model is larger by chance alone: on the clean GTSRB ResNet-18 (43 classes) trigger
synthesis measured 2.42, over the 10-class cut-off. We keep a clean model's chance of crossing the cut-off at
what it is at 10 classes (Bonferroni over the classes, scores read as standard normal under no backdoor), and
never lower a cut-off below its 10-class value.
"""

from __future__ import annotations

from statistics import NormalDist

REFERENCE_CLASSES = 10


def for_classes(threshold: float, num_classes: int, reference: int = REFERENCE_CLASSES) -> float:
    """The cut-off for num_classes that flags a clean model as often as ``threshold`` does at ``reference``."""
    if num_classes <= reference:
        return float(threshold)
    normal = NormalDist()
    tail = (1.0 - normal.cdf(threshold)) * reference / num_classes
    return max(float(threshold), normal.inv_cdf(1.0 - tail))
