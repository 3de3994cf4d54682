"""The benchmark's outputs: the machine it ran on, a Markdown table (printable row by row) and JSON."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
from collections.abc import Callable
from typing import Any

import numpy as np

from .harness import BenchConfig, BenchResult, CaseResult, Row

COLUMNS = ("model", "data", "defense", "CA %", "ASR %", "RA %", "DER %", "groups", "neurons", "time s", "peak MB")
_ALIGN = ("---", "---", "---") + ("---:",) * (len(COLUMNS) - 3)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict:
    import onnxruntime

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(), "memory_gib": memory_gib(),
            "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__}


def describe_machine(machine: dict) -> str:
    memory = f", {machine['memory_gib']} GiB RAM" if machine.get("memory_gib") else ""
    return (f"{machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable){memory}; "
            f"{machine['platform']}; onnxruntime {machine['onnxruntime']}")


def describe_settings(config: BenchConfig) -> str:
    test = f"{config.test_limit} seeded test images" if config.test_limit else "the full test split"
    return (f"defenses {', '.join(config.defenses)}; defense data {config.defense_size} clean training images "
            f"(seed {config.seed}); CA on {test}, ASR/RA on its non-target images with the trigger")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def header_lines() -> list[str]:
    return ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(_ALIGN) + "|"]


def format_row(row: Row, dataset: str = "") -> str:
    cells = (row.case, dataset, row.defense, _pct(row.ca), _pct(row.asr), _pct(row.ra), _pct(row.der),
             str(row.pruned_groups), str(row.pruned_neurons), f"{row.seconds:.2f}", f"{row.peak_rss_mb:.1f}")
    return "| " + " | ".join(cells) + " |"


class TableWriter:
    """Prints the report header once the first case knows its provider, then one table row per defense."""

    def __init__(self, echo: Callable[[str], None], config: BenchConfig, machine: dict | None = None):
        self.echo, self.config = echo, config
        self.machine = machine or machine_info()
        self._started = False
        self._datasets: dict[str, str] = {}

    def case_started(self, case: CaseResult) -> None:
        self._datasets[case.case.name] = case.case.dataset
        if not self._started:
            self._started = True
            self.echo(f"machine: {describe_machine(self.machine)}")
            self.echo(f"provider: {case.provider}")
            self.echo(f"settings: {describe_settings(self.config)}")
            self.echo("")
            for line in header_lines():
                self.echo(line)

    def row(self, row: Row) -> None:
        self.echo(format_row(row, self._datasets.get(row.case, "")))


def markdown_report(result: BenchResult, machine: dict, *, command: str | None = None,
                    date: str | None = None) -> str:
    """The whole run as Markdown: header, the results table, the data of each case, and failures."""
    if date is None:
        start = _dt.datetime.fromisoformat(result.started) if result.started else _dt.datetime.now().astimezone()
        date = start.strftime("%Y-%m-%d %H:%M %Z")
    providers = sorted({c.provider for c in result.cases if c.provider})
    lines = ["# onnx-onp benchmark", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    lines += [f"- date: {date}", f"- machine: {describe_machine(machine)}",
              f"- provider: {', '.join(providers) or '–'}", f"- settings: {describe_settings(result.config)}",
              f"- total time: {result.seconds:.0f} s", ""]
    lines += header_lines()
    for case in result.cases:
        lines += [format_row(row, case.case.dataset) for row in case.rows]
    lines += ["", "| model | data | defense images | test images | triggered (non-target) | target | "
              "reference CA % | reference ASR % | neurons | groups (prunable) | setup s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in result.cases:
        if case.error:
            continue
        lines.append(f"| {case.case.name} | {case.data} | {case.defense_samples} | {case.test_samples} | "
                     f"{case.attack_samples} | {case.target} | {_pct(case.reference.get('ca'))} | "
                     f"{_pct(case.reference.get('asr'))} | {case.neurons} | {case.groups} ({case.prunable_groups}) | "
                     f"{case.setup_seconds:.1f} |")
    lines += onp_time_lines(result)
    failed = [c for c in result.cases if c.error]
    if failed:
        lines += ["", "Failed cases:", ""] + [f"- {c.case.name}: {c.error}" for c in failed]
    return "\n".join(lines) + "\n"


_PHASES = (("trigger_synthesis", "synthesis"), ("perturbation_scan", "perturbation scan"),
           ("amplification_scan", "amplification scan"),
           ("trigger_refinement", "refinement"), ("signals_and_graphs", "signals + graphs"),
           ("agent_training", "agent training"), ("decision", "decision"), ("resynthesis", "re-check"),
           ("prune_back", "prune-back"))
_PHASE_LABELS = dict(_PHASES)
_NOT_PHASES = ("total", "onnxruntime", "onnxruntime_share")


def onp_time_lines(result: BenchResult) -> list[str]:
    """Where ONP's time went, per case: its phases, the share inside onnxruntime, and its ratio to the
    baselines' times in the same run."""
    lines = []
    for case in result.cases:
        rows = {r.defense: r for r in case.rows}
        onp = rows.get("onp")
        seconds = (onp.info.get("seconds") if onp else None) or {}
        if not seconds:
            continue
        def ratio(name):
            other = rows.get(name)
            return f"{onp.seconds / other.seconds:.0f}×" if other and other.seconds > 0 else "–"
        # Known phases in pipeline order, then any other (a phase added later must not vanish from the table).
        keys = [k for k, _ in _PHASES] + [k for k in seconds if k not in _PHASE_LABELS and k not in _NOT_PHASES]
        phases = ", ".join(f"{_PHASE_LABELS.get(key, key)} {seconds[key]:.0f}" for key in keys if seconds.get(key))
        detector = onp.info.get("detector", "–")
        if str(onp.info.get("status", "")).startswith("no backdoor evidence"):
            detector = "none found"  # every detector ran and none flagged the model
        lines.append(f"| {case.case.name} | {detector} | {onp.seconds:.1f} | {phases} | "
                     f"{100 * seconds.get('onnxruntime_share', 0):.0f}% | {ratio('clp')} | {ratio('fp')} |")
    if not lines:
        return []
    return ["", "ONP's time (phases in seconds; the share of its time spent inside onnxruntime; its time over "
                "CLP's and Fine-Pruning's in this run):", "",
            "| model | detector | ONP s | phases s | in onnxruntime | ÷ CLP | ÷ Fine-Pruning |",
            "|---|---|---:|---|---:|---:|---:|"] + lines


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if hasattr(value, "__fspath__"):
        return os.fspath(value)
    return value


def result_to_json(result: BenchResult, machine: dict, *, command: str | None = None) -> dict:
    """JSON-ready dict of the whole run (every row with its defense's info)."""
    config = dataclasses.asdict(result.config) if not result.config.defense_configs else {
        **{k: v for k, v in dataclasses.asdict(result.config).items() if k != "defense_configs"},
        "defense_configs": {k: dataclasses.asdict(v) for k, v in result.config.defense_configs.items()},
    }
    cases = []
    for case in result.cases:
        entry = {k: v for k, v in dataclasses.asdict(case).items() if k not in ("case", "rows")}
        entry.update(name=case.case.name, family=case.case.family, model=case.case.model, spec=case.case.spec,
                     dataset=case.case.dataset, rows=[dataclasses.asdict(r) for r in case.rows])
        cases.append(entry)
    return _plain({"command": command,
                   "date": result.started or _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "machine": machine, "settings": config, "seconds": result.seconds, "cases": cases})


def onp_time_lines_from_json(payload: dict) -> list[str]:
    """The ONP's-time table of a saved `bench --json` run (for runs rendered before a phase was named)."""
    from types import SimpleNamespace

    cases = [SimpleNamespace(case=SimpleNamespace(name=c["name"]),
                             rows=[SimpleNamespace(defense=r["defense"], seconds=r["seconds"], info=r["info"])
                                   for r in c["rows"]])
             for c in payload["cases"]]
    return onp_time_lines(SimpleNamespace(cases=cases))


if __name__ == "__main__":  # python -m onnx_onp.bench.report RUN.json: ONP's time table of a saved run
    import json
    import sys

    for path in sys.argv[1:]:
        print("\n".join(onp_time_lines_from_json(json.loads(open(path).read()))))
