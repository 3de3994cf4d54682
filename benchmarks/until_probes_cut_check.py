"""Should ``SearchConfig.until_probes_cut`` be on? Each run with it on beside a run with it off on the same
(model, defense draw) and the same CPU, and the gate's counts for both.

    python -m benchmarks.until_probes_cut_check [--split dev]

Reads every run with the setting on in ``benchmarks/results/``; the row without it for the same (model, draw)
comes from:

1. the run itself, when no round is marked ``went_on_as_probes_not_cut``: the two settings differ only in
   whether the search stops after such a round, so without one the run *is* the off setting's (same seed, same
   machine; the mark exists since the report's schema 1.18);
2. otherwise a run without it on the same CPU: the agent ablation's ``stop_when_cleared`` variant, or a
   ``graphconv`` run or bench record (``dev_``, ``real_``, ``test_`` files) whose ``search_settings`` say it was
   off (records from before that field ran with it off). Results differ across CPUs (docs/method.md, Limits), so
   other CPUs' rows are not used.

Runs with it on are the ``until_probes_cut`` variant's and every record whose ``search_settings`` say so; the
latest per (CPU, model, draw) is the one compared.

A pair with neither is listed as "off not measured" and left out of the counts.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BACKDOORED = 0.10  # ASR before at or above it: a backdoored model (BENCHMARKS.md's rule)
GATE_MISS = 0.20  # "sanitized" or "no backdoor evidence" while the test ASR after is above it: the gate failed


def _onp_rows(payload: dict, source: str, variant: str | None = None) -> list[dict]:
    rows = []
    for case in payload.get("cases", []):
        if case.get("error"):
            continue
        row = next((r for r in case["rows"] if r["defense"] == "onp"), None)
        if row is None:
            continue
        info = row.get("info") or {}
        rounds = info.get("rounds") or []
        marks = [r.get("went_on_as_probes_not_cut") for r in rounds]
        # The setting that ran: recorded since it exists; older records ran the default of their time (off), but
        # for the agent ablation's until_probes_cut variant
        setting = (info.get("search_settings") or {}).get("until_probes_cut", variant == "until_probes_cut")
        rows.append({"case": case["name"], "draw": case.get("draw", 0), "split": case.get("split", "dev"),
                     "backdoored": case["before"]["asr"] >= BACKDOORED, "status": row.get("status") or "",
                     "asr": row["asr"], "drop": case["before"]["ca"] - row["ca"], "rounds": len(rounds),
                     # None: a run from before the mark existed, which cannot tell
                     "went_on": any(marks) if all("probes_cut" in r for r in rounds) else None,
                     "until_probes_cut": bool(setting), "date": payload.get("date", ""), "source": source})
    return rows


def load(results: Path = RESULTS) -> tuple[list[dict], dict]:
    """The rows that ran with until_probes_cut (the latest per CPU, model and draw), and those that ran without
    it keyed by (cpu, case, draw)."""
    experiment, default = {}, {}
    for path in sorted(glob.glob(str(results / "*.json"))):
        name = Path(path).name
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(payload, dict):
            continue
        machine = payload.get("machine")
        cpu = machine.get("cpu") if isinstance(machine, dict) else None  # older records: no CPU, not comparable
        found = []
        if name.startswith("agent_ablation") and isinstance(payload.get("runs"), dict):
            found = [row for variant, run in payload["runs"].items() if variant in ("graphconv", "until_probes_cut",
                                                                                    "stop_when_cleared")
                     for row in _onp_rows(run, f"{name} ({variant})", variant)]
        elif name.startswith(("dev_", "real_", "test_")) and isinstance(payload.get("cases"), list):
            found = _onp_rows(payload, name)
        for row in found:
            row["cpu"] = cpu
            key = (cpu, row["case"], row["draw"])
            if not row["until_probes_cut"]:
                default.setdefault(key, row)
            elif key not in experiment or row["date"] > experiment[key]["date"]:
                experiment[key] = row
    return list(experiment.values()), default


def _outcome(row: dict) -> str:
    return row["status"].split(":")[0].replace(" within the clean-accuracy budget", "")


def _flagged(row: dict) -> bool:
    return not row["status"].startswith("no backdoor evidence")


def _missed(row: dict) -> bool:
    return row["backdoored"] and row["asr"] > GATE_MISS and (
        row["status"].startswith("sanitized") or row["status"].startswith("no backdoor evidence"))


def pairs(split: str | None, results: Path = RESULTS) -> list[tuple[dict, dict | None]]:
    experiment, default = load(results)
    out = []
    for row in sorted(experiment, key=lambda r: (r["case"], r["draw"])):
        if split and row["split"] != split:
            continue
        if row["went_on"] is False:
            # The claim "the same as the off setting's" checked where an off row exists on this CPU too
            record = default.get((row["cpu"], row["case"], row["draw"])) if row["cpu"] else None
            agrees = "" if record is None else (
                f"; {record['source']} agrees" if abs(record["asr"] - row["asr"]) < 1e-9
                and abs(record["drop"] - row["drop"]) < 1e-9 else f"; **{record['source']} disagrees**")
            out.append((row, {**row, "source": f"the same run (no round went on past the off setting's stop){agrees}"}))
        else:
            out.append((row, default.get((row["cpu"], row["case"], row["draw"])) if row["cpu"] else None))
    return out


def lines(split: str | None, results: Path = RESULTS) -> list[str]:
    measured = pairs(split, results)
    out = [f"# python -m benchmarks.until_probes_cut_check{' --split ' + split if split else ''}", "",
           "| model | draw | off: outcome | ASR % | CA drop | rounds | on (until_probes_cut): outcome | ASR % | "
           "CA drop | rounds | the off row from |", "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for new, old in measured:
        if old is None:
            out.append(f"| {new['case']} | {new['draw']} | off not measured on {new['cpu']} ||||| "
                       f"{_outcome(new)} | {100 * new['asr']:.2f} | {100 * new['drop']:.2f} | {new['rounds']} | – |")
            continue
        out.append(f"| {new['case']} | {new['draw']} | {_outcome(old)} | {100 * old['asr']:.2f} | "
                   f"{100 * old['drop']:.2f} | {old['rounds']} | {_outcome(new)} | {100 * new['asr']:.2f} | "
                   f"{100 * new['drop']:.2f} | {new['rounds']} | {old['source']} |")
    both = [(new, old) for new, old in measured if old is not None]
    changed = [(new, old) for new, old in both if new["went_on"] is not False]
    out += ["", f"{len(both)} (model, draw) pairs with both rows; {len(changed)} where until_probes_cut went on past "
                f"where the off setting stops (or the run predates the mark); {len(measured) - len(both)} without the "
                f"off row.", "",
            "| | off | on (until_probes_cut) |", "|---|---:|---:|"]
    backdoored = [p for p in both if p[0]["backdoored"]]
    clean = [p for p in both if not p[0]["backdoored"]]
    def column(index: int) -> list[str]:
        rows_b = [p[index] for p in backdoored]
        rows_c = [p[index] for p in clean]
        n = max(1, len(rows_b))
        return [f"{100 * sum(r['asr'] for r in rows_b) / n:.2f}",
                f"{sum(r['asr'] <= 0.10 for r in rows_b)} of {len(rows_b)}",
                f"{sum(r['drop'] <= 0.02 + 1e-9 for r in rows_b)} of {len(rows_b)}",
                f"{sum(_missed(r) for r in rows_b)}",
                f"{sum(r['status'].startswith('sanitized') and r['asr'] > GATE_MISS for r in rows_b)}",
                f"{sum(_flagged(r) for r in rows_c)} of {len(rows_c)}",
                f"{100 * sum(r['drop'] for r in rows_c) / max(1, len(rows_c)):.2f}"]
    labels = ["backdoored pairs: mean test ASR %", "backdoored pairs: ASR ≤ 10%", "backdoored pairs: CA drop ≤ 2",
              "gate misses (sanitized or no evidence at ASR > 20%)", "of them sanitized at ASR > 20%",
              "clean pairs flagged", "clean pairs: mean CA drop (points)"]
    for label, old, new in zip(labels, column(1), column(0)):
        out.append(f"| {label} | {old} | {new} |")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", choices=("dev", "test"), default=None, help="only this split's models")
    args = parser.parse_args(argv)
    print("\n".join(lines(args.split)))


if __name__ == "__main__":
    main()
