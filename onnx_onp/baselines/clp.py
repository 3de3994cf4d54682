"""CLP, Channel Lipschitzness-based Pruning (Zheng et al., "Data-free Backdoor Removal based on Channel
Lipschitzness", ECCV 2022): data-free.

For output channel k of a convolution, the upper bound of its channel Lipschitz constant is

    UCLC_k = sigma_max(W_k) * |gamma_k / sqrt(var_k + eps)|

with W_k the channel's kernel reshaped to [C_in / group, kh * kw], sigma_max its largest singular value, and
the second factor the scale of the BatchNormalization that directly consumes the conv output (1 when there is
none, e.g. a model exported with BN folded into the conv, whose kernel then already carries the scale). In each
conv layer the channels with UCLC_k > mean + u * std of the layer are pruned (u = 3 in the paper).

As in the authors' code (rkteddy/channel-Lipschitzness-based-pruning) the std is the unbiased one (ddof=1).
Two differences, both forced by working on an ONNX graph: every Conv layer of the neuron map is scored, with
or without a BN (the reference code scores only conv+BN pairs, which every model it was written for has);
and a flagged channel prunes its whole group, while flagged channels whose group cannot be pruned are skipped
and counted. In a ResNet a flagged conv2 channel therefore removes that channel of the whole residual stream
(every conv adding into it), where the reference code zeroes only that conv's BN output and keeps the
shortcut's contribution.

With the unbiased std, one value among n is at most (n - 1) / sqrt(n) std above the mean, so with u = 3 CLP
can never flag a channel in a layer of 10 channels or fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..instrument import MaskedEvaluator
from ..load.loader import LoadedModel
from ..metrics import Prepared
from ..neuron_map import Layer, NeuronMap
from .base import DefenseResult, unit_groups


@dataclass
class ClpConfig:
    u: float = 3.0  # threshold: mean + u * std of the layer's UCLC values


def bn_after(lm: LoadedModel, tensor: str) -> onnx.NodeProto | None:
    """The BatchNormalization node that is the only consumer of ``tensor`` (and reads it as its data input)."""
    consumers = [n for n in lm.model.graph.node if tensor in n.input]
    if len(consumers) == 1 and consumers[0].op_type == "BatchNormalization" and consumers[0].input[0] == tensor:
        return consumers[0]
    return None


def bn_scale(lm: LoadedModel, bn: onnx.NodeProto) -> np.ndarray | None:
    """|gamma / sqrt(var + eps)| per channel, or None when the BN's parameters are not constants."""
    names = list(bn.input)
    if len(names) < 5 or not all(n in lm.initializers for n in (names[1], names[4])):
        return None
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    gamma = lm.initializer_array(names[1]).astype(np.float64)
    var = lm.initializer_array(names[4]).astype(np.float64)
    return np.abs(gamma / np.sqrt(var + eps))


def channel_lipschitz(lm: LoadedModel, layer: Layer) -> tuple[np.ndarray, str | None]:
    """UCLC of every output channel of a Conv layer, and the name of the BN folded into it (if any)."""
    w = lm.initializer_array(layer.weight).astype(np.float64)  # [C_out, C_in / group, *kernel]
    kernels = w.reshape(w.shape[0], w.shape[1], -1)
    norms = np.linalg.norm(kernels, ord=2, axis=(1, 2))  # largest singular value of each [C_in/g, kh*kw]
    bn = bn_after(lm, layer.output)
    scale = bn_scale(lm, bn) if bn is not None else None
    if scale is not None and scale.shape == norms.shape:
        return norms * scale, bn.name
    return norms, None


def clp(lm: LoadedModel, nmap: NeuronMap, data: Prepared | None = None, *,
        evaluator: MaskedEvaluator | None = None, config: ClpConfig | None = None) -> DefenseResult:
    """Prune, per Conv layer, the channels whose UCLC exceeds mean + u * std. Data-free: ``data`` is unused."""
    config = config or ClpConfig()
    prunable = nmap.prunable
    mask = nmap.empty_mask()
    per_layer = {}
    skipped = 0
    for layer in nmap.layers:
        if layer.op_type != "Conv":
            continue
        uclc, bn = channel_lipschitz(lm, layer)
        if uclc.size < 2:
            per_layer[layer.name] = {"channels": int(uclc.size), "flagged": 0, "pruned": 0, "skipped": 0, "bn": bn}
            continue
        threshold = float(uclc.mean() + config.u * uclc.std(ddof=1))
        flagged = np.flatnonzero(uclc > threshold)
        groups = unit_groups(nmap, layer.index)[flagged]
        ok = prunable[groups]
        mask[groups[ok]] = True
        skipped += int((~ok).sum())
        per_layer[layer.name] = {
            "channels": int(uclc.size), "flagged": int(flagged.size), "pruned": int(ok.sum()),
            "skipped": int((~ok).sum()), "bn": bn, "threshold": round(threshold, 6),
            "uclc_max": round(float(uclc.max()), 6), "units": flagged[ok].tolist(),
        }
    info = {"u": config.u, "flagged_channels": int(sum(v["flagged"] for v in per_layer.values())),
            "skipped_unprunable": skipped, "per_layer": per_layer}
    return DefenseResult(mask, info)
