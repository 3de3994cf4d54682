"""Fine-Pruning (Liu, Dolan-Gavitt and Garg, RAID 2018), the pruning half, without the fine-tuning.

The last conv layer's channels are ranked by their mean activation on clean data and pruned, least active
first, one by one; pruning stops before the step at which the accuracy on the clean defense data would drop
by more than ``max_drop`` below the unpruned model's.

Which tensor is "the activation": the conv output, followed forward through its single-consumer
BatchNormalization, Relu/LeakyRelu/Clip and residual Add/Sum nodes (so in a ResNet block it is the block's
output after the residual sum and ReLU, as in BackdoorBench's implementation), then passed through a ReLU and
averaged over batch and space. The last conv layer is the last Conv of the neuron map with at least one
prunable channel; a channel prunes its whole group (in a ResNet, that channel of the residual stream).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..instrument import MaskedEvaluator
from ..load.loader import LoadedModel
from ..metrics import Prepared
from ..neuron_map import Layer, NeuronMap
from .base import DefenseResult, unit_groups

FOLLOW = ("BatchNormalization", "Relu", "LeakyRelu", "Clip", "Add", "Sum")


@dataclass
class FpConfig:
    max_drop: float = 0.05  # largest allowed drop of defense-data accuracy (absolute, 0.05 = 5 points)
    chunk: int = 8  # masks scored per round before checking the stopping rule
    full_curve: bool = False  # score every step, not only up to the stop (for plots)


def last_conv_layer(nmap: NeuronMap) -> Layer | None:
    """The last Conv layer of the map with a prunable channel."""
    prunable = nmap.prunable
    convs = [layer for layer in nmap.layers
             if layer.op_type == "Conv" and prunable[unit_groups(nmap, layer.index)].any()]
    return convs[-1] if convs else None


def activation_tensor(lm: LoadedModel, tensor: str) -> str:
    """Follow ``tensor`` through single-consumer BN / activation / residual-add nodes of the same shape."""
    shape = lm.shapes.get(tensor)
    while True:
        consumers = [n for n in lm.model.graph.node if tensor in n.input]
        if len(consumers) != 1 or consumers[0].op_type not in FOLLOW:
            return tensor
        node = consumers[0]
        if node.op_type in ("BatchNormalization", "Relu", "LeakyRelu", "Clip") and node.input[0] != tensor:
            return tensor
        out = node.output[0]
        if lm.shapes.get(out) != shape:
            return tensor
        tensor = out


def fp_extra_outputs(lm: LoadedModel, nmap: NeuronMap, config=None) -> list[str]:
    layer = last_conv_layer(nmap)
    return [] if layer is None else [activation_tensor(lm, layer.output)]


def fine_pruning(lm: LoadedModel, nmap: NeuronMap, data: Prepared, *, evaluator: MaskedEvaluator | None = None,
                 config: FpConfig | None = None) -> DefenseResult:
    """Prune the last conv layer's least active channels while defense-data accuracy stays within max_drop."""
    config = config or FpConfig()
    layer = last_conv_layer(nmap)
    if layer is None:
        return DefenseResult(nmap.empty_mask(), {"layer": None, "reason": "no conv layer with prunable channels"})
    tensor = activation_tensor(lm, layer.output)
    if evaluator is None or tensor not in evaluator.extra_outputs:
        evaluator = MaskedEvaluator(lm, nmap, provider=_choice(evaluator.provider) if evaluator else "auto",
                                    extra_outputs=[tensor])
    act = evaluator.activations(data.x)[tensor]
    channel_axis = 1 if act.shape[1] == layer.size else act.ndim - 1  # NCHW, or NHWC after a Transpose
    reduce = tuple(a for a in range(act.ndim) if a != channel_axis)
    mean_act = np.maximum(act, 0).mean(axis=reduce, dtype=np.float64)

    groups = unit_groups(nmap, layer.index)
    prunable = nmap.prunable[groups]
    order = [int(u) for u in np.argsort(mean_act, kind="stable") if prunable[u]]
    skipped = int((~prunable).sum())

    # Step k prunes the first k channels of the order (their groups).
    steps = np.zeros((len(order), nmap.num_groups), dtype=bool)
    for k, unit in enumerate(order):
        if k:
            steps[k] = steps[k - 1]
        steps[k, groups[unit]] = True

    base = evaluator.score(data.x, data.y).accuracy
    curve: list[float] = []
    stop = None  # first step whose accuracy drop exceeds max_drop
    for start in range(0, len(steps), max(1, config.chunk)):
        for scores in evaluator.score_many(data.x, data.y, steps[start:start + config.chunk]):
            curve.append(scores.accuracy)
            if stop is None and base - scores.accuracy > config.max_drop:
                stop = len(curve) - 1
        if stop is not None and not config.full_curve:
            break
    kept_steps = len(order) if stop is None else stop  # number of channels pruned
    mask = steps[kept_steps - 1].copy() if kept_steps else nmap.empty_mask()
    info = {
        "layer": layer.name, "activation_tensor": tensor, "channels": layer.size, "skipped_unprunable": skipped,
        "max_drop": config.max_drop, "defense_accuracy_before": base,
        "defense_accuracy_after": curve[kept_steps - 1] if kept_steps else base,
        "pruned_channels": kept_steps, "pruned_units": order[:kept_steps],
        "order": order, "mean_activation": [round(float(v), 6) for v in mean_act],
        "curve": [round(a, 4) for a in curve],  # defense-data accuracy after pruning 1, 2, ... channels
        "stopped_at": stop,
    }
    return DefenseResult(mask, info)


def _choice(provider_name: str) -> str:
    """The evaluator reports the provider that ran ("CUDAExecutionProvider"); a new one is asked for by choice."""
    return "cuda" if provider_name.startswith("CUDA") else "cpu"
