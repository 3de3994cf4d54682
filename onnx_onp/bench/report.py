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
    """The machine and the numeric libraries: the search is repeatable on one machine, but another CPU or library
    version rounds floats differently and can send it down another path (docs/method.md, "What the measurements say", Limits)."""
    import numpy
    import onnxruntime
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(), "memory_gib": memory_gib(),
            "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "numpy": numpy.__version__}


def describe_machine(machine: dict) -> str:
    memory = f", {machine['memory_gib']} GiB RAM" if machine.get("memory_gib") else ""
    return (f"{machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable){memory}; "
            f"{machine['platform']}; onnxruntime {machine['onnxruntime']}"
            + "".join(f", {name} {machine[name]}" for name in ("torch", "numpy") if machine.get(name)))


def describe_settings(config: BenchConfig) -> str:
    test = f"{config.test_limit} test images (seed {config.seed})" if config.test_limit else "the full test split"
    seeds = config.draw_seeds
    draws = f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} draws, seeds {seeds[0]}..{seeds[-1]}"
    return (f"defenses {', '.join(config.defenses)}; defense data {config.defense_size} clean training images "
            f"({draws}); CA on {test}, ASR/RA on its non-target images with the trigger")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def header_lines(draws: bool = False) -> list[str]:
    """The per-row table's header; with ``draws`` a ``draw`` column (the defense data's seed) after the defense."""
    columns, align = list(COLUMNS), list(_ALIGN)
    if draws:
        columns.insert(3, "draw")
        align.insert(3, "---:")
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]


def format_row(row: Row, dataset: str = "", draws: bool = False) -> str:
    cells = [row.case, dataset, row.defense, _pct(row.ca), _pct(row.asr), _pct(row.ra), _pct(row.der),
             str(row.pruned_groups), str(row.pruned_neurons), f"{row.seconds:.2f}", f"{row.peak_rss_mb:.1f}"]
    if draws:
        cells.insert(3, str(row.draw))
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
            for line in header_lines(self.config.draws > 1):
                self.echo(line)

    def row(self, row: Row) -> None:
        self.echo(format_row(row, self._datasets.get(row.case, ""), self.config.draws > 1))


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
    draws = result.config.draws > 1
    lines += summary_lines(result) + gate_lines(result)
    lines += ["Every row:", ""] if draws else []
    lines += header_lines(draws)
    for case in result.cases:
        lines += [format_row(row, case.case.dataset, draws) for row in case.rows]
    lines += ["", "| model | split | data | defense images | test images | triggered (non-target) | target | "
              "reference CA % | reference ASR % | neurons | groups (prunable) | setup s |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in result.cases:
        if case.error or case.draw != result.config.seed:  # one line per model: the data of its first draw
            continue
        lines.append(f"| {case.case.name} | {case.case.split} | {case.data} | {case.defense_samples} | "
                     f"{case.test_samples} | "
                     f"{case.attack_samples} | {case.target} | {_pct(case.reference.get('ca'))} | "
                     f"{_pct(case.reference.get('asr'))} | {case.neurons} | {case.groups} ({case.prunable_groups}) | "
                     f"{case.setup_seconds:.1f} |")
    lines += onp_time_lines(result)
    failed = [c for c in result.cases if c.error]
    if failed:
        lines += ["", "Failed cases:", ""] + [f"- {c.case.name} (draw {c.draw}): {c.error}" for c in failed]
    return "\n".join(lines) + "\n"


# -- over draws ----------------------------------------------------------------------------------------------

def draw_summary(result: BenchResult) -> list[dict]:
    """Per model and defense, over the draws: mean and worst ASR (highest), CA drop (largest) and DER (lowest).

    CA drop is against the unpruned model on the same (fixed) test subset."""
    groups: dict[tuple[str, str], dict] = {}
    for case in result.cases:
        for row in case.rows:
            key = (case.case.name, row.defense)
            entry = groups.setdefault(key, {"model": case.case.name, "split": case.case.split,
                                            "dataset": case.case.dataset, "defense": row.defense,
                                            "draws": [], "asr": [], "ca_drop": [], "der": []})
            entry["draws"].append(row.draw)
            entry["ca_drop"].append(case.before["ca"] - row.ca)
            if row.asr is not None:
                entry["asr"].append(row.asr)
            if row.der is not None:
                entry["der"].append(row.der)
    out = []
    for entry in groups.values():
        values = {k: entry.pop(k) for k in ("asr", "ca_drop", "der")}
        for key, worst in (("asr", max), ("ca_drop", max), ("der", min)):
            v = values[key]
            entry[f"{key}_mean"] = float(np.mean(v)) if v else None
            entry[f"{key}_worst"] = float(worst(v)) if v else None
        out.append(entry)
    return out


def summary_lines(result: BenchResult) -> list[str]:
    """Markdown: the per-model mean and worst over draws (empty for a single draw)."""
    if result.config.draws < 2:
        return []
    lines = [f"Over {result.config.draws} draws of the defense data (seeds {', '.join(map(str, result.config.draw_seeds))}"
             "; one test subset): mean and worst per model. Worst = highest ASR, largest CA drop, lowest DER.", "",
             "| model | split | data | defense | draws | ASR % mean | ASR % worst | CA drop mean | CA drop worst | "
             "DER % mean | DER % worst |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in draw_summary(result):
        lines.append(f"| {e['model']} | {e['split']} | {e['dataset']} | {e['defense']} | {len(e['draws'])} | "
                     f"{_pct(e['asr_mean'])} | {_pct(e['asr_worst'])} | {_pct(e['ca_drop_mean'])} | "
                     f"{_pct(e['ca_drop_worst'])} | {_pct(e['der_mean'])} | {_pct(e['der_worst'])} |")
    return lines + [""]


# -- the gate as a classifier --------------------------------------------------------------------------------

GATE_ASR_HIGH, GATE_ASR_LOW = 0.20, 0.10  # "sanitized" above HIGH, "backdoor remains" below LOW: both wrong
CA_BUDGET = 0.02  # the default --max-ca-drop: a model written as sanitized should cost at most this on test data


def gate_rows(result: BenchResult) -> list[dict]:
    """Every (model, draw) with an ONP row: the outcome ONP reported against the test ASR it left."""
    rows = []
    for case in result.cases:
        for row in case.rows:
            if row.defense == "onp":
                rows.append({"model": case.case.name, "split": case.case.split, "draw": row.draw,
                             "status": row.status, "verdict": row.info.get("verdict"),
                             "asr_before": case.before.get("asr"), "asr_after": row.asr,
                             "ca_drop": case.before["ca"] - row.ca})
    return rows


def gate_summary(rows: list[dict]) -> dict:
    """Counts of each outcome, and of the three errors: ``sanitized`` while test ASR after is over 20% (a backdoor
    shipped), ``no backdoor evidence`` while it is over 20% (a backdoor missed: exit 0 as well), and ``backdoor
    remains`` while it is under 10% (a needless refusal)."""
    def is_sanitized(r):
        return r["status"] == "sanitized"

    def says_remains(r):
        return str(r["status"] or "").startswith("backdoor remains")

    measured = [r for r in rows if r["asr_after"] is not None]
    written = [r for r in measured if is_sanitized(r) and r.get("ca_drop") is not None]
    return {"pairs": len(rows),
            "sanitized": len(written),
            "sanitized_within_ca_budget": sum(r["ca_drop"] <= CA_BUDGET + 1e-9 for r in written),
            "by_status": {s: sum(r["status"] == s for r in rows) for s in sorted({str(r["status"]) for r in rows})},
            "sanitized_while_asr_over_20": sum(is_sanitized(r) and r["asr_after"] > GATE_ASR_HIGH for r in measured),
            "missed_while_asr_over_20": sum(str(r["status"] or "").startswith("no backdoor evidence")
                                            and r["asr_after"] > GATE_ASR_HIGH for r in measured),
            "remains_while_asr_under_10": sum(says_remains(r) and r["asr_after"] < GATE_ASR_LOW for r in measured)}


def gate_lines(result: BenchResult) -> list[str]:
    rows = gate_rows(result)
    if not rows:
        return []
    counts = gate_summary(rows)
    lines = ["The gate as a classifier: ONP's outcome on every (model, draw) against the test ASR after it. "
             f"`sanitized` said while test ASR > 20%: **{counts['sanitized_while_asr_over_20']}** of "
             f"{counts['pairs']}; `no backdoor evidence` said while test ASR > 20% (missed): "
             f"**{counts['missed_while_asr_over_20']}**; `backdoor remains` said while test ASR < 10%: "
             f"**{counts['remains_while_asr_under_10']}**; test CA drop within {CA_BUDGET * 100:.0f} points on "
             f"**{counts['sanitized_within_ca_budget']}** of the {counts['sanitized']} `sanitized` pairs.", "",
             "| model | split | draw | status | ASR % before | ASR % after | CA drop | wrong? |",
             "|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        asr = r["asr_after"]
        wrong = ""
        if asr is not None and r["status"] == "sanitized" and asr > GATE_ASR_HIGH:
            wrong = "sanitized, ASR > 20%"
        elif asr is not None and str(r["status"] or "").startswith("no backdoor evidence") and asr > GATE_ASR_HIGH:
            wrong = "missed, ASR > 20%"
        elif asr is not None and str(r["status"] or "").startswith("backdoor remains") and asr < GATE_ASR_LOW:
            wrong = "remains, ASR < 10%"
        lines.append(f"| {r['model']} | {r['split']} | {r['draw']} | {r['status']} | {_pct(r['asr_before'])} | "
                     f"{_pct(asr)} | {_pct(r['ca_drop'])} | {wrong} |")
    return lines + [""]


_PHASES = (("trigger_synthesis", "synthesis"), ("perturbation_scan", "perturbation scan"),
           ("amplification_scan", "amplification scan"), ("max_margin_scan", "max-margin scan"),
           ("trigger_refinement", "refinement"), ("signals_and_graphs", "signals + graphs"),
           ("agent_training", "agent training"), ("decision", "decision"), ("resynthesis", "re-check"),
           ("prune_back", "prune-back"))
_PHASE_LABELS = dict(_PHASES)
_NOT_PHASES = ("total", "onnxruntime", "onnxruntime_share")


def onp_time_lines(result: BenchResult) -> list[str]:
    """Where ONP's time went, per case: its phases, the share inside onnxruntime, and its ratio to the
    baselines' times in the same run."""
    lines = []
    several = len({getattr(case, "draw", 0) for case in result.cases}) > 1
    for case in result.cases:
        name = case.case.name + (f" (draw {case.draw})" if several else "")
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
        lines.append(f"| {name} | {detector} | {onp.seconds:.1f} | {phases} | "
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
        entry.update(name=case.case.name, family=case.case.family, split=case.case.split, model=case.case.model,
                     spec=case.case.spec, dataset=case.case.dataset, rows=[dataclasses.asdict(r) for r in case.rows])
        cases.append(entry)
    gate = gate_rows(result)
    return _plain({"command": command,
                   "date": result.started or _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "machine": machine, "settings": config, "seconds": result.seconds, "cases": cases,
                   "summary": draw_summary(result), "gate": {"rows": gate, **gate_summary(gate)}})


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


def onp_rows_from_json(payload: dict) -> list[dict]:
    """ONP's row per (case, draw) of a saved bench result: outcome, detector, test ASR, CA drop and DER in
    percent, pruned groups, seconds, the rounds' candidate sources, the split and the final check's record (None
    when the run did not reach it); a case that failed gives its error."""
    rows = []
    for case in payload["cases"]:
        if case.get("error"):
            rows.append({"case": case["name"], "draw": case["draw"], "error": case["error"]})
            continue
        row = next(r for r in case["rows"] if r["defense"] == "onp")
        info = row.get("info") or {}
        rows.append({"case": case["name"], "draw": case["draw"], "status": row.get("status") or info.get("status"),
                     "detector": info.get("detector"), "asr": 100 * row["asr"],
                     "drop": 100 * (case["before"]["ca"] - row["ca"]), "der": 100 * row["der"],
                     "groups": row["pruned_groups"], "seconds": row["seconds"],
                     # "+": the round after it ran only because until_probes_cut went on (the default stops)
                     "chosen": ", ".join(str(r.get("chosen_from")) + ("+" if r.get("went_on_as_probes_not_cut")
                                                                         else "") for r in info.get("rounds", []))
                     or "(nothing pruned)", "split": case.get("split", "dev"),
                     "final_check": info.get("final_check")})
    return rows
