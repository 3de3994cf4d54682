"""The neuron map: the one abstraction the rest of onnx-onp builds on.

A *neuron* is an output channel of a Conv/ConvTranspose or an output unit of a Gemm/MatMul with a constant
weight. Neurons whose channels meet (residual Add, depthwise conv, elementwise Mul) must be pruned together:
they form a *group*, the unit every mask, signal, policy and export works with (cf. Torch-Pruning's
dependency groups). The map also records *where* a group lives in the graph:

- mask sites: tensors where the instrumented model multiplies by the group's mask (a zero there is exactly
  what removing the group does);
- parameter sites: initializer slices that belong to a group (zeroed by the zeroed export, cut by shrink);
- shape sites: nodes whose attributes or constant inputs count channels (updated by shrink).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import MaskError


@dataclass(frozen=True)
class Layer:
    index: int
    name: str  # the ONNX node's name
    op_type: str  # Conv, ConvTranspose, Gemm or MatMul
    output: str  # tensor the neurons come out of
    size: int  # number of neurons (output channels or units)
    first_neuron: int  # global index of its unit 0
    weight: str  # initializer holding the weights

    @property
    def kind(self) -> str:
        return "conv" if self.op_type.startswith("Conv") else "fc"

    def neuron(self, unit: int) -> int:
        return self.first_neuron + unit


@dataclass(frozen=True)
class Group:
    index: int
    neurons: tuple[int, ...]  # global neuron indices, ascending
    prunable: bool
    reasons: tuple[str, ...]  # why not prunable (empty when prunable)


@dataclass
class MaskSite:
    tensor: str
    groups: np.ndarray  # group index per element, compact (broadcastable to the tensor); -1: no prunable group


@dataclass
class ParamSite:
    initializer: str
    axis: int
    groups: np.ndarray  # 1-D: group index per position along axis; -1: none
    zero: bool  # True: zeroed by the zeroed export (and cut by shrink); False: only cut by shrink


@dataclass
class ShapeSite:
    node: str
    kind: str  # "reshape", "split", "group" (depthwise conv) or "fixed" (shrink cannot adapt it)
    groups: list[np.ndarray]  # per relevant tensor, compact group-index arrays
    detail: str = ""


@dataclass
class NeuronMap:
    layers: list[Layer]
    groups: list[Group]
    neuron_group: np.ndarray  # group index of every neuron
    mask_sites: list[MaskSite]
    param_sites: list[ParamSite]
    shape_sites: list[ShapeSite]
    blocked_tensors: dict[str, str] = field(default_factory=dict)  # tensor -> why its channels are unprunable

    # -- lookups ---------------------------------------------------------------------------------------------

    @property
    def num_neurons(self) -> int:
        return int(self.neuron_group.shape[0])

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def prunable(self) -> np.ndarray:
        """Boolean vector over groups."""
        return np.array([g.prunable for g in self.groups], dtype=bool)

    def layer(self, key: str | int) -> Layer:
        if isinstance(key, int) or (isinstance(key, str) and key.lstrip("#").isdigit() and key.startswith("#")):
            index = int(str(key).lstrip("#"))
            if not 0 <= index < len(self.layers):
                raise MaskError(f"no layer #{index}: the model has {len(self.layers)} layers with neurons")
            return self.layers[index]
        for layer in self.layers:
            if layer.name == key:
                return layer
        raise MaskError(f"no layer named '{key}' (see `onnx-onp inspect` for the names)")

    def layer_of(self, neuron: int) -> Layer:
        starts = [layer.first_neuron for layer in self.layers]
        return self.layers[int(np.searchsorted(starts, neuron, side="right")) - 1]

    def label(self, neuron: int) -> str:
        layer = self.layer_of(neuron)
        return f"{layer.name}:{neuron - layer.first_neuron}"

    def group_of(self, layer: str | int, unit: int) -> Group:
        lay = self.layer(layer)
        if not 0 <= unit < lay.size:
            raise MaskError(f"layer '{lay.name}' has {lay.size} neurons; {unit} is out of range")
        return self.groups[int(self.neuron_group[lay.neuron(unit)])]

    # -- masks -----------------------------------------------------------------------------------------------

    def empty_mask(self) -> np.ndarray:
        """A pruning mask over groups: True = pruned."""
        return np.zeros(self.num_groups, dtype=bool)

    def mask_from_neurons(self, neurons: dict[str, list[int]] | list[tuple[str | int, int]]) -> np.ndarray:
        """Mask pruning the groups of the given neurons ({layer: [units]} or [(layer, unit)])."""
        pairs = [(k, u) for k, units in neurons.items() for u in units] if isinstance(neurons, dict) else neurons
        mask = self.empty_mask()
        for layer, unit in pairs:
            group = self.group_of(layer, int(unit))
            if not group.prunable:
                raise MaskError(f"neuron {self.layer(layer).name}:{unit} cannot be pruned: {group.reasons[0]}")
            mask[group.index] = True
        return mask

    def check_mask(self, mask) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.shape != (self.num_groups,):
            raise MaskError(f"mask has shape {mask.shape}; the model has {self.num_groups} groups")
        mask = mask.astype(bool)
        bad = np.flatnonzero(mask & ~self.prunable)
        if bad.size:
            group = self.groups[int(bad[0])]
            raise MaskError(f"group {group.index} ({self.label(group.neurons[0])}) cannot be pruned: "
                            f"{group.reasons[0]}")
        return mask

    def pruned_neurons(self, mask) -> dict[str, list[int]]:
        """{layer name: [units]} of every neuron a group mask prunes."""
        mask = self.check_mask(mask)
        result: dict[str, list[int]] = {}
        for group in np.flatnonzero(mask):
            for neuron in self.groups[int(group)].neurons:
                layer = self.layer_of(neuron)
                result.setdefault(layer.name, []).append(neuron - layer.first_neuron)
        return {name: sorted(units) for name, units in result.items()}

    def layer_groups(self, layer: Layer | str | int) -> np.ndarray:
        """Group index of every unit of one layer (unit order)."""
        layer = layer if isinstance(layer, Layer) else self.layer(layer)
        return self.neuron_group[layer.first_neuron:layer.first_neuron + layer.size]

    # -- summaries -------------------------------------------------------------------------------------------

    def summary(self) -> dict:
        prunable = self.prunable
        per_layer = []
        for layer in self.layers:
            groups = self.layer_groups(layer)
            ok = prunable[groups]
            reasons = sorted({r for g in set(groups[~ok].tolist()) for r in self.groups[g].reasons})
            per_layer.append({
                "index": layer.index, "name": layer.name, "op": layer.op_type, "neurons": layer.size,
                "prunable": int(ok.sum()),
                "shared_groups": int(sum(len(self.groups[g].neurons) > 1 for g in set(groups.tolist()))),
                "unprunable_reasons": reasons,
            })
        multi = [g for g in self.groups if len(g.neurons) > 1]
        reason_counts: dict[str, int] = {}
        for g in self.groups:
            for r in g.reasons:
                reason_counts[r] = reason_counts.get(r, 0) + len(g.neurons)
        return {
            "layers": per_layer,
            "neurons": self.num_neurons,
            "groups": self.num_groups,
            "prunable_groups": int(prunable.sum()),
            "prunable_neurons": int(sum(len(g.neurons) for g in self.groups if g.prunable)),
            "multi_neuron_groups": len(multi),
            "largest_group": max((len(g.neurons) for g in self.groups), default=0),
            "unprunable_reasons": dict(sorted(reason_counts.items(), key=lambda kv: -kv[1])),
        }

    def group_layers(self, group: Group) -> list[str]:
        return sorted({self.layer_of(n).name for n in group.neurons}, key=lambda n: self.layer(n).index)
