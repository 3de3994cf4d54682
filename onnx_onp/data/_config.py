"""Small validators shared by the JSON-backed settings (preprocess, trigger, spec).

They raise ``DataError`` without a file name; the loader that knows the file prefixes it, so each
message still ends up as one line naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from onnx_onp.errors import DataError, OutputError


def read_json_object(path: str | Path) -> dict[str, Any]:
    """Parse a JSON file that must hold one object."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write settings in the layout of the shared spec files; a failure is an OutputError."""
    try:
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc})") from exc


def reraise_with_source(exc: DataError, source: str | Path) -> DataError:
    """The same error with ``source: `` in front, for ``raise reraise_with_source(e, path) from e``."""
    return DataError(f"{source}: {exc}")


def check_keys(d: Mapping[str, Any], what: str, allowed: Iterable[str], required: Iterable[str] = ()) -> None:
    """Reject typos early: unknown keys would otherwise silently fall back to defaults."""
    if not isinstance(d, Mapping):
        raise DataError(f"{what} must be a JSON object, got {type(d).__name__}")
    allowed = list(allowed)
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise DataError(f"unknown {what} key {', '.join(map(repr, unknown))} (expected {', '.join(allowed)})")
    missing = [k for k in required if k not in d]
    if missing:
        raise DataError(f"{what} is missing {', '.join(map(repr, missing))}")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def to_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """An integer (JSON ``3`` or ``3.0``), optionally at least ``minimum``."""
    if not _is_number(value) or not float(value).is_integer():
        raise DataError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise DataError(f"{name} must be at least {minimum}, got {value}")
    return value


def to_float(
    value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None, positive: bool = False
) -> float:
    """A finite number within the given bounds."""
    if not _is_number(value) or not math.isfinite(value):
        raise DataError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise DataError(f"{name} must be positive, got {value}")
    if minimum is not None and value < minimum:
        raise DataError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise DataError(f"{name} must be at most {maximum}, got {value}")
    return value


def to_floats(value: Any, name: str, *, positive: bool = False) -> tuple[float, ...]:
    """One number or a non-empty list of numbers, as a tuple (one value per channel)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise DataError(f"{name} must not be empty")
    return tuple(to_float(v, name, positive=positive) for v in values)
