"""The case file that travels with a backdoored model: preprocessing, trigger, target, reference numbers.

The format is the one of ``shared/real_models/*.json``; keys onnx-onp does not use (``source``,
``attack``, ...) are kept in ``extra`` so that reading and writing a spec never loses information.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx_onp.data._config import read_json_object, reraise_with_source, to_float, to_int, write_json
from onnx_onp.data.preprocess import Preprocess
from onnx_onp.data.triggers import Trigger, trigger_from_dict
from onnx_onp.errors import DataError

_KNOWN = ("name", "preprocess", "trigger", "target", "clean_accuracy", "attack_success_rate")


@dataclass
class Spec:
    """A model's case file; ``preprocess`` defaults to ``Preprocess()`` when the file has none."""

    name: str | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    trigger: Trigger | None = None
    target: int | None = None
    clean_accuracy: float | None = None
    attack_success_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: str | Path | None = None) -> Spec:
        """Parse a spec dict; ``base_dir`` (the spec file's folder) resolves trigger pattern files."""
        if not isinstance(d, Mapping):
            raise DataError(f"spec must be a JSON object, got {type(d).__name__}")
        name = d.get("name")
        if name is not None and not isinstance(name, str):
            raise DataError(f"'name' must be a string, got {name!r}")
        return cls(
            name=name,
            preprocess=Preprocess.from_dict(d.get("preprocess") or {}),
            trigger=None if d.get("trigger") is None else trigger_from_dict(d["trigger"], base_dir),
            target=_optional(d, "target", lambda v, n: to_int(v, n, minimum=0)),
            clean_accuracy=_optional(d, "clean_accuracy", _rate),
            attack_success_rate=_optional(d, "attack_success_rate", _rate),
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )

    @classmethod
    def load(cls, path: str | Path) -> Spec:
        """Read a spec JSON file; every problem is a DataError naming the file."""
        path = Path(path)
        d = read_json_object(path)
        try:
            return cls.from_dict(d, base_dir=path.parent)
        except DataError as exc:
            raise reraise_with_source(exc, path) from exc

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready dict: extra keys first (as in the files), then the known ones that are set."""
        d: dict[str, Any] = dict(self.extra)
        d["preprocess"] = self.preprocess.to_dict()
        if self.trigger is not None:
            d["trigger"] = self.trigger.to_dict()
        for key in ("name", "clean_accuracy", "attack_success_rate", "target"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d

    def save(self, path: str | Path) -> None:
        """Write the JSON file (OutputError if it cannot be written)."""
        write_json(path, self.to_dict())


def _rate(value: Any, name: str) -> float:
    return to_float(value, name, minimum=0.0, maximum=1.0)


def _optional(d: Mapping[str, Any], key: str, convert: Any) -> Any:
    value = d.get(key)
    return None if value is None else convert(value, f"'{key}'")
