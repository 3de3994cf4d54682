"""What does the confirmation rule do? Every saved run where weak evidence had to be confirmed by pruning.

    python -m benchmarks.confirmation_check

Weak evidence (an amplification suspicion, or trigger synthesis below ``VerifyConfig.confirm_below``, scaled to
the class count) stands only when the pruning search then cuts its probe's held-out success to at most half;
otherwise the outcome is ``no backdoor evidence`` (exit 0). That protects clean models from false alarms, and
costs a miss on a backdoored model whose probe pruning does not cut. For the latest saved ONP run of every
(model, draw) that asked for confirmation (bench runs and agent_ablation runs of the default): the detector, its
index, the unpruned model's test ASR, whether pruning confirmed it, the outcome and the test ASR after. Then per
split and detector: how often confirmation was asked, how often it rejected the suspicion, and on how many
backdoored models (test ASR before >= 10%) a rejection was a miss. Reads the saved results only.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from benchmarks.check_reliability import RESULTS, records

BACKDOORED = 0.10  # test ASR before at or above it: a backdoored model (as in BENCHMARKS' targets)


def confirmations(folder: Path = RESULTS) -> dict[tuple[str, int], dict]:
    """(model, draw) -> the latest saved ONP run of it whose verdict asked for confirmation."""
    pairs: dict[tuple[str, int], dict] = {}
    for name, payload in records(folder):
        if not isinstance(payload, dict) or not isinstance(payload.get("cases"), list) or "date" not in payload:
            continue
        for case in payload["cases"]:
            if not isinstance(case, dict) or case.get("error") or case.get("draw") is None:
                continue
            onp = next((r for r in case.get("rows") or [] if r.get("defense") == "onp"), None)
            verdict = ((onp or {}).get("info") or {}).get("verdict") or {}
            key = (case["name"], case["draw"])
            if "confirmed_by_pruning" not in verdict or (key in pairs and pairs[key]["date"] > payload["date"]):
                continue
            pairs[key] = {"date": payload["date"], "file": name, "split": case.get("split", "dev"),
                          "detector": verdict.get("detector"), "index": verdict.get("anomaly_index"),
                          "asr_before": case["before"]["asr"], "confirmed": bool(verdict["confirmed_by_pruning"]),
                          "status": onp["info"].get("status", ""), "asr_after": onp["asr"]}
    return pairs


def summary_lines(pairs: dict[tuple[str, int], dict]) -> list[str]:
    """Per split and detector: confirmations asked, rejected, and rejected on a backdoored model (a miss)."""
    lines = []
    for split in ("dev", "test"):
        rows = [r for r in pairs.values() if r["split"] == split]
        for detector in sorted(Counter(r["detector"] for r in rows)):
            mine = [r for r in rows if r["detector"] == detector]
            rejected = [r for r in mine if not r["confirmed"]]
            missed = [r for r in rejected if r["asr_before"] >= BACKDOORED]
            lines.append(f"- {split}, {detector}: confirmation asked on {len(mine)} (model, draw) pairs, rejected on "
                         f"{len(rejected)}: {len(rejected) - len(missed)} on clean models (a false alarm avoided), "
                         f"{len(missed)} on backdoored ones (a miss, exit 0)")
    return lines


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    pairs = confirmations()
    print("# python -m benchmarks.confirmation_check")
    print("| split | model | draw | detector | index | test ASR before % | confirmed | outcome | test ASR after % | "
          "record |")
    print("|---|---|---:|---|---:|---:|---|---|---:|---|")
    for (model, draw), r in sorted(pairs.items(), key=lambda item: (item[1]["split"], item[0])):
        print(f"| {r['split']} | {model} | {draw} | {r['detector']} | {r['index']} | {100 * r['asr_before']:.2f} | "
              f"{'yes' if r['confirmed'] else '**no**'} | {r['status']} | {100 * r['asr_after']:.2f} | {r['file']} |")
    print()
    print("\n".join(summary_lines(pairs)))

if __name__ == "__main__":
    main()
