"""Which candidate source won ONP's decision, round by round, in saved bench results.

    python -m benchmarks.decision_sources benchmarks/results/test_*.json

Each pruning round's decision takes the best mask within the budget among the GNN policy's samples ("agent
sample"), its ranking ("policy ranking"), and the signal rankings' masks ("signal mask", "signal walk"); a
round where none qualified has no source. How often the agent's own candidates win is one measure of what the
learned policy adds (benchmarks/agent_ablation.py measures the other: ONP with the untrained policy).
"""

from __future__ import annotations

import argparse
import collections
import json

AGENT = ("agent sample", "policy ranking")


def count(paths: list[str]) -> tuple[collections.Counter, int]:
    sources, runs = collections.Counter(), 0
    for path in paths:
        with open(path) as f:
            payload = json.load(f)
        for case in payload.get("cases", []):
            for row in case.get("rows", []):
                if row.get("defense") != "onp":
                    continue
                runs += 1
                sources.update(str(r.get("chosen_from") or "none qualified") for r in row["info"].get("rounds", []))
    return sources, runs


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    sources, runs = count(args.paths)
    rounds = sum(sources.values())
    decided = rounds - sources["none qualified"]
    print(f"{runs} ONP runs, {rounds} pruning rounds, {decided} with a mask chosen")
    for source, n in sources.most_common():
        print(f"  {source}: {n}")
    agent = sum(sources[s] for s in AGENT)
    print(f"the agent's candidates won {agent} of {decided} decided rounds ({100 * agent / max(decided, 1):.0f}%)")


if __name__ == "__main__":
    main()
