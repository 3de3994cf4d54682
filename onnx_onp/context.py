"""What every pipeline stage reads: the model, its neuron map, the evaluators, the defense data's parts and the
config, plus the phase timer and the progress listener. Built once per run by ``sanitize.find_backdoor_mask``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .metrics import Prepared


class PhaseTimer:
    """Seconds per pipeline phase (a phase may be entered several times: its laps add up)."""

    def __init__(self):
        self.phases: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self._start, 3)
        self._start = now


def split_defense(data: Prepared, holdout: float, seed: int) -> tuple[Prepared, Prepared]:
    """The defense data's training part (the search fits it) and held-out part (the decision checks on it)."""
    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, int(round(len(data) * (1 - holdout))))
    return (Prepared(data.x[order[:cut]], data.y[order[:cut]]), Prepared(data.x[order[cut:]], data.y[order[cut:]]))


def split_check(data: Prepared, share: float | None, seed: int) -> tuple[Prepared, Prepared]:
    """The search's part of the defense data and the final check set, which nothing but the verify stage sees.
    Cut first, with its own seed stream, so the check images never depend on the search's settings."""
    if not share:
        return data, Prepared(data.x[:0], data.y[:0])
    order = np.random.default_rng([seed, 1]).permutation(len(data))
    size = int(round(len(data) * share))
    check, rest = np.sort(order[:size]), np.sort(order[size:])
    return Prepared(data.x[rest], data.y[rest]), Prepared(data.x[check], data.y[check])


# Trigger synthesis stamps candidate triggers on images of the other classes: with fewer than this many in
# the training part of the defense data, every step would reuse the same one or two images.
MIN_OTHER_IMAGES = 8


def check_defense(train: Prepared, holdout: Prepared) -> None:
    """Refuse defense data the analysis cannot use, in one line (DataError) rather than deep inside it."""
    from .errors import DataError

    labels, counts = np.unique(train.y, return_counts=True)
    if len(labels) < 2:
        raise DataError(f"the defense data's training part has images of {len(labels)} class"
                        f"{'' if len(labels) == 1 else 'es'} ({', '.join(map(str, labels.tolist())) or 'none'}); "
                        "trigger synthesis needs images of at least two classes")
    others = len(train.y) - counts
    if others.min() < MIN_OTHER_IMAGES:
        worst = int(labels[others.argmin()])
        raise DataError(f"the defense data's training part has only {int(others.min())} images outside class "
                        f"{worst}; trigger synthesis needs at least {MIN_OTHER_IMAGES} images of other classes "
                        "for every class (give more images, of more classes)")
    if len(holdout) < 2:
        raise DataError(f"the defense data has {len(train) + len(holdout)} images: too few to hold any out for "
                        "the clean-accuracy check")


@dataclass
class RunContext:
    lm: object  # load.LoadedModel
    nmap: object  # neuron_map.NeuronMap
    evaluator: object  # instrument.MaskedEvaluator: every reward, in onnxruntime
    mirror: object  # mirror.TorchMirror: gradients for synthesis, perturbation and signals
    config: object  # config.SanitizeConfig
    defense: Prepared  # all of it, as given
    train: Prepared  # the search fits its rewards on it
    holdout: Prepared  # the decision checks on it
    layout: str
    axes: tuple[int, int]
    progress: object
    timer: PhaseTimer
    check: Prepared = None  # only the verify stage's final check reads it (context.split_check)
    detections: dict = field(default_factory=dict)  # detector name -> Detection, in the order they ran

    @property
    def search_data(self) -> Prepared:
        """Everything but the check set: train and holdout together (the prune-back scores on it)."""
        return Prepared(np.concatenate([self.train.x, self.holdout.x]), np.concatenate([self.train.y, self.holdout.y]))

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def num_classes(self) -> int:
        return self.lm.num_classes
