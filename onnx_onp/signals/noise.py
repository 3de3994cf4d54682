"""The noise probe: clean images with random noise blended in, each image its own pattern.

A backdoor planted with a random-noise blend (the Blended attack's usual trigger) is not tied to its one
pattern: the model learns "noise at this strength means the target". Measured on the Blended ResNet-18
fixture (alpha 0.2): five fresh uniform-noise patterns at alpha 0.2 send 100% of other classes' defense
images to the target; on its clean twin and on the BadNets model 0-2% (experiments/noise_probe_scan.py; docs/method.md,
the probes). Nothing is optimised, so it cannot overfit the pruned model the way a synthesized trigger re-found
after every round does: its ASR falls only when the noise shortcut itself is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .synthesis import channel_range


@dataclass
class NoiseBlendProbe:
    target: int
    alpha: float
    low: np.ndarray  # each channel's range in model-input space, shaped to broadcast against one image
    high: np.ndarray
    seed: int
    success: float = 0.0  # share of other classes' defense images sent to the target by the unpruned model

    def apply(self, x: np.ndarray, spatial_axes: tuple[int, int] | None = None) -> np.ndarray:
        """Each image blended with its own uniform noise (seeded: the same images give the same probe)."""
        rng = np.random.default_rng(self.seed)
        noise = self.low + rng.random(x.shape, dtype=np.float32) * (self.high - self.low)
        return ((1 - self.alpha) * x + self.alpha * noise).astype(x.dtype)

    def probe(self, x: np.ndarray, spatial_axes: tuple[int, int] | None = None) -> tuple[np.ndarray, None]:
        return self.apply(x), None


def noise_blend_probe(evaluator, x: np.ndarray, y: np.ndarray, target: int, layout: str, *, alpha: float,
                      seed: int, max_images: int = 256) -> NoiseBlendProbe:
    """The probe for ``target`` and its success on up to ``max_images`` clean images of other classes (one
    onnxruntime pass: no gradients)."""
    low, high = channel_range(x, layout)
    probe = NoiseBlendProbe(target=target, alpha=alpha, low=low.astype(np.float32), high=high.astype(np.float32),
                            seed=seed)
    others = x[y != target][:max_images]
    if len(others):
        probe.success = float((evaluator.logits(probe.apply(others)).argmax(axis=1) == target).mean())
    return probe
