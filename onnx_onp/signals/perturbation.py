"""The second backdoor detector: targeted neuron perturbation (after ANP's finding, design.md §3).

Trigger synthesis looks for a small *input* patch; warping (WaNet) and whole-image (SIG-like) triggers are not
patches, so it misses them. A backdoored network also has a short cut in *neuron* space: multiplying every
prunable group by (1 + δ), with |δ| ≤ ε, sends clean images of every class to the backdoor target far more
easily than to any other class. For each class t we find such a δ by projected sign-gradient steps through
the torch mirror (towards t, on clean images of the other classes) and record the share of them that end up
in t. The target's share is an outlier above the others' (same robust z-score as synthesis). The δ found for
the suspect then stands in for poisoned data: clean images run with the group multipliers (1 + δ) are the
backdoor probe of the reward, and pruning the groups the short cut runs through removes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..mirror import TorchMirror
from .synthesis import anomaly_indices


@dataclass
class PerturbationConfig:
    epsilon: float = 0.05  # bound on each group's relative change
    steps: int = 8  # projected sign-gradient steps per class
    images: int = 200  # clean images of the other classes used per class
    seed: int = 0


@dataclass
class NeuronPerturbation:
    target: int
    delta: np.ndarray  # per group, in [−ε, ε]: the group is multiplied by (1 + δ)
    share: float  # share of the other classes' clean images the perturbed model sends to the target

    def probe(self, x: np.ndarray, spatial_axes=None) -> tuple[np.ndarray, np.ndarray]:
        """The backdoor probe built from clean images x: the images unchanged, every group scaled by (1 + δ)."""
        return x, np.repeat((1 + self.delta)[None].astype(np.float32), len(x), axis=0)


@dataclass
class PerturbationScan:
    candidates: list[NeuronPerturbation]
    anomaly_index: float
    suspect: int
    seconds: float = 0.0
    shares: list[float] = field(default_factory=list)

    @property
    def best(self) -> NeuronPerturbation:
        return self.candidates[self.suspect]


def perturb_towards(mirror: TorchMirror, x: torch.Tensor, target: int, num_groups: int,
                    config: PerturbationConfig, keep: torch.Tensor | None = None) -> NeuronPerturbation:
    """The bounded group perturbation that sends most of x to ``target`` (x: images of other classes)."""
    eps = config.epsilon
    generator = torch.Generator().manual_seed(config.seed + 7919 * target)
    delta = ((torch.rand(num_groups, generator=generator) * 2 - 1) * eps).requires_grad_(True)
    labels = torch.full((len(x),), target, dtype=torch.long)
    base = torch.ones(num_groups) if keep is None else keep
    for _ in range(config.steps):
        loss = F.cross_entropy(mirror(x, base * (1 + delta), logits=True), labels)
        grad, = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= eps / 4 * grad.sign()
            delta.clamp_(-eps, eps)
    with torch.no_grad():
        share = float((mirror(x, base * (1 + delta), logits=True).argmax(1) == target).float().mean())
    return NeuronPerturbation(target=target, delta=delta.detach().numpy().astype(np.float32), share=share)


def scan(mirror: TorchMirror, num_groups: int, x: np.ndarray, y: np.ndarray, num_classes: int,
         config: PerturbationConfig = PerturbationConfig(), classes: list[int] | None = None,
         keep: torch.Tensor | None = None, progress=None) -> PerturbationScan:
    """One targeted perturbation per class (or per class in ``classes``), and the outlier among them."""
    start = time.perf_counter()
    mirror.eval()
    rng = np.random.default_rng(config.seed)
    xt = torch.from_numpy(x)
    candidates = []
    for target in (classes if classes is not None else range(num_classes)):
        others = np.flatnonzero(y != target)
        pick = np.sort(rng.permutation(others)[:config.images])
        candidates.append(perturb_towards(mirror, xt[torch.from_numpy(pick)], target, num_groups, config, keep))
        if progress is not None:
            progress(target)
    shares = np.array([c.share for c in candidates])
    # Outlier in how much of the data is *not* moved: the target is moved almost entirely.
    index = anomaly_indices(1.0 - shares)
    suspect = int(np.argmax(index))
    return PerturbationScan(candidates=candidates, anomaly_index=float(index[suspect]), suspect=suspect,
                            seconds=time.perf_counter() - start, shares=shares.tolist())
