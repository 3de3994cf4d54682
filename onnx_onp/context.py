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


@dataclass
class RunContext:
    lm: object  # load.LoadedModel
    nmap: object  # neuron_map.NeuronMap
    evaluator: object  # instrument.MaskedEvaluator: every reward, in onnxruntime
    mirror: object  # mirror.TorchMirror: gradients for synthesis, perturbation and signals
    config: object  # config.SanitizeConfig
    defense: Prepared
    train: Prepared
    holdout: Prepared
    layout: str
    axes: tuple[int, int]
    progress: object
    timer: PhaseTimer
    detections: dict = field(default_factory=dict)  # detector name -> Detection, in the order they ran

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def num_classes(self) -> int:
        return self.lm.num_classes
