"""What every baseline defense returns, and the registry entry that describes one.

A defense sees the model, its neuron map, the *clean* defense data (a ``Prepared`` set of a few hundred
training images with their labels) and its configuration; never poisoned data, never test data. It returns
a pruning mask over the neuron map's groups (True = pruned) and a JSON-ready ``info`` dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..instrument import MaskedEvaluator
from ..load.loader import LoadedModel
from ..metrics import Prepared
from ..neuron_map import NeuronMap


@dataclass
class DefenseResult:
    """A defense's decision: ``mask`` is a boolean vector over groups (True = pruned)."""

    mask: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pruned_groups(self) -> int:
        return int(np.count_nonzero(self.mask))


# run(lm, nmap, data, *, evaluator=None, config=None) -> DefenseResult
DefenseFn = Callable[..., DefenseResult]


@dataclass(frozen=True)
class Defense:
    """A registry entry: the function, its configuration class, and the tensors it reads from the evaluator.

    ``extra_outputs(lm, nmap, config)`` names tensors the defense wants from ``MaskedEvaluator.activations``, so
    that a harness can build one evaluator for every defense it runs (a defense given an evaluator without
    them builds its own).
    """

    name: str
    run: DefenseFn
    config: type
    needs_data: bool
    description: str
    extra_outputs: Callable[[LoadedModel, NeuronMap, Any], list[str]] = lambda lm, nmap, config: []

    def __call__(self, lm: LoadedModel, nmap: NeuronMap, data: Prepared, *,
                 evaluator: MaskedEvaluator | None = None, config=None) -> DefenseResult:
        return self.run(lm, nmap, data, evaluator=evaluator, config=config)


def pruned_neuron_count(nmap: NeuronMap, mask: np.ndarray) -> int:
    """Neurons removed by a group mask (a group of k tied neurons counts k)."""
    return int(sum(len(nmap.groups[int(g)].neurons) for g in np.flatnonzero(mask)))


def unit_groups(nmap: NeuronMap, layer_index: int) -> np.ndarray:
    """Group index of every unit of one layer."""
    return nmap.layer_groups(nmap.layers[layer_index])


@dataclass
class NoneConfig:
    """No options: the undefended model."""


def no_defense(lm: LoadedModel, nmap: NeuronMap, data: Prepared | None = None, *,
               evaluator: MaskedEvaluator | None = None, config: NoneConfig | None = None) -> DefenseResult:
    """The reference row: nothing pruned."""
    return DefenseResult(nmap.empty_mask(), {})
