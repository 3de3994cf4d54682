"""Backdoor triggers, stamped on raw uint8 N×H×W×C images exactly as the attacker did.

Attack success rate (ASR) is only comparable to the published number if the trigger is reproduced
pixel for pixel, so every trigger is deterministic (seeded) and works on the uint8 image before
preprocessing. ``apply`` always returns a new array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from onnx_onp.data._config import check_keys, to_float, to_int
from onnx_onp.data.dataset import Dataset
from onnx_onp.errors import DataError


class Trigger:
    """Base class: subclasses are keyword-only dataclasses whose JSON keys are their fields."""

    kind: ClassVar[str]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Stamp the trigger on every image of a uint8 N×H×W×C batch (the input is not modified)."""
        if x.ndim != 4 or x.dtype != np.uint8:
            raise DataError(
                f"{self.kind} trigger applies to raw uint8 N×H×W×C images, got {x.dtype} of shape {tuple(x.shape)}"
            )
        return self._stamp(x)

    def _stamp(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``kind`` first; unset optional keys are left out."""
        d: dict[str, Any] = {"kind": self.kind}
        for f in _json_fields(type(self)):
            value = getattr(self, f.name)
            if value is not None:
                d[f.name] = list(value) if isinstance(value, tuple) else value
        return d


def _json_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("json", True)]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass(kw_only=True)
class PatchTrigger(Trigger):
    """BadNets-style solid square: ``size``×``size`` (or ``height``×``width``) at (``row``, ``col``).

    Negative ``row``/``col`` count from the bottom/right edge (``row=-3`` starts 3 rows from the bottom).
    ``value`` is one number for all channels or one per channel.
    """

    kind: ClassVar[str] = "patch"
    size: int | None = None
    value: int | tuple[int, ...]
    row: int
    col: int
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        for name in ("size", "width", "height"):
            if getattr(self, name) is not None:
                setattr(self, name, to_int(getattr(self, name), f"patch trigger '{name}'", minimum=1))
        if self.size is None and (self.width is None or self.height is None):
            raise DataError("patch trigger needs 'size' (or both 'width' and 'height')")
        self.row = to_int(self.row, "patch trigger 'row'")
        self.col = to_int(self.col, "patch trigger 'col'")
        values = self.value if isinstance(self.value, (list, tuple)) else [self.value]
        if not values:
            raise DataError("patch trigger 'value' must not be empty")
        ints = tuple(to_int(v, "patch trigger 'value'", minimum=0) for v in values)
        if max(ints) > 255:
            raise DataError(f"patch trigger 'value' must be within 0..255, got {max(ints)}")
        self.value = ints if isinstance(self.value, (list, tuple)) else ints[0]

    def _stamp(self, x: np.ndarray) -> np.ndarray:
        _, rows, cols, channels = x.shape
        height, width = self.height or self.size, self.width or self.size
        top = self.row if self.row >= 0 else rows + self.row
        left = self.col if self.col >= 0 else cols + self.col
        if top < 0 or left < 0 or top + height > rows or left + width > cols:
            raise DataError(
                f"patch trigger {height}×{width} at row {self.row}, col {self.col} does not fit {rows}×{cols} images"
            )
        value = np.atleast_1d(np.asarray(self.value, dtype=np.uint8))
        if len(value) not in (1, channels):
            raise DataError(f"patch trigger 'value' has {len(value)} values but the images have {channels} channels")
        out = x.copy()
        out[:, top : top + height, left : left + width, :] = value
        return out


@dataclass(kw_only=True)
class BlendTrigger(Trigger):
    """Blended-attack trigger: ``(1 - alpha) * x + alpha * pattern``.

    The pattern is uniform random uint8 noise of the image shape from ``default_rng(pattern_seed)``,
    or a ``.npy`` array (H×W×C or H×W) named by ``pattern_file``, relative to ``base_dir`` (the spec's folder).
    """

    kind: ClassVar[str] = "blend"
    alpha: float
    pattern_seed: int | None = None
    pattern_file: str | None = None
    base_dir: Path | None = field(default=None, repr=False, compare=False, metadata={"json": False})
    pattern: np.ndarray | None = field(default=None, init=False, repr=False, compare=False, metadata={"json": False})

    def __post_init__(self) -> None:
        self.alpha = to_float(self.alpha, "blend trigger 'alpha'", minimum=0.0, maximum=1.0)
        if (self.pattern_seed is None) == (self.pattern_file is None):
            raise DataError("blend trigger needs exactly one of 'pattern_seed' and 'pattern_file'")
        if self.pattern_seed is not None:
            self.pattern_seed = to_int(self.pattern_seed, "blend trigger 'pattern_seed'", minimum=0)
        else:
            self.pattern = self._load_pattern()

    def _load_pattern(self) -> np.ndarray:
        if not isinstance(self.pattern_file, str):
            raise DataError(f"blend trigger 'pattern_file' must be a path, got {self.pattern_file!r}")
        path = Path(self.base_dir or ".") / self.pattern_file
        try:
            pattern = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{path}: cannot read blend pattern ({exc})") from exc
        if not isinstance(pattern, np.ndarray) or pattern.dtype.kind not in "uif" or pattern.ndim not in (2, 3):
            raise DataError(f"{path}: blend pattern must be a numeric H×W×C or H×W .npy array")
        return pattern if pattern.ndim == 3 else pattern[..., None]

    def _stamp(self, x: np.ndarray) -> np.ndarray:
        shape = x.shape[1:]
        if self.pattern is None:
            pattern = np.random.default_rng(self.pattern_seed).integers(0, 256, size=shape, dtype=np.uint8)
        else:
            pattern = self.pattern
            if pattern.shape[:2] != shape[:2] or pattern.shape[2] not in (1, shape[2]):
                raise DataError(
                    f"{self.pattern_file}: blend pattern is {'×'.join(map(str, pattern.shape))} "
                    f"but the images are {'×'.join(map(str, shape))}"
                )
        return _to_uint8((1.0 - self.alpha) * x + self.alpha * pattern.astype(np.float64))


@dataclass(kw_only=True)
class SigTrigger(Trigger):
    """SIG (sinusoidal signal) trigger: adds ``delta * sin(2π j f / W)`` to column ``j`` of every row and channel."""

    kind: ClassVar[str] = "sig"
    delta: float
    f: float

    def __post_init__(self) -> None:
        self.delta = to_float(self.delta, "sig trigger 'delta'")
        self.f = to_float(self.f, "sig trigger 'f'")

    def _stamp(self, x: np.ndarray) -> np.ndarray:
        cols = x.shape[2]
        signal = self.delta * np.sin(2 * np.pi * np.arange(cols) * self.f / cols)
        return _to_uint8(x + signal[None, None, :, None])


@dataclass(kw_only=True)
class WaNetTrigger(Trigger):
    """WaNet warping trigger (Nguyen & Tran, 2021), reproduced in numpy.

    Noise k×k×2 uniform in [-1, 1] from ``default_rng(grid_seed)``, divided by its mean absolute value,
    upsampled bilinearly (align_corners) to H×W (the paper uses bicubic), added as ``s * noise / H`` to the
    identity grid, clamped to [-1, 1]; the image is then resampled bilinearly like
    ``grid_sample(align_corners=True)``. For non-square images both offsets are divided by H, as in the paper.
    """

    kind: ClassVar[str] = "wanet"
    k: int
    s: float
    grid_seed: int

    def __post_init__(self) -> None:
        self.k = to_int(self.k, "wanet trigger 'k'", minimum=1)
        self.s = to_float(self.s, "wanet trigger 's'")
        self.grid_seed = to_int(self.grid_seed, "wanet trigger 'grid_seed'", minimum=0)

    def grid(self, rows: int, cols: int) -> np.ndarray:
        """Sampling grid (rows×cols×2, [..., 0] = x, [..., 1] = y, in [-1, 1]) as torch's grid_sample takes it."""
        noise = np.random.default_rng(self.grid_seed).uniform(-1.0, 1.0, size=(self.k, self.k, 2))
        noise /= np.abs(noise).mean()
        at_y, at_x = np.meshgrid(np.linspace(0, self.k - 1, rows), np.linspace(0, self.k - 1, cols), indexing="ij")
        noise = _bilinear(noise, at_y, at_x)
        identity = np.stack(np.meshgrid(np.linspace(-1, 1, cols), np.linspace(-1, 1, rows), indexing="xy"), axis=-1)
        return np.clip(identity + self.s * noise / rows, -1.0, 1.0)

    def _stamp(self, x: np.ndarray) -> np.ndarray:
        rows, cols = x.shape[1:3]
        grid = self.grid(rows, cols)
        at_x = (grid[..., 0] + 1) / 2 * (cols - 1)
        at_y = (grid[..., 1] + 1) / 2 * (rows - 1)
        return _to_uint8(_bilinear(x.astype(np.float32), at_y, at_x))


@dataclass(kw_only=True)
class RandomPatchTrigger(Trigger):
    """A ``size``×``size`` solid patch at a random position per image (random-position BadNets).

    Positions come from ``default_rng(position_seed)``, one draw per image in batch order, so stamping the
    same batch twice gives the same pixels. ``value`` is one number or one per channel.
    """

    kind: ClassVar[str] = "random_patch"
    size: int
    value: int | tuple[int, ...]
    position_seed: int

    def __post_init__(self) -> None:
        self.size = to_int(self.size, "random_patch trigger 'size'", minimum=1)
        self.position_seed = to_int(self.position_seed, "random_patch trigger 'position_seed'", minimum=0)
        self.value = _channel_values(self.value, "random_patch")

    def _stamp(self, x: np.ndarray) -> np.ndarray:
        n, rows, cols, channels = x.shape
        if self.size > min(rows, cols):
            raise DataError(f"random_patch trigger of size {self.size} does not fit {rows}×{cols} images")
        value = _check_channels(self.value, channels, "random_patch")
        rng = np.random.default_rng(self.position_seed)
        tops = rng.integers(0, rows - self.size + 1, size=n)
        lefts = rng.integers(0, cols - self.size + 1, size=n)
        out = x.copy()
        for i, (top, left) in enumerate(zip(tops, lefts)):
            out[i, top : top + self.size, left : left + self.size, :] = value
        return out


@dataclass(kw_only=True)
class PatternPatchTrigger(Trigger):
    """A multi-coloured patch (an H×W×C uint8 ``.npy`` array, ``pattern_file``) pasted at (``row``, ``col``).

    Used for optimised (TrojanNN-style) patches; negative ``row``/``col`` count from the bottom/right edge.
    """

    kind: ClassVar[str] = "pattern_patch"
    pattern_file: str
    row: int
    col: int
    base_dir: Path | None = field(default=None, repr=False, compare=False, metadata={"json": False})
    pattern: np.ndarray | None = field(default=None, init=False, repr=False, compare=False, metadata={"json": False})

    def __post_init__(self) -> None:
        self.row = to_int(self.row, "pattern_patch trigger 'row'")
        self.col = to_int(self.col, "pattern_patch trigger 'col'")
        self.pattern = _load_npy(self.pattern_file, self.base_dir, "pattern_patch")

    def _stamp(self, x: np.ndarray) -> np.ndarray:
        _, rows, cols, channels = x.shape
        height, width, depth = self.pattern.shape
        top = self.row if self.row >= 0 else rows + self.row
        left = self.col if self.col >= 0 else cols + self.col
        if top < 0 or left < 0 or top + height > rows or left + width > cols or depth not in (1, channels):
            raise DataError(
                f"pattern_patch {'×'.join(map(str, self.pattern.shape))} at row {self.row}, col {self.col} "
                f"does not fit {rows}×{cols}×{channels} images"
            )
        out = x.copy()
        out[:, top : top + height, left : left + width, :] = _to_uint8(self.pattern)
        return out


@dataclass(kw_only=True)
class LowFreqTrigger(Trigger):
    """A smooth additive pattern: k×k×C uniform [-1, 1] noise from ``default_rng(seed)``, upsampled bilinearly
    (align_corners) to the image size, scaled to ``delta`` grey levels at its largest, added and clipped."""

    kind: ClassVar[str] = "lowfreq"
    k: int
    delta: float
    seed: int

    def __post_init__(self) -> None:
        self.k = to_int(self.k, "lowfreq trigger 'k'", minimum=2)
        self.delta = to_float(self.delta, "lowfreq trigger 'delta'")
        self.seed = to_int(self.seed, "lowfreq trigger 'seed'", minimum=0)

    def pattern(self, rows: int, cols: int, channels: int) -> np.ndarray:
        noise = np.random.default_rng(self.seed).uniform(-1.0, 1.0, size=(self.k, self.k, channels))
        at_y, at_x = np.meshgrid(np.linspace(0, self.k - 1, rows), np.linspace(0, self.k - 1, cols), indexing="ij")
        smooth = _bilinear(noise, at_y, at_x)
        return self.delta * smooth / np.abs(smooth).max()

    def _stamp(self, x: np.ndarray) -> np.ndarray:
        return _to_uint8(x + self.pattern(*x.shape[1:])[None])


@dataclass(kw_only=True)
class DynamicTrigger(Trigger):
    """Simplified input-aware dynamic trigger (after IAD, Nguyen & Tran 2020): a FIXED random generator, not a
    trained one, maps each image to its own pattern and mask.

    Generator: two 3×3 convolutions with weights from ``default_rng(seed)`` (C -> 8 channels, tanh; 8 -> C+1).
    The first C outputs (sigmoid, ×255) are the pattern; the last selects the ``density`` share of pixels with
    the largest response as the mask, where the pattern replaces the image. IAD's trained generator and its
    cross-trigger (diversity) loss are not reproduced: the trigger differs per image but is not optimised.
    """

    kind: ClassVar[str] = "dynamic"
    seed: int
    density: float

    def __post_init__(self) -> None:
        self.seed = to_int(self.seed, "dynamic trigger 'seed'", minimum=0)
        self.density = to_float(self.density, "dynamic trigger 'density'", minimum=0.0, maximum=1.0)

    def _stamp(self, x: np.ndarray) -> np.ndarray:
        n, rows, cols, channels = x.shape
        rng = np.random.default_rng(self.seed)
        w1 = rng.normal(0.0, 1.0 / np.sqrt(9 * channels), size=(3, 3, channels, 8))
        w2 = rng.normal(0.0, 1.0 / np.sqrt(9 * 8), size=(3, 3, 8, channels + 1))
        out = np.empty_like(x)
        for s in range(0, n, 256):  # bounded memory
            xb = x[s : s + 256].astype(np.float32) / 255.0
            hidden = np.tanh(_conv3x3(xb * 2.0 - 1.0, w1) * 3.0)
            g = _conv3x3(hidden, w2) * 3.0
            pattern = 255.0 / (1.0 + np.exp(-g[..., :channels]))
            score = g[..., channels].reshape(len(xb), -1)
            keep = max(1, round(self.density * rows * cols))
            cut = np.partition(score, -keep, axis=1)[:, -keep][:, None]
            mask = (score >= cut).reshape(len(xb), rows, cols, 1)
            out[s : s + 256] = np.where(mask, _to_uint8(pattern), x[s : s + 256])
        return out


def _conv3x3(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """'Same' 3×3 convolution of N×H×W×C by 3×3×C×D (zero padding) -> N×H×W×D."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))  # N×H×W×C×3×3
    return np.einsum("nhwcij,ijcd->nhwd", windows, w.astype(np.float32), optimize=True)


def _channel_values(value: Any, kind: str) -> int | tuple[int, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise DataError(f"{kind} trigger 'value' must not be empty")
    ints = tuple(to_int(v, f"{kind} trigger 'value'", minimum=0) for v in values)
    if max(ints) > 255:
        raise DataError(f"{kind} trigger 'value' must be within 0..255, got {max(ints)}")
    return ints if isinstance(value, (list, tuple)) else ints[0]


def _check_channels(value: int | tuple[int, ...], channels: int, kind: str) -> np.ndarray:
    out = np.atleast_1d(np.asarray(value, dtype=np.uint8))
    if len(out) not in (1, channels):
        raise DataError(f"{kind} trigger 'value' has {len(out)} values but the images have {channels} channels")
    return out


def _load_npy(name: Any, base_dir: Path | None, kind: str) -> np.ndarray:
    """A numeric H×W×C (or H×W) array from a ``.npy`` file relative to ``base_dir``."""
    if not isinstance(name, str):
        raise DataError(f"{kind} trigger 'pattern_file' must be a path, got {name!r}")
    path = Path(base_dir or ".") / name
    try:
        pattern = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read {kind} pattern ({exc})") from exc
    if not isinstance(pattern, np.ndarray) or pattern.dtype.kind not in "uif" or pattern.ndim not in (2, 3):
        raise DataError(f"{path}: {kind} pattern must be a numeric H×W×C or H×W .npy array")
    return pattern if pattern.ndim == 3 else pattern[..., None]


def _bilinear(image: np.ndarray, at_y: np.ndarray, at_x: np.ndarray) -> np.ndarray:
    """Sample ``image`` (…×h×w×c) at fractional pixel coordinates (H×W arrays) -> …×H×W×c."""
    h, w = image.shape[-3:-1]
    at_y = np.clip(at_y, 0, h - 1)
    at_x = np.clip(at_x, 0, w - 1)
    y0 = np.floor(at_y).astype(np.intp)
    x0 = np.floor(at_x).astype(np.intp)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (at_y - y0)[..., None].astype(image.dtype)
    wx = (at_x - x0)[..., None].astype(image.dtype)
    top = image[..., y0, x0, :] * (1 - wx) + image[..., y0, x1, :] * wx
    bottom = image[..., y1, x0, :] * (1 - wx) + image[..., y1, x1, :] * wx
    return top * (1 - wy) + bottom * wy


TRIGGERS: dict[str, type[Trigger]] = {
    cls.kind: cls
    for cls in (PatchTrigger, BlendTrigger, SigTrigger, WaNetTrigger, RandomPatchTrigger, PatternPatchTrigger,
                LowFreqTrigger, DynamicTrigger)
}


def trigger_from_dict(d: Mapping[str, Any], base_dir: str | Path | None = None) -> Trigger:
    """Build a trigger from its JSON dict, dispatching on ``kind``; ``base_dir`` resolves pattern files."""
    if not isinstance(d, Mapping):
        raise DataError(f"trigger must be a JSON object, got {type(d).__name__}")
    kind = d.get("kind")
    cls = TRIGGERS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DataError(f"unknown trigger kind {kind!r} (expected {', '.join(TRIGGERS)})")
    params = {k: v for k, v in d.items() if k != "kind"}
    json_fields = _json_fields(cls)
    required = [f.name for f in json_fields if f.default is dataclasses.MISSING]
    check_keys(params, f"{kind} trigger", [f.name for f in json_fields], required)
    if cls in (BlendTrigger, PatternPatchTrigger):
        params["base_dir"] = Path(base_dir) if base_dir is not None else None
    return cls(**params)


def poison(dataset: Dataset, trigger: Trigger, target: int) -> Dataset:
    """Stamped copies of the images whose true label is not ``target``, keeping their TRUE labels.

    ASR is then the share predicted as ``target`` and robust accuracy the share still predicted right.
    """
    kept = dataset.filter_labels(exclude=target)
    if len(kept) == 0:
        raise DataError(f"{dataset.source}: no images outside the target class {target} to stamp the trigger on")
    return Dataset(trigger.apply(kept.x), kept.y, f"{dataset.source} (with trigger, target {target})")
