"""Random pruning: as many neurons (or groups) as another defense prunes, chosen at random among the prunable
groups. The control that tells whether a defense's choice of neurons matters, or only how many it removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MaskError
from ..instrument import MaskedEvaluator
from ..load.loader import LoadedModel
from ..metrics import Prepared
from ..neuron_map import NeuronMap
from .base import DefenseResult, pruned_neuron_count


@dataclass
class RandomConfig:
    count: int = 0  # how many to prune
    unit: str = "neurons"  # "neurons": groups are added until `count` neurons are pruned; "groups": `count` groups
    seed: int = 0


def random_pruning(lm: LoadedModel, nmap: NeuronMap, data: Prepared | None = None, *,
                   evaluator: MaskedEvaluator | None = None, config: RandomConfig | None = None) -> DefenseResult:
    """Prune random prunable groups, seeded; data-free.

    With ``unit="neurons"`` the groups are visited in a seeded random order and each is taken while it fits in
    the remaining count, so the total is exactly ``count`` when groups of one neuron remain, at most ``count``
    otherwise.
    """
    config = config or RandomConfig()
    if config.unit not in ("neurons", "groups"):
        raise ValueError(f"unit must be 'neurons' or 'groups', not {config.unit!r}")
    candidates = np.flatnonzero(nmap.prunable)
    sizes = np.array([len(nmap.groups[int(g)].neurons) for g in candidates], dtype=np.int64)
    available = int(sizes.sum()) if config.unit == "neurons" else len(candidates)
    if not 0 <= config.count <= available:
        raise MaskError(f"cannot prune {config.count} random {config.unit}: the model has {available} prunable")
    order = np.random.default_rng(config.seed).permutation(len(candidates))
    mask = nmap.empty_mask()
    if config.unit == "groups":
        mask[candidates[order[:config.count]]] = True
    else:
        left = config.count
        for i in order:
            if left == 0:
                break
            if sizes[i] <= left:
                mask[candidates[i]] = True
                left -= int(sizes[i])
    info = {"requested": config.count, "unit": config.unit, "seed": config.seed,
            "pruned_neurons": pruned_neuron_count(nmap, mask), "pruned_groups": int(mask.sum())}
    return DefenseResult(mask, info)
