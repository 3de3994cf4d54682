"""Per-group signals: what each prunable group does on clean data and on trigger-stamped data.

All signals are per *group* (the unit that is pruned), computed with the torch mirror in a few passes:

- ``act_clean`` / ``act_trigger``: mean post-ReLU activation at the group's mask sites on clean images and
  on the same images stamped with the synthesized trigger; ``act_shift`` is their difference (the probe in
  design.md §3: backdoor neurons light up on the trigger).
- ``clc``: clean-loss change if the group is pruned, to first order (−∂L/∂keep): our reading of the paper's CLC.
- ``blc``: backdoor-loss change if the group is pruned, to first order, with the backdoor probe (the
  synthesized trigger, or the neuron perturbation) standing in for poisoned data (loss towards the suspected
  target): our reading of BLC. Positive = pruning breaks the backdoor.
- ``weight_norm``: L2 norm of the group's producer weights; ``lipschitz``: the largest per-neuron spectral
  norm of its kernels (CLP's channel Lipschitz bound, without BatchNorm scaling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..load.loader import LoadedModel
from ..mirror import TorchMirror
from ..neuron_map import NeuronMap

SIGNALS = ("act_clean", "act_trigger", "act_shift", "clc", "blc", "weight_norm", "lipschitz")


@dataclass
class GroupSignals:
    names: tuple[str, ...]
    values: np.ndarray  # [groups, len(names)]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]

    def for_group(self, group: int) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, self.values[group])}


def _site_means(nmap: NeuronMap, captured: dict[str, torch.Tensor], totals: np.ndarray, counts: np.ndarray):
    """Add each site's mean post-ReLU activation per element into per-group totals."""
    for site in nmap.mask_sites:
        value = F.relu(captured[site.tensor]).detach()
        groups = site.groups
        reduce = tuple(a for a in range(value.dim()) if a == 0 or groups.shape[a] == 1)
        mean = value.mean(dim=reduce, keepdim=True).numpy().reshape(-1)
        flat = groups.reshape(-1)
        valid = flat >= 0
        np.add.at(totals, flat[valid], mean[valid])
        np.add.at(counts, flat[valid], 1)


def _pass(mirror, nmap, x, labels, batch_size, multipliers=None, base_keep=None):
    """Mean activations per group and −∂loss/∂keep over the data, in batches (groups scaled per sample by
    ``multipliers`` when given: the neuron-perturbation probe; and by ``base_keep``: the model already pruned)."""
    totals = np.zeros(nmap.num_groups)
    counts = np.zeros(nmap.num_groups)
    grad = np.zeros(nmap.num_groups)
    sites = tuple(site.tensor for site in nmap.mask_sites)
    for start in range(0, len(x), batch_size):
        keep = torch.ones(nmap.num_groups, requires_grad=True)
        xb = torch.from_numpy(x[start:start + batch_size])
        scaled = keep if multipliers is None else keep * torch.from_numpy(
            np.ascontiguousarray(multipliers[start:start + batch_size], dtype=np.float32))
        if base_keep is not None:
            scaled = scaled * base_keep
        logits, captured = mirror(xb, scaled, capture=sites, logits=True)
        loss = F.cross_entropy(logits, torch.from_numpy(labels[start:start + batch_size]), reduction="sum")
        loss.backward()
        grad += -keep.grad.numpy()
        _site_means(nmap, captured, totals, counts)
    return totals / np.maximum(counts, 1), grad / max(len(x), 1)


def weight_signals(lm: LoadedModel, nmap: NeuronMap) -> tuple[np.ndarray, np.ndarray]:
    """Per group: L2 norm of its producer weights, and the largest spectral norm of one neuron's kernel."""
    norms = np.zeros(nmap.num_groups)
    lipschitz = np.zeros(nmap.num_groups)
    weights = {layer.weight for layer in nmap.layers}
    for site in nmap.param_sites:
        if not site.zero or site.initializer not in weights:
            continue
        w = np.moveaxis(lm.initializer_array(site.initializer).astype(np.float64), site.axis, 0)
        rows = w.reshape(w.shape[0], -1)
        valid = site.groups >= 0
        np.add.at(norms, site.groups[valid], (rows[valid] ** 2).sum(axis=1))
        if w.ndim > 2:  # conv kernels: [C_in, kh·kw] per output channel
            spectral = np.linalg.norm(w.reshape(w.shape[0], w.shape[1], -1), ord=2, axis=(1, 2))
        else:
            spectral = np.sqrt((rows ** 2).sum(axis=1))
        np.maximum.at(lipschitz, site.groups[valid], spectral[valid])
    return np.sqrt(norms), lipschitz


def compute_signals(lm: LoadedModel, nmap: NeuronMap, mirror: TorchMirror, clean_x: np.ndarray,
                    clean_y: np.ndarray, stamped_x: np.ndarray, target: int, *, stamped_multipliers=None,
                    pruned: np.ndarray | None = None, batch_size: int = 128) -> GroupSignals:
    """``pruned``: groups already pruned (a boolean mask). The signals are then those of the pruned model: later
    rounds must look for what still carries the backdoor, not at the groups earlier rounds took out. A pruned
    group's signals are all 0 (its weights are zero there)."""
    base_keep = None if pruned is None else torch.from_numpy((~pruned).astype(np.float32))
    act_clean, clc = _pass(mirror, nmap, clean_x, clean_y, batch_size, base_keep=base_keep)
    act_trigger, blc = _pass(mirror, nmap, stamped_x, np.full(len(stamped_x), target, np.int64), batch_size,
                             stamped_multipliers, base_keep=base_keep)
    weight_norm, lipschitz = weight_signals(lm, nmap)
    if pruned is not None:
        weight_norm, lipschitz = np.where(pruned, 0.0, weight_norm), np.where(pruned, 0.0, lipschitz)
    values = np.stack([act_clean, act_trigger, act_trigger - act_clean, clc, blc, weight_norm, lipschitz], axis=1)
    return GroupSignals(names=SIGNALS, values=values.astype(np.float32))
