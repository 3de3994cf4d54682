"""How a raw uint8 N×H×W×C image becomes the tensor a model was trained on.

A backdoored model is only meaningful with its original preprocessing (scale, per-channel mean/std,
layout, size): getting it wrong silently destroys both clean accuracy and attack success, so the
settings are validated strictly and ``fit_to_input`` checks them against the model before any run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from onnx_onp.data._config import (
    check_keys,
    read_json_object,
    reraise_with_source,
    write_json,
    to_float,
    to_floats,
    to_int,
)
from onnx_onp.errors import DataError

LAYOUTS = ("NCHW", "NHWC")
_KEYS = ("scale", "mean", "std", "layout", "resize")


@dataclass
class Preprocess:
    """``x * scale``, then ``(x - mean) / std`` per channel, then ``layout``; optional ``resize`` (H, W) first."""

    scale: float = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str = "NCHW"
    resize: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.scale = to_float(self.scale, "preprocess 'scale'", positive=True)
        if self.mean is not None:
            self.mean = to_floats(self.mean, "preprocess 'mean'")
        if self.std is not None:
            self.std = to_floats(self.std, "preprocess 'std'", positive=True)
        if not isinstance(self.layout, str) or self.layout.upper() not in LAYOUTS:
            raise DataError(f"preprocess 'layout' must be NCHW or NHWC, got {self.layout!r}")
        self.layout = self.layout.upper()
        if self.resize is not None:
            self.resize = _to_size(self.resize)

    # ----- serialisation ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """From the preprocess keys themselves, or from a spec dict holding them under ``preprocess``."""
        if isinstance(d, Mapping) and "preprocess" in d:
            d = d["preprocess"]
        check_keys(d, "preprocess", _KEYS)
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> Preprocess:
        """Read a preprocess JSON file (or a spec JSON file)."""
        d = read_json_object(path)
        try:
            return cls.from_dict(d)
        except DataError as exc:
            raise reraise_with_source(exc, path) from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; unset optional keys are left out (so a spec round-trips unchanged)."""
        d: dict[str, Any] = {"layout": self.layout, "scale": self.scale}
        for key in ("mean", "std", "resize"):
            value = getattr(self, key)
            if value is not None:
                d[key] = list(value)
        return d

    def save(self, path: str | Path) -> None:
        """Write the JSON file (OutputError if it cannot be written)."""
        write_json(path, self.to_dict())

    # ----- applying -----------------------------------------------------------------------------
    def apply(self, x_raw: np.ndarray) -> np.ndarray:
        """Raw N×H×W×C images to a contiguous float32 batch in the model's layout (input untouched)."""
        if x_raw.ndim != 4:
            raise DataError(f"preprocessing expects N×H×W×C images, got shape {tuple(x_raw.shape)}")
        channels = x_raw.shape[3]
        if self.resize is not None and tuple(x_raw.shape[1:3]) != self.resize:
            x = _resize_bilinear(x_raw, self.resize)
        else:
            x = x_raw.astype(np.float32)  # always a copy
        x *= np.float32(self.scale)
        if self.mean is not None:
            x -= _per_channel(self.mean, channels, "mean")
        if self.std is not None:
            x /= _per_channel(self.std, channels, "std")
        if self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def fit_to_input(self, x_raw_shape: Sequence[int], model_input_shape: Sequence[Any]) -> None:
        """Fail with a clear message when preprocessed images cannot feed the model's (static) input dims."""
        h, w, c = (int(v) for v in x_raw_shape[-3:])
        shape = list(model_input_shape)
        if len(shape) != 4:
            raise DataError(
                f"the model input has shape [{_shape_text(shape, ', ')}]; onnx-onp feeds 4-D image batches "
                "(N×C×H×W or N×H×W×C)"
            )
        out_h, out_w = self.resize or (h, w)
        if not _fits(shape, self.layout, (out_h, out_w, c)):
            data = f"{h}×{w}×{c}" + (f" (resized to {out_h}×{out_w}×{c})" if self.resize else "")
            other = LAYOUTS[1 - LAYOUTS.index(self.layout)]
            fits_other = _fits(shape, other, (out_h, out_w, c))
            # There are no --layout/--resize options: both live in the preprocess JSON (--preprocess, or --spec's
            # "preprocess").
            hint = (f'set "layout": "{other}" in the preprocess JSON (--preprocess or the --spec file)' if fits_other
                    else 'set "resize": [H, W] or check "layout" in the preprocess JSON (--preprocess or --spec)')
            raise DataError(
                f"data images are {data} but the model expects {_shape_text(shape[1:], '×')} ({self.layout}); {hint}"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None:
                _per_channel(values, c, name)

    @staticmethod
    def infer_layout(model_input_shape: Sequence[Any]) -> str:
        """Guess the layout from the model's input dims: channels (1 or 3) first or last, NCHW if unclear."""
        shape = [_static_dim(d) for d in model_input_shape]
        if len(shape) == 4:
            first, last = shape[1] in (1, 3), shape[3] in (1, 3)
            if last and not first:
                return "NHWC"
        return "NCHW"


def _to_size(value: Any) -> tuple[int, int]:
    """``resize`` as (H, W): one integer for a square or a pair."""
    values = value if isinstance(value, (list, tuple)) else [value, value]
    if len(values) != 2:
        raise DataError(f"preprocess 'resize' must be [height, width], got {value!r}")
    return tuple(to_int(v, "preprocess 'resize'", minimum=1) for v in values)  # type: ignore[return-value]


def _per_channel(values: tuple[float, ...], channels: int, name: str) -> np.ndarray:
    """Mean or std as a float32 vector broadcasting over the channel axis of N×H×W×C images."""
    if len(values) not in (1, channels):
        raise DataError(
            f"preprocess '{name}' has {len(values)} values but the images have {channels} channel"
            + ("s" if channels != 1 else "")
        )
    return np.asarray(values, dtype=np.float32)


def _resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize each image channel with Pillow bilinear in float mode ("F"), so any dtype and C works."""
    height, width = size
    out = np.empty((x.shape[0], height, width, x.shape[3]), dtype=np.float32)
    for i in range(x.shape[0]):
        for ch in range(x.shape[3]):
            plane = Image.fromarray(np.ascontiguousarray(x[i, :, :, ch], dtype=np.float32))
            out[i, :, :, ch] = np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR))
    return out


def _fits(model_shape: Sequence[Any], layout: str, hwc: tuple[int, int, int]) -> bool:
    """Whether H×W×C images match every static dim of a 4-D model input read in ``layout``."""
    dims = model_shape[1:] if layout == "NHWC" else (model_shape[2], model_shape[3], model_shape[1])
    return all(_static_dim(dim) in (None, have) for dim, have in zip(dims, hwc))


def _static_dim(dim: Any) -> int | None:
    """A fixed positive dimension, or None for dynamic ones (None, symbolic names, 0 or -1)."""
    if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0:
        return int(dim)
    return None


def _shape_text(dims: Sequence[Any], sep: str) -> str:
    return sep.join(str(d) if _static_dim(d) is not None else "?" for d in dims)
