"""ONP's outcome per (model, draw) in two saved bench results: what a code change did to the same models.

    python -m benchmarks.compare_records OLD.json NEW.json
    python -m benchmarks.compare_records git:REV:benchmarks/results/test_NAME.json benchmarks/results/test_NAME.json
    python -m benchmarks.compare_records --finals   # every PREFIX_final_NAME.json against PREFIX_NAME.json

``--finals``: the reruns of ONP with the final code (``PREFIX=test_final bash benchmarks/test_split.sh``) against
each model's first record, in one table, with counts of changed masks and changed outcomes.

A ``git:REV:PATH`` argument reads the file as it was at commit REV (``git show``), so a record a later run
overwrote can still be compared. Printed per pair: outcome, detector, test ASR and CA drop, old then new.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from onnx_onp.bench.report import onp_rows_from_json

REPO = Path(__file__).resolve().parents[1]


def load(where: str) -> dict:
    if where.startswith("git:"):
        rev, path = where[4:].split(":", 1)
        return json.loads(subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True,
                                         capture_output=True, text=True).stdout)
    return json.loads(Path(where).read_text())


def onp_pairs(result: dict) -> dict[tuple[str, int], dict]:
    return {(row["case"], row["draw"]): row for row in onp_rows_from_json(result) if "error" not in row}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("old", nargs="?")
    parser.add_argument("new", nargs="?")
    parser.add_argument("--finals", action="store_true", help="every *_final_NAME.json against its first record")
    args = parser.parse_args(argv)
    if args.finals == (args.old is not None):
        parser.error("give OLD and NEW, or --finals")
    if args.finals:
        results = REPO / "benchmarks" / "results"
        pairs = [(results / f.name.replace("_final_", "_", 1), f) for f in sorted(results.glob("*_final_*.json"))]
        print("# python -m benchmarks.compare_records --finals")
    else:
        pairs = [(args.old, args.new)]
        print(f"# python -m benchmarks.compare_records {args.old} {args.new}")
    print("| model | draw | outcome (old → new) | detector (old → new) | test ASR % | CA drop | changed |")
    print("|---|---:|---|---|---:|---:|---|")
    counts = {"pairs": 0, "mask": 0, "outcome": 0}
    for old_path, new_path in pairs:
        old, new = onp_pairs(load(str(old_path))), onp_pairs(load(str(new_path)))
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key), new.get(key)
            if a is None or b is None:
                print(f"| {key[0]} | {key[1]} | only in {'new' if a is None else 'old'} ||||")
                continue
            # the mask's test ASR and CA drop: equal numbers mean the same pruning (the evaluation is deterministic)
            mask_changed = abs(a["asr"] - b["asr"]) > 1e-6 or abs(a["drop"] - b["drop"]) > 1e-6
            counts["pairs"] += 1
            counts["mask"] += mask_changed
            counts["outcome"] += a["status"] != b["status"]
            changed = ", ".join(w for w, c in (("outcome", a["status"] != b["status"]), ("mask", mask_changed)) if c)
            print(f"| {key[0]} | {key[1]} | {a['status'] or '–'} → {b['status'] or '–'} | {a['detector'] or '–'} → "
                  f"{b['detector'] or '–'} | {a['asr']:.2f} → {b['asr']:.2f} | {a['drop']:.2f} → {b['drop']:.2f} | "
                  f"{changed} |")
    print(f"\n{counts['pairs']} (model, draw) pairs: {counts['outcome']} outcomes changed, {counts['mask']} masks "
          "changed (test ASR or CA drop differ)")


if __name__ == "__main__":
    main()
