"""Reverse-engineer a candidate trigger per class from clean data alone (Neural-Cleanse style).

For every class t, a mask m (H×W, in [0, 1]) and a pattern p (the image's shape, within the data's range)
are optimised through the torch mirror so that (1 − m)·x + m·p is classified as t for clean images x of
other classes, with an L1 penalty on m. A backdoor target needs a far smaller mask than the other classes:
its mask norm is an outlier (anomaly index = robust z-score below the median). The stamped images then
serve as the defender's stand-in for poisoned data: the backdoor signal in the reward and in the features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..mirror import TorchMirror


@dataclass
class SynthesisConfig:
    steps: int = 100  # Adam steps per class
    batch_size: int = 32
    lr: float = 0.1
    mask_weight: float = 0.03  # L1 weight on the mask, per pixel of mask sum, relative to a 32×32 image
    seed: int = 0


@dataclass
class TriggerCandidate:
    target: int
    mask: np.ndarray  # H×W in [0, 1]
    pattern: np.ndarray  # the model input's per-image shape, in model-input space
    mask_l1: float
    success: float  # share of the optimisation's last batch sent to the target

    def apply(self, x: np.ndarray, spatial_axes: tuple[int, int]) -> np.ndarray:
        shape = [1] * x.ndim
        shape[spatial_axes[0]], shape[spatial_axes[1]] = self.mask.shape
        m = self.mask.reshape(shape[1:])
        return ((1 - m) * x + m * self.pattern).astype(x.dtype)

    def probe(self, x: np.ndarray, spatial_axes: tuple[int, int]) -> tuple[np.ndarray, None]:
        """The backdoor probe built from clean images x: stamped images, no group multipliers."""
        return self.apply(x, spatial_axes), None


@dataclass
class SynthesisResult:
    candidates: list[TriggerCandidate]
    anomaly_index: float  # of the smallest mask; > 2 is the usual backdoor threshold
    suspect: int  # class with the smallest mask
    seconds: float = 0.0
    norms: list[float] = field(default_factory=list)

    @property
    def best(self) -> TriggerCandidate:
        return self.candidates[self.suspect]

    @property
    def size_ratio(self) -> float:
        """The suspect's mask L1 over the median of the other classes': a backdoor's trigger is much smaller."""
        others = [n for c, n in enumerate(self.norms) if c != self.suspect]
        return float(self.norms[self.suspect] / max(np.median(others), 1e-12)) if others else 1.0


def spatial_axes(layout: str) -> tuple[int, int]:
    return (2, 3) if layout == "NCHW" else (1, 2)


def channel_range(x: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Each channel's minimum and maximum over the data, shaped to broadcast against one image."""
    channel_axis = 1 if layout == "NCHW" else x.ndim - 1
    others_axes = tuple(a for a in range(x.ndim) if a != channel_axis)
    shape = [1] * (x.ndim - 1)
    shape[channel_axis - 1] = x.shape[channel_axis]
    return x.min(axis=others_axes).reshape(shape), x.max(axis=others_axes).reshape(shape)


def anomaly_indices(norms: np.ndarray) -> np.ndarray:
    """Robust z-score of each norm below the median (positive = smaller than the others)."""
    median = np.median(norms)
    mad = 1.4826 * np.median(np.abs(norms - median))
    return (median - norms) / max(mad, 1e-12)


def bounded_pattern(param: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The pattern a free parameter stands for, squashed into each channel's range [low, high]."""
    return low + (torch.tanh(param) + 1) / 2 * (high - low)


def random_batch(indices: np.ndarray, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` of ``indices``, drawn with replacement from the seeded generator (one optimisation step's batch)."""
    return torch.from_numpy(indices[torch.randint(len(indices), (size,), generator=generator).numpy()])


def synthesize(mirror: TorchMirror, x: np.ndarray, y: np.ndarray, num_classes: int, layout: str,
               config: SynthesisConfig = SynthesisConfig(), classes: list[int] | None = None,
               keep: torch.Tensor | None = None, progress=None) -> SynthesisResult:
    """One candidate trigger per class (or per class in ``classes``), from clean model inputs x."""
    import time

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    xt = torch.from_numpy(x)
    h_axis, w_axis = spatial_axes(layout)
    height, width = x.shape[h_axis], x.shape[w_axis]
    # The pattern stays within each channel's range in the data (model-input space, after normalisation).
    low, high = map(torch.from_numpy, channel_range(x, layout))
    weight = config.mask_weight * (32 * 32) / (height * width)
    mask_shape = [1] * (x.ndim - 1)
    mask_shape[h_axis - 1], mask_shape[w_axis - 1] = height, width
    candidates = []
    mirror.eval()
    for target in (classes if classes is not None else range(num_classes)):
        others = np.flatnonzero(y != target)
        mask_param = torch.full(mask_shape, -2.0).requires_grad_(True)  # sigmoid(-2) ≈ 0.12
        pattern_param = (torch.rand(x.shape[1:], generator=generator) * 2 - 1).requires_grad_(True)
        optimizer = torch.optim.Adam([mask_param, pattern_param], lr=config.lr)
        labels = torch.full((config.batch_size,), target, dtype=torch.long)
        success = 0.0
        for _ in range(config.steps):
            pick = random_batch(others, config.batch_size, generator)
            mask = torch.sigmoid(mask_param)
            pattern = bounded_pattern(pattern_param, low, high)
            stamped = (1 - mask) * xt[pick] + mask * pattern
            logits = mirror(stamped, keep, logits=True)
            loss = F.cross_entropy(logits, labels) + weight * mask.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            success = float((logits.argmax(1) == target).float().mean())
        with torch.no_grad():
            mask = torch.sigmoid(mask_param).reshape(height, width).numpy()
            pattern = bounded_pattern(pattern_param, low, high).numpy()
        candidates.append(TriggerCandidate(target=target, mask=mask, pattern=pattern.astype(x.dtype),
                                           mask_l1=float(mask.sum()), success=success))
        if progress is not None:
            progress(target)
    norms = np.array([c.mask_l1 for c in candidates])
    index = anomaly_indices(norms)
    suspect = int(np.argmax(index))
    return SynthesisResult(candidates=candidates, anomaly_index=float(index[suspect]), suspect=suspect,
                           seconds=time.perf_counter() - start, norms=norms.tolist())


def amplify(candidate: TriggerCandidate, x: np.ndarray, layout: str, *, threshold: float = 0.3,
            grow: int = 2) -> TriggerCandidate:
    """A stronger version of a synthesized trigger: its mask made solid and grown by ``grow`` pixels, its
    pattern pushed to the data's extremes.

    Synthesis finds the *smallest* trigger that still works; a real trigger is usually larger and more
    saturated, and reaches the target through more neurons. Pruning against the minimal trigger only can
    leave the real one working (sashank's model: synthesized ASR 100 -> 6%, real ASR 97 -> 60%).
    """
    solid = (candidate.mask >= threshold).astype(np.float32)
    if grow > 0 and solid.any():
        grown = torch.nn.functional.max_pool2d(torch.from_numpy(solid)[None, None], 2 * grow + 1, 1, grow)
        solid = grown[0, 0].numpy()
    low, high = channel_range(x, layout)
    middle = (low + high) / 2
    pattern = np.where(candidate.pattern >= middle, high, low).astype(candidate.pattern.dtype)
    return TriggerCandidate(target=candidate.target, mask=solid, pattern=pattern, mask_l1=float(solid.sum()),
                            success=candidate.success)


def synthesize_blend(mirror: TorchMirror, x: np.ndarray, y: np.ndarray, target: int, layout: str, *,
                     alpha: float, config: SynthesisConfig = SynthesisConfig(),
                     keep: torch.Tensor | None = None) -> TriggerCandidate:
    """A whole-image pattern blended into every pixel at a fixed, small ``alpha``, optimised to send clean images
    of other classes to ``target``: the probe for triggers spread over the image (Blended), which the
    small-mask synthesis above only approximates by a patch.

    It is the mask-and-pattern trigger with the mask fixed at ``alpha`` everywhere, so it stamps images like any
    other candidate. Per class, on the Blended ResNet-18 and its clean twin: `python -m experiments.blend_probe_scan`
    (experiments/README.md). ``success`` is measured on up to 256 images of other classes after the optimisation.
    """
    generator = torch.Generator().manual_seed(config.seed)
    xt = torch.from_numpy(x)
    h_axis, w_axis = spatial_axes(layout)
    height, width = x.shape[h_axis], x.shape[w_axis]
    low, high = map(torch.from_numpy, channel_range(x, layout))
    others = np.flatnonzero(y != target)
    pattern_param = (torch.rand(x.shape[1:], generator=generator) * 2 - 1).requires_grad_(True)
    optimizer = torch.optim.Adam([pattern_param], lr=config.lr)
    labels = torch.full((config.batch_size,), target, dtype=torch.long)
    mirror.eval()
    for _ in range(config.steps):
        pick = random_batch(others, config.batch_size, generator)
        pattern = bounded_pattern(pattern_param, low, high)
        logits = mirror((1 - alpha) * xt[pick] + alpha * pattern, keep, logits=True)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pattern = bounded_pattern(pattern_param, low, high)
        # Success on up to 256 images of other classes, not one batch: whether it is used depends on it.
        check = xt[torch.from_numpy(others[:256])]
        success = float((mirror((1 - alpha) * check + alpha * pattern, keep, logits=True).argmax(1) == target)
                        .float().mean())
        pattern = pattern.numpy()
    mask = np.full((height, width), alpha, dtype=np.float32)
    return TriggerCandidate(target=target, mask=mask, pattern=pattern.astype(x.dtype), mask_l1=float(mask.sum()),
                            success=success)
