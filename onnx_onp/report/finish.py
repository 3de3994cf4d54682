"""The last fields of a report, set the same way by the CLI and the Python API: which command wrote it, the
gate's policy and the exit code that policy gives; and the report as JSON text (what the HTML page renders)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .verdict import gate_exit_code


def finish_report(report: dict, command: str, fail_on: str) -> dict:
    """Add ``command`` (sanitize | audit), ``fail_on`` and the gate's ``exit_code``; returns the same dict."""
    if command not in ("sanitize", "audit"):
        raise ValueError(f"command must be sanitize or audit, not {command!r}")
    report["command"] = command
    report["fail_on"] = fail_on
    report["exit_code"] = gate_exit_code(report, fail_on)
    return report


def json_default(value):
    """JSON for the NumPy scalars and arrays, and paths, a report may hold."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def report_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=json_default) + "\n"


def report_html(report: dict) -> str:
    """The HTML page of exactly what the JSON says (rendered from the JSON text, not from the live dict)."""
    from .html import render_html

    return render_html(json.loads(report_json(report)))
