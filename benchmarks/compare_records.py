"""ONP's outcome per (model, draw) in two saved bench results: what a code change did to the same models.

    python -m benchmarks.compare_records OLD.json NEW.json
    python -m benchmarks.compare_records git:REV:benchmarks/results/test_NAME.json benchmarks/results/test_NAME.json

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
    parser.add_argument("old")
    parser.add_argument("new")
    args = parser.parse_args(argv)
    old, new = onp_pairs(load(args.old)), onp_pairs(load(args.new))
    print(f"# python -m benchmarks.compare_records {args.old} {args.new}")
    print("| model | draw | outcome (old → new) | detector (old → new) | test ASR % | CA drop | changed |")
    print("|---|---:|---|---|---:|---:|---|")
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            print(f"| {key[0]} | {key[1]} | only in {'new' if a is None else 'old'} ||||")
            continue
        changed = a["status"] != b["status"] or abs(a["asr"] - b["asr"]) > 1e-6
        print(f"| {key[0]} | {key[1]} | {a['status'] or '–'} → {b['status'] or '–'} | {a['detector'] or '–'} → {b['detector'] or '–'} | "
              f"{a['asr']:.2f} → {b['asr']:.2f} | {a['drop']:.2f} → {b['drop']:.2f} | {'yes' if changed else ''} |")


if __name__ == "__main__":
    main()
