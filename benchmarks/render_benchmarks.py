"""BENCHMARKS.md and benchmarks/results/INDEX.md, rendered from the saved JSON in benchmarks/results/.

    python -m benchmarks.render_benchmarks --out BENCHMARKS.md

Every `onnx-onp bench --json` run is kept as it was written; this renders the current table: for every model
(and split) and every defense, the latest row by the run's date. A test checks that the committed files equal
this rendering, so after adding a result file the one command above updates both.

Several defense-data draws of one case are rendered as mean and worst, with the per-draw rows kept. A draw is
either an entry of a case's ``draws`` list::

    {"name": "resnet18_badnets_cifar10", "split": "test", ...,
     "draws": [{"seed": 0, "before": {"ca": ..., "asr": ..., "ra": ...}, "rows": [<Row>, ...]},
               {"seed": 1, ...}]}

or a case entry (in one file or several) run with another defense-data seed (``settings.seed``, or ``seed`` on
the case entry). Per case, split, seed and defense the latest row counts. ``split`` ("dev" or "test") on a case
entry marks which models a result is on; the test split's table comes first when there is one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from onnx_onp.bench.report import describe_machine, onp_time_lines_from_json
from onnx_onp.bench.verdicts import VerdictRow, verdict_markdown, verdict_summary
from onnx_onp.files import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
BASELINES = (("onp", "ONP"), ("clp", "CLP"), ("fp", "Fine-Pruning"), ("random@onp", "random (ONP's count)"))
OPTIONAL_BASELINES = (("anp", "ANP"),)  # columns only where some run has the defense (not in bench's default)


def baselines(table, split: str | None = None) -> tuple[tuple[str, str], ...]:
    """The defenses the tables show: the default ones, and an optional one wherever a run (on ``split``, when
    given) measured it."""
    present = {name for (_, case_split), draws in table.items() if split is None or case_split == split
               for draw in draws.values() for name in draw.rows}
    return BASELINES + tuple(entry for entry in OPTIONAL_BASELINES if entry[0] in present)
SPLIT_TITLES = {"test": "Test split (models held out from development)", "dev": "Development models"}


@dataclass
class Draw:
    """One case on one defense-data draw: its rows by defense, each from the latest run that had it."""

    case: str
    split: str
    seed: int
    dataset: str = ""
    before: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)  # defense -> (row dict, source file stem, date)


def load_runs(folder: Path = RESULTS) -> list[tuple[str, dict]]:
    """Every JSON result file as (file name, payload), in name order."""
    return [(path.name, json.loads(path.read_text())) for path in sorted(folder.glob("*.json"))]


def is_bench_run(payload) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("cases"), list) and "settings" in payload


def is_scale_run(payload) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("widths"), list) and \
        str(payload.get("command", "")).startswith("python -m benchmarks.scale")


def scale_lines(runs: list[tuple[str, dict]]) -> list[str]:
    """The latest `python -m benchmarks.scale` run: its table, command and machine."""
    from benchmarks.scale import table

    latest = max(((p.get("started") or "", name, p) for name, p in runs if is_scale_run(p)), default=None)
    if latest is None:
        return []
    started, name, payload = latest
    machine = payload.get("machine") or {}
    load = machine.get("load_average")
    checks = payload.get("checks") or {}
    return ["## Scale", "",
            "`sanitize` on widths of the BadNets CIFAR-10 ResNet-18 (one child process per width; peak RSS: the whole "
            "process; torch share: time inside torch modules and autograd calls, a lower bound; ONP / FP and "
            "ONP / CLP: end-to-end wall times, load and map included; CPU s: sanitize's process CPU time; masked-0 / masked-r: masked evaluation with nothing "
            "/ 20% pruned over plain onnxruntime). Targets (issue 25): ONP ≤ 3× Fine-Pruning on every width "
            f"({'met' if checks.get('onp_within_3x_fp') else 'not met'}), masked evaluation ≤ 1.10× plain "
            f"({'met' if checks.get('masked_within_1.10x_plain') else 'not met'}); width 64 ≤ 10 minutes and "
            "≤ 4 GB.", "",
            f"`{payload['command']}` ([{name}](benchmarks/results/{name}), started {started[:16].replace('T', ' ')}"
            f"; {machine.get('cpu')}, {machine.get('cores')} cores"
            + (f", load average {load[0]:.1f} at its end: other jobs shared the CPU" if load else "") + "):", ""] + \
        table(payload["widths"]).splitlines() + [""] + _scale_missing(payload)


def _scale_missing(payload: dict) -> list[str]:
    """A run stopped part-way (its JSON is rewritten after each width): say which widths it did not reach."""
    import re

    asked = re.search(r"--widths ([\d,]+)", payload.get("command", ""))
    measured = {r["width"] for r in payload["widths"]}
    missing = [w for w in (asked.group(1).split(",") if asked else []) if w and int(w) not in measured]
    if payload.get("complete", True) or not missing:
        return []
    return [f"The run stopped before width {', '.join(missing)} (a time limit; `--resume` goes on from here).", ""]


def is_throughput_run(payload) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("modes"), list) and \
        str(payload.get("command", "")).startswith("python -m benchmarks.batch_throughput")


def is_batch_audit(payload) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("rows"), list) and "executor" in payload


def batch_lines(runs: list[tuple[str, dict]]) -> list[str]:
    """The latest batch audit of many models and the latest throughput comparison of the executors."""
    audits = [(n, p) for n, p in runs if is_batch_audit(p)]
    speeds = [(n, p) for n, p in runs if is_throughput_run(p)]
    if not audits and not speeds:
        return []
    lines = ["## Batch audits", ""]
    if audits:
        name, a = max(audits, key=lambda run: run[1].get("date") or "")
        done = a["models"] - a["failed"]
        lines += [f"`{a.get('command_line', 'onnx-onp audit')}` ({name}; {_machine(a.get('machine'))}): "
                  f"{a['models']} models, {a['suspected']} suspected, {a['failed']} not audited, "
                  f"{a['seconds']:.0f} s with {a['executor']} = {3600 * done / a['seconds']:.1f} models/hour"
                  + (f" ({a['note']})" if a.get("note") else "") + ".", "",
                  "| model | verdict | target | outcome | seconds |", "|---|---|---:|---|---:|"]
        lines += [f"| {r['name']} | {r['verdict'] or 'error: ' + str(r['error'])} | "
                  f"{'' if r['target'] is None else r['target']} | {r['outcome'] or ''} | {r['seconds']} |"
                  for r in a["rows"]] + [""]
    if speeds:
        name, t = max(speeds, key=lambda run: run[1].get("date") or "")
        base = next((m["models_per_hour"] for m in t["modes"] if m["mode"] == "jobs1"), None)
        lines += [f"Executors side by side, `{t['command']}` ({name}; {_machine(t.get('machine'))}; "
                  f"{'detection only' if t['detect_only'] else 'full audits'} of {', '.join(t['models'])}); "
                  f"same verdicts and masks in every run: {'yes' if t['same_verdicts_and_masks'] else '**no**'}. Ray's "
                  "time starts once its local cluster is up (ray.init is not counted).", "",
                  "| executor | models | seconds | models/hour | vs --jobs 1 | load after |",
                  "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {m['executor']} | {m['models']} | {m['seconds']:.1f} | {m['models_per_hour']:.1f} | "
                  f"{m['models_per_hour'] / base:.2f}x | {' '.join(map(str, m['load_after']))} |" if base else
                  f"| {m['executor']} | {m['models']} | {m['seconds']:.1f} | {m['models_per_hour']:.1f} | | "
                  f"{' '.join(map(str, m['load_after']))} |" for m in t["modes"]] + [""]
    return lines


def is_fuzz_run(payload) -> bool:
    return isinstance(payload, dict) and "families" in payload and "runs" in payload and "summary" in payload


def fuzz_lines(runs: list[tuple[str, dict]]) -> list[str]:
    """The latest full fuzz run's summary line (benchmarks/fuzz.py --out), with its command."""
    fuzz = [p for _, p in runs if is_fuzz_run(p)]
    if not fuzz:
        return []
    latest = max(fuzz, key=lambda p: p.get("date") or "")
    lines = ["## Hostile inputs", "", f"`{latest['command']}`", "", latest["summary"]]
    if latest.get("note"):
        lines += ["", latest["note"]]
    return lines + [""]


def is_verdict_run(payload) -> bool:
    return isinstance(payload, dict) and "summary" in payload and isinstance(payload.get("rows"), list)


def _case_draws(case: dict, run_seed: int) -> list[tuple[int, dict, list]]:
    """(seed, before, rows) for each defense-data draw a case entry holds."""
    if case.get("draws"):
        return [(int(d.get("seed", run_seed)), d.get("before") or {}, d.get("rows") or []) for d in case["draws"]]
    # `onnx-onp bench --draws N` writes one entry per draw, its defense-data seed as "draw"
    seed = case.get("seed", case.get("draw", run_seed))
    return [(int(seed), case.get("before") or {}, case.get("rows") or [])]


def current_draws(runs: list[tuple[str, dict]]) -> dict[tuple[str, str], dict[int, Draw]]:
    """(case, split) -> seed -> Draw, each defense's row from the latest dated run that measured it."""
    table: dict[tuple[str, str], dict[int, Draw]] = {}
    bench = sorted(((p.get("date") or "", name, p) for name, p in runs if is_bench_run(p)), key=lambda t: t[:2])
    for date, name, payload in bench:  # oldest first: a later run overwrites
        run_seed = int((payload.get("settings") or {}).get("seed", 0))
        for case in payload["cases"]:
            if case.get("error"):
                continue
            split = case.get("split") or "dev"  # runs before the split existed were all on dev models
            for seed, before, rows in _case_draws(case, run_seed):
                draw = table.setdefault((case["name"], split), {}).setdefault(
                    seed, Draw(case["name"], split, seed))
                draw.dataset = case.get("dataset", draw.dataset)
                if rows:
                    draw.before = before or draw.before
                for row in rows:
                    draw.rows[row["defense"]] = (row, Path(name).stem, date)
    return table


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _stat(values: list, worst) -> str:
    """One draw: the value. Several: mean, and the worst draw's value in brackets."""
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    if len(values) == 1:
        return _pct(present[0])
    return f"{_pct(statistics.fmean(present))} ({_pct(worst(present))})"


def _ca_drop(row: dict, before: dict) -> float | None:
    return None if before.get("ca") is None else before["ca"] - row["ca"]


def _defenses(draws: dict[int, Draw]) -> list[str]:
    order = ["none", "onp", "clp", "fp"]
    names = {d for draw in draws.values() for d in draw.rows}
    return [d for d in order if d in names] + sorted(names - set(order))


def summary_lines(table: dict[tuple[str, str], dict[int, Draw]], split: str) -> list[str]:
    """One line per model: the unpruned model, then each defense's ASR and CA drop (mean, worst draw)."""
    shown = baselines(table, split)
    head = "| model | draws | CA % | ASR % | " + " | ".join(f"{label} ASR % | {label} CA drop" for _, label in shown)
    lines = [head + " |", "|---|---:|---:|---:|" + "---:|---:|" * len(shown)]
    for (case, case_split), draws in sorted(table.items()):
        if case_split != split:
            continue
        befores = [d.before for d in draws.values() if d.before]
        cells = [case, str(len(draws)), _stat([b.get("ca") for b in befores], min),
                 _stat([b.get("asr") for b in befores], max)]
        for defense, _ in shown:
            rows = [(d.rows[defense][0], d.before) for d in draws.values() if defense in d.rows]
            cells.append(_stat([r["asr"] for r, _ in rows], max) if rows else "–")
            cells.append(_stat([_ca_drop(r, b) for r, b in rows], max) if rows else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def full_lines(table: dict[tuple[str, str], dict[int, Draw]], split: str) -> list[str]:
    """Every defense on every model: mean (worst draw) where there are several draws; the run it comes from."""
    lines = ["| model | data | defense | CA % | ASR % | RA % | DER % | groups | neurons | time s | peak MB | result |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for (case, case_split), draws in sorted(table.items()):
        if case_split != split:
            continue
        dataset = next((d.dataset for d in draws.values() if d.dataset), "")
        for defense in _defenses(draws):
            rows = [d.rows[defense] for d in draws.values() if defense in d.rows]
            values = [r for r, _, _ in rows]
            sources = ", ".join(sorted({source for _, source, _ in rows}))
            lines.append(
                f"| {case} | {dataset} | {defense} | {_stat([r['ca'] for r in values], min)} | "
                f"{_stat([r['asr'] for r in values], max)} | {_stat([r['ra'] for r in values], min)} | "
                f"{_stat([r['der'] for r in values], min)} | {_mean_text([r['pruned_groups'] for r in values])} | "
                f"{_mean_text([r['pruned_neurons'] for r in values])} | "
                f"{_mean_text([r['seconds'] for r in values], 1)} | "
                f"{_mean_text([r['peak_rss_mb'] for r in values], 0)} | {sources} |")
    return lines


def _mean_text(values: list, digits: int | None = None) -> str:
    mean = statistics.fmean(values)
    if digits is None:
        return str(values[0]) if len(values) == 1 else f"{mean:.1f}"
    return f"{mean:.{digits}f}"


def per_draw_lines(table: dict[tuple[str, str], dict[int, Draw]]) -> list[str]:
    """The draws behind every mean: one row per draw of each model that has more than one, each defense's CA and
    ASR side by side (random pruning with CLP's and Fine-Pruning's counts is in the tables above, as a mean)."""
    lines, shown = [], baselines(table)
    for (case, split), draws in sorted(table.items()):
        if len(draws) < 2:
            continue
        for seed, draw in sorted(draws.items()):
            cells, sources = [], []
            for defense in ("none",) + tuple(name for name, _ in shown):
                if defense in draw.rows:
                    row, source, _ = draw.rows[defense]
                    cells.append(f"{_pct(row['ca'])} / {_pct(row['asr'])}")
                    sources.append(source)
                else:
                    cells.append("–")
            groups = draw.rows["onp"][0]["pruned_groups"] if "onp" in draw.rows else "–"
            lines.append(f"| {case} | {split or '–'} | {seed} | {' | '.join(cells)} | {groups} | "
                         f"{', '.join(dict.fromkeys(sources))} |")
    if not lines:
        return []
    labels = " | ".join(label for _, label in shown)
    return ["## Per draw", "", "Every defense-data draw behind a mean above (seed = the defense data's seed): CA % / "
            "ASR % per defense, and the groups ONP pruned.", "",
            f"| model | split | seed | no defense | {labels} | ONP groups | result |",
            "|---|---|---:|---:|" + "---:|" * len(shown) + "---:|---|"] + lines + [""]


GATE_ASR_HIGH, GATE_ASR_LOW, CA_BUDGET = 0.20, 0.10, 0.02


TEST_INFORMED = Path(__file__).resolve().parents[1] / "fixtures" / "test_models" / "test_informed.json"


def test_informed_models() -> list[str]:
    """Test models whose numbers prompted a change that still stands (fixtures/test_models/test_informed.json)."""
    if not TEST_INFORMED.exists():
        return []
    changes = json.loads(TEST_INFORMED.read_text())["changes"]
    return sorted({m for change in changes if not change.get("undone") for m in change["models"]})


def target_lines(table: dict[tuple[str, str], dict[int, Draw]], split: str = "test",
                 title: str | None = None) -> list[str]:
    """Issue 22's targets against what one split measured, each over every (model, draw) ONP ran on. ONP's
    ASR and CA drop are its mask's whatever the gate said (exit 11 writes no model; the gate section counts those).
    Backdoored: ASR before >= 10%; clean: under 10%."""
    backdoored, clean = {}, {}
    for (case, case_split), draws in table.items():
        pairs = [d for d in draws.values() if "onp" in d.rows and d.before.get("asr") is not None]
        if case_split != split or not pairs:
            continue
        (backdoored if statistics.fmean(d.before["asr"] for d in pairs) >= GATE_ASR_LOW else clean)[case] = pairs
    if not backdoored and not clean:
        return []

    def mean(values):
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    def met(ok: bool | None) -> str:
        return "–" if ok is None else ("yes" if ok else "**no**")

    rows = []
    if backdoored:
        model_asr = {c: mean(d.rows["onp"][0]["asr"] for d in ps) for c, ps in backdoored.items()}
        pairs = [d for ps in backdoored.values() for d in ps]
        drops = [_ca_drop(d.rows["onp"][0], d.before) for d in pairs]
        within = sum(x is not None and x <= CA_BUDGET + 1e-9 for x in drops)
        mean_asr = mean(model_asr.values())
        low = sum(a <= GATE_ASR_LOW + 1e-9 for a in model_asr.values())
        # A defense measured on only some of the models (ANP, not in bench's default) says on how many: its means
        # are over those, and its DER takes no part in the target's verdict.
        shown = baselines(table, split)
        # A model counts as covered when the defense ran on every draw ONP did.
        covered = {label: sum(all(name in d.rows for d in ps) for ps in backdoored.values()) for name, label in shown}
        present = {label for name, label in shown for ps in backdoored.values() for d in ps if name in d.rows}
        partly = {label: f" (on {n} of {len(backdoored)} models)" if label in present and n < len(backdoored) else ""
                  for label, n in covered.items()}
        ders = {label: mean(d.rows[name][0]["der"] for d in pairs if name in d.rows) for name, label in shown}
        others = [v for k, v in ders.items() if k != "ONP" and v is not None and not partly[k]]
        # The baselines' mean ASR on the same pairs, for comparison (the target is ONP's).
        asrs = {label: mean(mean(d.rows[name][0]["asr"] for d in ps if name in d.rows) for ps in backdoored.values())
                for name, label in shown if name != "onp"}
        compared = ", ".join(f"{k} {_pct(v)}%{partly[k]}" for k, v in asrs.items() if v is not None)
        rows += [
            (f"backdoored ({len(backdoored)} models): mean ONP ASR" + (f" ({compared})" if compared else ""), "≤ 3%",
             f"{_pct(mean_asr)}%", met(mean_asr <= 0.03)),
            ("models with mean ONP ASR ≤ 10%", "≥ 90%", f"{low} of {len(model_asr)}",
             met(low >= 0.9 * len(model_asr))),
            ("(model, draw) pairs with ONP CA drop ≤ 2 points", "≥ 95%", f"{within} of {len(pairs)}",
             met(within >= 0.95 * len(pairs))),
            ("mean DER: " + ", ".join(f"{k} {_pct(v)}{partly[k]}" for k, v in ders.items() if v is not None),
             "ONP above the others", f"ONP {_pct(ders['ONP'])}",
             met(ders["ONP"] is not None and all(ders["ONP"] > v for v in others) if others else None))]
    if clean:
        flagged = {c for c, ps in clean.items() for d in ps
                   if not str((d.rows["onp"][0].get("info") or {}).get("status", "")).startswith("no backdoor")}
        drops = [_ca_drop(d.rows["onp"][0], d.before) for ps in clean.values() for d in ps]
        clean_drop = mean(drops)
        rows += [
            (f"clean ({len(clean)} models): flagged on any draw", "≤ 1 in 6", f"{len(flagged)} of {len(clean)}",
             met(len(flagged) * 6 <= len(clean))),
            ("clean: mean ONP CA drop", "≤ 0.5 points", _pct(clean_drop), met(clean_drop <= 0.005 + 1e-9))]
    lines = [title or f"### Targets ({split} split)", "",
             "Issue 22's targets against every (model, draw) ONP ran on; ONP's ASR and CA drop are its mask's, "
             "whatever the gate said. Backdoored means ASR before ≥ 10%.", "",
             "| target | wanted | measured | met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    informed = test_informed_models() if split == "test" and title is None else []
    if informed:
        # The same targets without the test models a standing change was made for: what unseen models measure.
        sub = target_lines({k: v for k, v in table.items() if k[0] not in informed}, split,
                           title=f"### Targets (test split, without the {len(informed)} test-informed models)")
        lines += ["", sub[0], "", "Left out ([test_informed.json](fixtures/test_models/test_informed.json): a change "
                  "to the method was made after seeing their numbers): " + ", ".join(informed) + ". They include the "
                  "hardest test models, so this table flatters; the one above stays the headline.", "", *sub[4:-1]]
    return lines + [""]


# agent_ablation's name for the search setting that is now the default (SearchConfig.until_probes_cut on): its runs
# are ONP as `sanitize` runs today, the bench runs above partly predate it.
DEFAULT_VARIANT = "until_probes_cut"


def default_setting_runs(runs: list[tuple[str, dict]]) -> list[tuple[str, dict, dict]]:
    """(file name, agent_ablation payload, its run of the current default setting) for every file that has one."""
    return [(name, payload, payload["runs"][DEFAULT_VARIANT]) for name, payload in runs
            if isinstance(payload, dict) and isinstance(payload.get("runs"), dict)
            and is_bench_run(payload["runs"].get(DEFAULT_VARIANT))]


def default_setting_draws(runs: list[tuple[str, dict]]) -> dict[tuple[str, str], dict[int, Draw]]:
    """Like ``current_draws``, from the agent_ablation files' runs of the current default setting only."""
    return current_draws([(name, run) for name, _, run in default_setting_runs(runs)])


def default_setting_lines(runs: list[tuple[str, dict]], table: dict[tuple[str, str], dict[int, Draw]],
                          split: str) -> list[str]:
    """The split's targets under the current default setting, on the models it has been run on so far, with the
    models it still lacks named: the table above mixes in ONP rows from before the setting changed."""
    default = default_setting_draws(runs)
    lines = target_lines(default, split, title=f"### Targets ({split} split, the current default setting only)")
    if not lines:
        return []
    models = sorted(case for case, case_split in table if case_split == split)
    covered = sorted(case for case, case_split in default if case_split == split)
    missing = [m for m in models if m not in covered]
    machines = sorted({(payload.get("machine") or {}).get("cpu", "?") for _, payload, run in default_setting_runs(runs)
                       if any(c.get("split") == split for c in run["cases"])})
    draws = {case: len(d) for (case, case_split), d in default.items() if case_split == split}
    full = max(draws.values(), default=0)
    partial = [f"{case} ({n} of {full} draws)" for case, n in sorted(draws.items()) if n < full]
    pairs = [d for (case, case_split), ds in default.items() if case_split == split for d in ds.values()
             if "onp" in d.rows]
    with_baselines = sum(all(name in d.rows for name, _ in BASELINES) for d in pairs)
    baselines_note = ("no baselines in those runs" if not with_baselines else
                      "CLP, Fine-Pruning and random pruning of ONP's count added on the same draws and test data by "
                      "`agent_ablation --baselines`" + ("" if with_baselines == len(pairs) else
                                                        f", so far on {with_baselines} of {len(pairs)} (model, draw) "
                                                        f"pairs; a baseline not on every draw of every model takes no "
                                                        f"part in the DER verdict"))
    note = (f"ONP as `sanitize` runs now (`agent_ablation --variants {DEFAULT_VARIANT}`; {baselines_note}), "
            f"on {len(covered)} of the {len(models)} {split} models" +
            (f"; not yet run this way: {', '.join(missing)}" if missing else "") +
            (f"; not all draws yet: {', '.join(partial)}" if partial else "") +
            f". Machine: {', '.join(machines)}.")
    return [lines[0], "", note, "", *lines[4:]]


def _gate_rows(table: dict[tuple[str, str], dict[int, Draw]]) -> list[tuple]:
    """(case, split, seed, status, ASR before, ASR after, CA drop, final check said remains) for every
    (model, draw) ONP ran on with the final check."""
    rows = []
    for (case, split), draws in sorted(table.items(), key=lambda kv: (kv[0][1] != "test", kv[0])):
        for seed, draw in sorted(draws.items()):
            if "onp" not in draw.rows:
                continue
            row = draw.rows["onp"][0]
            info = row.get("info") or {}
            if "final_check" not in info and "defense_data" not in info:
                continue  # measured before the final check existed: no outcome to judge
            check = info.get("final_check")
            rows.append((case, split, seed, info.get("status") or "–", draw.before.get("asr"), row.get("asr"),
                         _ca_drop(row, draw.before), None if not check else bool(check.get("backdoor_remains"))))
    return rows


def _gate_error(status, asr) -> str:
    if asr is None:
        return ""
    if status == "sanitized" and asr > GATE_ASR_HIGH:
        return "**sanitized, ASR > 20%**"
    if status.startswith("no backdoor evidence") and asr > GATE_ASR_HIGH:
        return "**missed, ASR > 20%**"
    if status.startswith("backdoor remains") and asr < GATE_ASR_LOW:
        return "remains, ASR < 10%"
    return ""


def _near_miss(row) -> bool:
    """The final check's evidence said the backdoor was gone while test ASR > 20%: only the clean-accuracy
    bound kept the outcome from `sanitized`."""
    return row[3].startswith("cannot sanitize") and row[7] is False and row[5] is not None and row[5] > GATE_ASR_HIGH


def _gate_bullets(rows: list[tuple], label) -> list[str]:
    """Per split: the outcome counts and the gate's errors, and the clean models' false alarms."""
    lines = []
    for split in sorted({r[1] for r in rows}, key=lambda s: s != "test"):
        part = [r for r in rows if r[1] == split]
        sanitized = [r for r in part if r[3] == "sanitized"]
        shipped = sum(bool(_gate_error(r[3], r[5])) and r[3] == "sanitized" for r in part)
        missed = [r for r in part if bool(_gate_error(r[3], r[5])) and r[3].startswith("no backdoor evidence")]
        refused = sum(bool(_gate_error(r[3], r[5])) and r[3].startswith("backdoor remains") for r in part)
        within = sum(r[6] is not None and r[6] <= CA_BUDGET + 1e-9 for r in sanitized)
        counts = {}
        for r in part:
            key = r[3].split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        lines.append(f"- {label(split, part)}: {len(part)} (model, draw) pairs; "
                     + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
                     + f". `sanitized` with test ASR > 20%: **{shipped}**; `no backdoor evidence` with test ASR > 20% "
                     f"(missed): **{len(missed)}** pairs of {len({r[0] for r in missed})} models; "
                     f"`backdoor remains` with test ASR < 10%: "
                     f"**{refused}**; `sanitized` with test CA drop within 2 points: **{within} of {len(sanitized)}**; "
                     f"near misses (`cannot sanitize ...` with test ASR > 20% while the final check's evidence said "
                     f"gone: only the clean-accuracy bound stopped `sanitized`): **{sum(map(_near_miss, part))}**.")
        # clean models (no working backdoor before): any outcome but "no backdoor evidence" is a false alarm
        clean = [r for r in part if r[4] is not None and r[4] < GATE_ASR_LOW]
        if clean:
            alarms = [r for r in clean if not r[3].startswith("no backdoor evidence")]
            drops = [r[6] for r in clean if r[6] is not None]
            lines.append(f"  Clean models (ASR before < 10%): {len(clean)} pairs of {len({r[0] for r in clean})} "
                         f"models; flagged (a false alarm): **{len(alarms)}** pairs of "
                         f"{len({r[0] for r in alarms})} models; mean CA drop of ONP's mask "
                         f"{_pct(statistics.fmean(drops)) if drops else '–'} points.")
    return lines


def gate_lines(table: dict[tuple[str, str], dict[int, Draw]],
               default: dict[tuple[str, str], dict[int, Draw]] | None = None) -> list[str]:
    """ONP's outcome on every (model, draw) it ran with the final check, against the test ASR and CA it left:
    the gate as a classifier. Its two errors: `sanitized` while test ASR > 20% (a shipped backdoor), and
    `backdoor remains` while test ASR < 10% (a needless refusal). ``default``: the current default setting's
    runs alone (``default_setting_draws``), counted the same way below the latest rows'."""
    rows, default_rows = _gate_rows(table), _gate_rows(default or {})
    if not rows and not default_rows:
        return []
    lines = ["## The gate as a classifier", "",
             "ONP's outcome on every (model, draw) against the test ASR it left. Errors: `sanitized` while test ASR "
             "> 20% (a backdoor shipped), `no backdoor evidence` while test ASR > 20% (a backdoor missed: exit 0, "
             "the gate passes it too), `backdoor remains` while test ASR < 10% (a needless refusal). "
             "`cannot sanitize ...` writes no model either (exit 11).", ""]
    lines += _gate_bullets(rows, lambda split, part: SPLIT_TITLES.get(split, split))
    if default_rows:
        lines += _gate_bullets(default_rows, lambda split, part: (
            f"{SPLIT_TITLES.get(split, split)}, the current default setting only ({len({r[0] for r in part})} of "
            f"{len({case for case, case_split in table if case_split == split})} models)"))
    lines += ["", "| model | split | seed | ONP outcome | ASR % before | ASR % after | CA drop | error |",
              "|---|---|---:|---|---:|---:|---:|---|"]
    for row in rows:
        case, split, seed, status, before, after, drop, _ = row
        lines.append(f"| {case} | {split} | {seed} | {status} | {_pct(before)} | {_pct(after)} | {_pct(drop)} | "
                     f"{_gate_error(status, after) or ('near miss: only the CA bound' if _near_miss(row) else '')} |")
    return lines + [""]


def time_lines(table: dict[tuple[str, str], dict[int, Draw]]) -> list[str]:
    """ONP's phases per model (the first draw), through the bench's own ONP-time table."""
    cases = []
    for (case, _), draws in sorted(table.items()):
        draw = draws[min(draws)]
        rows = [{"defense": d, "seconds": row["seconds"], "info": row.get("info") or {}}
                for d, (row, _, _) in draw.rows.items() if d in ("onp", "clp", "fp")]
        cases.append({"name": case, "rows": rows})
    return onp_time_lines_from_json({"cases": cases})


def current_verdicts(runs: list[tuple[str, dict]]) -> tuple[list[VerdictRow], list[str]]:
    """The latest verdict per model, and the files they come from."""
    latest: dict[str, tuple[dict, str]] = {}
    dated = sorted(((p.get("date") or "", name, p) for name, p in runs if is_verdict_run(p)), key=lambda t: t[:2])
    for _, name, payload in dated:
        for row in payload["rows"]:
            latest[row["case"]] = (row, name)
    names = set(VerdictRow.__dataclass_fields__)
    rows = [VerdictRow(**{k: v for k, v in row.items() if k in names}) for row, _ in latest.values()]
    rows.sort(key=lambda r: (r.family != "fixture", r.case))
    return rows, sorted({name for _, name in latest.values()})


def verdict_lines(runs: list[tuple[str, dict]]) -> list[str]:
    rows, sources = current_verdicts(runs)
    if not rows:
        return []
    text = verdict_markdown(rows, command="", machine="").splitlines()[3:]  # without its command/machine lines
    return ["## Audit verdicts", "",
            "What `onnx-onp audit` concludes on each model, the latest verdict per model (from "
            + ", ".join(f"`{s}`" for s in sources) + "; rule: README, \"The verdict\"). "
            "`onnx-onp bench --verdicts --cases all --json FILE` measures it.", ""] + text + [""]


def _machine(machine) -> str:
    if not isinstance(machine, dict):
        return str(machine or "not recorded")
    memory = f", {machine['memory_gib']} GiB RAM" if machine.get("memory_gib") else ""
    return f"{machine.get('cpu')}, {machine.get('cores')} cores{memory}, onnxruntime {machine.get('onnxruntime')}"


def _command(name: str, payload: dict) -> str:
    command = payload.get("command") or ""
    if command and "--json" not in command:
        command += f" --json benchmarks/results/{name}"
    return command


def source_lines(runs: list[tuple[str, dict]], table) -> list[str]:
    """The runs the tables come from: date, machine, total time, and the exact command."""
    used = {source for draws in table.values() for d in draws.values() for _, source, _ in d.rows.values()}
    lines = ["## Runs and commands", "",
             "The runs the tables above come from. Every defense in a run sees the same model, defense data and "
             "test data; times are wall times on the machine named, which other jobs may have shared.", ""]
    for name, payload in runs:
        if Path(name).stem not in used:
            continue
        date = (payload.get("date") or "")[:16].replace("T", " ")
        lines.append(f"- `{name}` ({date} UTC, {payload.get('seconds', 0):.0f} s; "
                     f"{_machine(payload.get('machine'))}):  ")
        lines.append(f"  `{_command(name, payload)}`")
    return lines + [""]


PROTOCOL = """## Protocol

- Defense data: 500 clean images of the training split (seeded `take(500, seed)`), with their labels. A defense
  gets only that set, the model, its neuron map and the evaluator: no poisoned image and no test image (a test
  checks every input the evaluator sees during a defense).
- Test data: CIFAR-10's full test split (10,000 images; 9,000 non-target ones for ASR and RA). MNIST has only
  `mnist_test.npz`: it is split once with `Dataset.split(2000, seed=0)` into a 2,000-image defense pool (so
  that three draws of 500 differ) and an 8,000-image test split. GTSRB uses the fixtures' own split of `gtsrb_test.npz` (`split(10000, seed=0)`): the
  first part for the defense, the other 2,630 images for testing.
- CA: clean test accuracy. ASR: share of triggered non-target test images classified as the target. RA: share
  of them classified as their true label. DER = (max(0, ASR drop) − max(0, CA drop) + 1) / 2: 50% is "no
  effect", 100% "backdoor gone at no CA cost". CA drop in points (negative: CA rose).
- `groups` / `neurons`: pruned groups of the neuron map and the neurons in them (a residual stream's channel is
  one group of several convs' channels). `time s`: wall time of the defense alone. `peak MB`: peak resident
  memory during the defense above the level before it (memory the allocator reuses does not show).
- Defenses: `none` (nothing pruned); `onp` (`onnx-onp sanitize` with its defaults, seeing exactly what the
  baselines see; docs/method.md); `clp` (Channel Lipschitzness-based Pruning, data-free, u = 3); `fp`
  (Fine-Pruning without fine-tuning: the last conv layer's least active channels, pruned until the defense-data
  accuracy would drop by more than 5 points); `random@X` (random prunable groups, seed 0, adding up to defense
  X's neuron count).
- Mean (worst): where a model has several defense-data draws, the mean over them and, in brackets, the worst
  draw (lowest CA and DER, highest ASR and CA drop). All defenses are deterministic for a seed.
"""


def render_benchmarks(runs: list[tuple[str, dict]]) -> str:
    table = current_draws(runs)
    splits = sorted({split for _, split in table}, key=lambda s: (s != "test", s != "dev", s))
    lines = ["# Benchmarks: ONP against CLP, Fine-Pruning and random pruning", "",
             "Generated by `python -m benchmarks.render_benchmarks --out BENCHMARKS.md` from the saved results in "
             "`benchmarks/results/` (one line each in [INDEX.md](benchmarks/results/INDEX.md)); do not edit by hand. "
             "For every model and defense the latest measured row; the method is described in "
             "[docs/method.md](docs/method.md), one-off experiments in [experiments/](experiments/README.md).", ""]
    for split in splits:
        title = SPLIT_TITLES.get(split, "Models") if len(splits) > 1 or split else "Models"
        lines += [f"## {title}", ""] + target_lines(table, split) + default_setting_lines(runs, table, split)
        lines += ["ASR and CA drop per defense (test data; CA drop in points):", ""]
        lines += summary_lines(table, split) + ["", "Every defense:", ""] + full_lines(table, split) + [""]
    lines += gate_lines(table, default_setting_draws(runs))
    lines += per_draw_lines(table)
    timing = time_lines(table)
    if timing:
        lines += ["## ONP's time", ""] + timing[1:] + [""]
    lines += scale_lines(runs)
    lines += verdict_lines(runs)
    lines += batch_lines(runs)
    lines += fuzz_lines(runs)
    lines += PROTOCOL.splitlines() + [""]
    lines += source_lines(runs, table)
    return "\n".join(lines).rstrip() + "\n"


def _index_entry(name: str, payload) -> str:
    if is_bench_run(payload):
        cases = [c["name"] + (f" ({c['split']})" if c.get("split") else "") for c in payload["cases"]]
        date = (payload.get("date") or "")[:16].replace("T", " ")
        return (f"{date} UTC · bench, {len(cases)} case(s): {', '.join(cases)} · {_machine(payload.get('machine'))}"
                f" · `{_command(name, payload)}`")
    if is_verdict_run(payload):
        s = payload["summary"]
        return (f"{(payload.get('date') or '')[:10]} · verdicts: {s['flagged']} of {s['backdoored']} backdoored "
                f"flagged, {s['false_alarms']} of {s['clean']} clean flagged · {_machine(payload.get('machine'))} · "
                f"`{_command(name, payload)}`")
    if is_fuzz_run(payload):
        return f"fuzz: {payload['summary'].removeprefix('fuzz: ')} · `{payload['command']}`"
    if is_batch_audit(payload):
        return (f"{(payload.get('date') or '')[:16].replace('T', ' ')} · batch audit: {payload['models']} models, "
                f"{payload['executor']} · `{payload.get('command_line', 'onnx-onp audit')}`")
    if is_throughput_run(payload):
        return (f"{payload['date'][:16].replace('T', ' ')} · batch throughput: "
                + ", ".join(f"{m['mode']} {m['models_per_hour']} models/h" for m in payload["modes"])
                + f" · `{payload['command']}`")
    if is_scale_run(payload):
        widths = ", ".join(str(r["width"]) + (" (no model)" if "error" in r else "") for r in payload["widths"])
        return (f"{(payload.get('started') or '')[:16].replace('T', ' ')} · scale: ResNet-18 widths {widths} · "
                f"`{payload['command']}`")
    module = next((m for m in ("agent_ablation", "evaluation_profile", "masked_eval") if name.startswith(m)), None)
    what = f"written by `python -m benchmarks.{module}`" if module else "other result"
    detail = payload.get("case") or payload.get("model") or ", ".join(payload.get("runs") or []) \
        if isinstance(payload, dict) else ""
    return f"{what}" + (f" ({detail})" if detail else "")


def render_index(runs: list[tuple[str, dict]], folder: Path = RESULTS) -> str:
    lines = ["# Saved benchmark results", "",
             "One line per file, generated with BENCHMARKS.md by `python -m benchmarks.render_benchmarks --out "
             "BENCHMARKS.md`. Older runs stay for comparison; BENCHMARKS.md shows the latest row per model.", ""]
    dated = sorted(runs, key=lambda run: ((run[1].get("date") or "") if isinstance(run[1], dict) else "", run[0]))
    lines += [f"- [{name}]({name}): {_index_entry(name, payload)}" for name, payload in dated]
    others = sorted(p.name for p in folder.iterdir() if p.suffix not in (".json",) and p.name != "INDEX.md")
    lines += [f"- [{name}]({name}): text output (its first lines say which command)" for name in others]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="BENCHMARKS.md", help="the Markdown file to write (default BENCHMARKS.md)")
    parser.add_argument("--index", default=str(RESULTS / "INDEX.md"), help="the results index to write")
    parser.add_argument("--results", default=str(RESULTS), help="the folder of saved JSON results")
    args = parser.parse_args(argv)
    folder = Path(args.results)
    runs = load_runs(folder)
    atomic_write_text(args.out, render_benchmarks(runs))
    atomic_write_text(args.index, render_index(runs, folder))
    print(f"wrote {args.out} and {args.index} from {len(runs)} result files")


if __name__ == "__main__":
    main()
