"""Clean accuracy, attack success rate and robust accuracy of a (masked) model, on prepared data.

Shared by `evaluate`, `prune`, the benchmark and `sanitize`, so every number in the project is computed the
same way: ASR counts only images whose true label is not the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Dataset, Preprocess, Spec, check_labels, poison
from .errors import DataError
from .instrument import MaskedEvaluator
from .load.loader import LoadedModel


@dataclass
class Prepared:
    """Model-ready inputs with their true labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def default_preprocess(lm: LoadedModel) -> Preprocess:
    """Pixels scaled to [0, 1], layout read off the model's input."""
    return Preprocess(layout=Preprocess.infer_layout(lm.input_shape))


def prepare(lm: LoadedModel, dataset: Dataset, preprocess: Preprocess, *, what: str = "data") -> Prepared:
    """Check that the data fits the model (shape, labels) and preprocess it."""
    if len(dataset) == 0:
        raise DataError(f"{what}: the dataset is empty")
    y = dataset.require_labels()
    check_labels(dataset, lm.num_classes)
    preprocess.fit_to_input(dataset.x.shape, lm.input_shape)
    x = preprocess.apply(dataset.x).astype(lm.input_dtype, copy=False)
    expected = tuple(lm.probe_input_shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise DataError(f"{what}: preprocessed images have shape {list(x.shape[1:])}; the model expects "
                        f"{list(expected)}")
    return Prepared(x=x, y=y.astype(np.int64))


def prepare_triggered(lm: LoadedModel, dataset: Dataset, spec: Spec, preprocess: Preprocess) -> Prepared:
    """Stamp the spec's trigger on every non-target image (labels stay the true ones) and preprocess."""
    if spec.trigger is None or spec.target is None:
        raise DataError("the spec has no trigger or no target: cannot measure attack success")
    return prepare(lm, poison(dataset, spec.trigger, spec.target), preprocess, what="triggered data")


@dataclass
class AttackScores:
    asr: float  # share of triggered non-target images classified as the target
    ra: float  # share of triggered non-target images classified as their true label
    samples: int


def clean_accuracy(evaluator: MaskedEvaluator, data: Prepared, mask=None) -> float:
    return evaluator.score(data.x, data.y, mask).accuracy


def attack_scores(evaluator: MaskedEvaluator, triggered: Prepared, target: int, mask=None) -> AttackScores:
    keep = triggered.y != target
    if not keep.any():
        raise DataError(f"no triggered image has a true label other than the target {target}")
    predictions = evaluator.logits(triggered.x[keep], mask).argmax(axis=1)
    return AttackScores(asr=float((predictions == target).mean()),
                        ra=float((predictions == triggered.y[keep]).mean()), samples=int(keep.sum()))
