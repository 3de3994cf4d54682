"""Should ``SearchConfig.until_probes_cut`` be the default? Each of its runs beside the default's on the same
(model, defense draw) and the same CPU, and the gate's counts for both.

    python -m benchmarks.until_probes_cut_check [--split dev]

Reads every ``benchmarks/results/agent_ablation*.json`` run of the ``until_probes_cut`` variant. The default's
row for the same (model, draw) comes from:

1. the run itself, when no round is marked ``went_on_as_probes_not_cut``: the two settings differ only in
   whether the search stops after such a round, so without one the run *is* the default's (same seed, same
   machine; the mark exists since the report's schema 1.18);
2. otherwise a ``graphconv`` (default) run of the agent ablation, or a bench record (``dev_``, ``real_``, ``test_``
   files), on the same CPU: results differ across CPUs (docs/method.md, Limits), so other CPUs' rows are not used.

A pair with neither is listed as "default not measured" and left out of the counts.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BACKDOORED = 0.10  # ASR before at or above it: a backdoored model (BENCHMARKS.md's rule)
GATE_MISS = 0.20  # "sanitized" or "no backdoor evidence" while the test ASR after is above it: the gate failed


def _onp_rows(payload: dict, source: str) -> list[dict]:
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
        rows.append({"case": case["name"], "draw": case.get("draw", 0), "split": case.get("split", "dev"),
                     "backdoored": case["before"]["asr"] >= BACKDOORED, "status": row.get("status") or "",
                     "asr": row["asr"], "drop": case["before"]["ca"] - row["ca"], "rounds": len(rounds),
                     # None: a run from before the mark existed, which cannot tell
                     "went_on": any(marks) if all("probes_cut" in r for r in rounds) else None,
                     "source": source})
    return rows


def load(results: Path = RESULTS) -> tuple[list[dict], dict]:
    """The until_probes_cut rows, and the default's rows keyed by (cpu, case, draw)."""
    experiment, default = [], {}
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
        if name.startswith("agent_ablation") and isinstance(payload.get("runs"), dict):
            for variant, run in payload["runs"].items():
                for row in _onp_rows(run, f"{name} ({variant})"):
                    row["cpu"] = cpu
                    if variant == "until_probes_cut":
                        experiment.append(row)
                    elif variant == "graphconv":
                        default.setdefault((cpu, row["case"], row["draw"]), row)
        elif name.startswith(("dev_", "real_", "test_")) and isinstance(payload.get("cases"), list):
            for row in _onp_rows(payload, name):
                row["cpu"] = cpu
                default.setdefault((cpu, row["case"], row["draw"]), row)
    return experiment, default


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
            # The claim "the same as the default's" checked where a default row exists on this CPU too
            record = default.get((row["cpu"], row["case"], row["draw"])) if row["cpu"] else None
            agrees = "" if record is None else (
                f"; {record['source']} agrees" if abs(record["asr"] - row["asr"]) < 1e-9
                and abs(record["drop"] - row["drop"]) < 1e-9 else f"; **{record['source']} disagrees**")
            out.append((row, {**row, "source": f"the same run (no round went on past the default's stop){agrees}"}))
        else:
            out.append((row, default.get((row["cpu"], row["case"], row["draw"])) if row["cpu"] else None))
    return out


def lines(split: str | None, results: Path = RESULTS) -> list[str]:
    measured = pairs(split, results)
    out = [f"# python -m benchmarks.until_probes_cut_check{' --split ' + split if split else ''}", "",
           "| model | draw | default: outcome | ASR % | CA drop | rounds | until_probes_cut: outcome | ASR % | "
           "CA drop | rounds | default's row from |", "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|"]
    for new, old in measured:
        if old is None:
            out.append(f"| {new['case']} | {new['draw']} | default not measured on {new['cpu']} ||||| "
                       f"{_outcome(new)} | {100 * new['asr']:.2f} | {100 * new['drop']:.2f} | {new['rounds']} | – |")
            continue
        out.append(f"| {new['case']} | {new['draw']} | {_outcome(old)} | {100 * old['asr']:.2f} | "
                   f"{100 * old['drop']:.2f} | {old['rounds']} | {_outcome(new)} | {100 * new['asr']:.2f} | "
                   f"{100 * new['drop']:.2f} | {new['rounds']} | {old['source']} |")
    both = [(new, old) for new, old in measured if old is not None]
    changed = [(new, old) for new, old in both if new["went_on"] is not False]
    out += ["", f"{len(both)} (model, draw) pairs with both rows; {len(changed)} where until_probes_cut went on past "
                f"the default's stop (or the run predates the mark); {len(measured) - len(both)} without the "
                f"default's row.", "",
            "| | default | until_probes_cut |", "|---|---:|---:|"]
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
