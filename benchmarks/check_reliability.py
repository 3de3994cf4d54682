"""How well does the final check's clean-accuracy bound (100 unseen defense images) predict the test drop?

    python -m benchmarks.check_reliability            # every saved bench record, latest per (model, draw)
    python -m benchmarks.check_reliability --split test

For every (model, draw) whose ONP run reached the final check: the check set's broken and fixed images, its
accuracy drop and one-sided upper bound, and the drop on 2,000 test images of the same mask. Then per split:
how often the bound passed while the test drop was over the budget (a false pass), how often it failed while
the test drop was within it (a needless refusal), and the correlation of the two drops. Reads the saved
results only; the bound is the one each run computed (``VerifyConfig.ca_confidence``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.render_benchmarks import DEFAULT_VARIANT  # agent_ablation's runs of the default count too
from onnx_onp.bench.report import onp_rows_from_json
from onnx_onp.verify import images_needed

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = 2.0  # points: sanitize's default --max-ca-drop, the target




def records(folder: Path):
    """(file name, bench payload) of every saved bench run, and of every agent_ablation run of the default."""
    for path in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and isinstance(payload.get("runs"), dict):
            payload = payload["runs"].get(DEFAULT_VARIANT)
        yield path.name, payload


def checked_pairs(folder: Path = RESULTS) -> dict[tuple[str, int], dict]:
    """(model, draw) -> the latest saved ONP run of it that reached the final check."""
    pairs: dict[tuple[str, int], dict] = {}
    for name, payload in records(folder):
        if not isinstance(payload, dict) or not isinstance(payload.get("cases"), list) or "date" not in payload:
            continue
        # older records hold cases without a draw or without ONP: nothing to compare there
        cases = [c for c in payload["cases"] if isinstance(c, dict) and c.get("draw") is not None
                 and any(r.get("defense") == "onp" for r in c.get("rows", []))]
        for row in onp_rows_from_json({"cases": cases}):
            ca = (row.get("final_check") or {}).get("clean_accuracy")
            key = (row["case"], row["draw"])
            if not ca or (key in pairs and pairs[key]["date"] > payload["date"]):
                continue
            # The outcome names it only where the bound alone stopped `sanitized` (the backdoor evidence said gone).
            needed = None if ca["within_budget"] or row["final_check"].get("backdoor_remains") else images_needed(
                ca["broken"], ca["fixed"], ca["images"], budget=ca["budget"], confidence=ca["confidence"])
            pairs[key] = {"date": payload["date"], "file": name, "split": row["split"], "status": row["status"],
                          "images": ca["images"], "broken": ca["broken"], "fixed": ca["fixed"],
                          "check_drop": 100 * ca["drop"], "bound": 100 * ca["upper_bound"],
                          "budget": 100 * ca["budget"], "test_drop": row["drop"], "test_asr": row["asr"],
                          "needed": needed}
    return pairs


def summary(rows: list[dict]) -> str:
    check = np.array([r["check_drop"] for r in rows])
    test = np.array([r["test_drop"] for r in rows])
    passed = np.array([r["bound"] <= r["budget"] + 1e-9 for r in rows])
    within = np.array([r["test_drop"] <= r["budget"] + 1e-9 for r in rows])
    corr = float(np.corrcoef(check, test)[0, 1]) if len(rows) > 2 else float("nan")
    hinted = [r for r in rows if r["needed"] is not None]
    return (f"{len(rows)} pairs: bound within budget on {int(passed.sum())}, of them test drop over budget on "
            f"{int((passed & ~within).sum())} (false pass); bound over budget on {int((~passed).sum())}, of them "
            f"test drop within budget on {int((~passed & within).sum())} (needless refusal); correlation of check "
            f"and test drop {corr:.2f}; mean |check - test| {np.abs(check - test).mean():.2f} points. "
            f"The outcome names the check images needed (drop seen under the budget, bound over it, no backdoor "
            f"evidence) on "
            f"{len(hinted)}: test drop within budget on {sum(r['test_drop'] <= r['budget'] + 1e-9 for r in hinted)}, "
            f"test ASR over 20% on {sum(r['test_asr'] > 20 for r in hinted)}, over 10% on "
            f"{sum(r['test_asr'] > 10 for r in hinted)}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", choices=("dev", "test"), help="only this split (default: both)")
    args = parser.parse_args(argv)
    pairs = checked_pairs()
    print("# python -m benchmarks.check_reliability" + (f" --split {args.split}" if args.split else ""))
    print("| split | model | draw | outcome | check images | broken | fixed | check drop | upper bound | images needed "
          "| test drop | test ASR % | record |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for (name, draw), r in sorted(pairs.items(), key=lambda item: (item[1]["split"], item[0])):
        if args.split and r["split"] != args.split:
            continue
        print(f"| {r['split']} | {name} | {draw} | {r['status']} | {r['images']} | {r['broken']} | {r['fixed']} | "
              f"{r['check_drop']:.2f} | {r['bound']:.2f} | {r['needed'] or '–'} | {r['test_drop']:.2f} | "
              f"{r['test_asr']:.2f} | {r['file']} |")
    print()
    for split in ("dev", "test"):
        rows = [r for r in pairs.values() if r["split"] == split]
        if rows and args.split in (None, split):
            print(f"- {split}: {summary(rows)}")


if __name__ == "__main__":
    main()
