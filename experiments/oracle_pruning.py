"""How far can pruning alone go on a model, if the pruner knew the real trigger? A ceiling for ONP, measured with
the attack's real trigger, which sanitize never sees.

    python -m experiments.oracle_pruning verazuo_badnet_cifar10 --draw 0

On one draw of the defense data (500 clean training images, the bench's draw), greedy pruning with the real
trigger: every prunable group is pruned alone first; the groups that cut the trigger's success most become the
candidates; then, step by step, the candidate whose addition gives the lowest ASR on the defense images while the
defense images' accuracy stays within the budget is pruned (a step may leave the ASR where it was: redundant
carriers only fall together). Each step's mask is then measured on the test images, which chose nothing.

If even this oracle cannot reach ASR <= 10% within the CA budget on the test images, no pruning method that sees
only clean data will: the honest outcome for that model is `backdoor remains`. If the oracle does reach it, the
gap is ONP's (its probe or its search), not pruning's.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from onnx_onp.bench import DataSplits, open_case
from onnx_onp.metrics import prepare, prepare_triggered


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("--draw", type=int, default=0, help="the defense draw's seed (the bench's 0, 1, 2)")
    parser.add_argument("--defense-size", type=int, default=500)
    parser.add_argument("--test-limit", type=int, default=2000, help="test images (the bench's seed-0 subset)")
    parser.add_argument("--budget", type=float, default=2.0, help="CA drop allowed on the defense images, points")
    parser.add_argument("--candidates", type=int, default=48, help="groups kept after the one-at-a-time pass")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", help="append the trajectory as one JSON line")
    args = parser.parse_args(argv)

    case, spec, lm, nmap, evaluator = open_case(args.case)
    defense_raw, test_raw = DataSplits().defense_and_test(case.dataset, args.defense_size, args.draw,
                                                          args.test_limit, test_seed=0)

    def sets(raw, what):
        clean = prepare(lm, raw, spec.preprocess, what=what)
        triggered = prepare_triggered(lm, raw, spec, spec.preprocess)
        keep = triggered.y != spec.target
        # scored against the target label, a triggered image's "accuracy" is the attack's success
        return clean, triggered.x[keep], np.full(int(keep.sum()), spec.target, dtype=np.int64)

    (dclean, dtx, dty), (tclean, ttx, tty) = sets(defense_raw, "defense"), sets(test_raw, "test")

    def measure(masks, clean, tx, ty):
        asr = [s.accuracy for s in evaluator.score_many(tx, ty, masks)]
        ca = [s.accuracy for s in evaluator.score_many(clean.x, clean.y, masks)]
        return np.array(asr), np.array(ca)

    empty = nmap.empty_mask()
    (asr0,), (ca0,) = measure(empty[None], dclean, dtx, dty)
    (tasr0,), (tca0,) = measure(empty[None], tclean, ttx, tty)
    prunable = np.flatnonzero([g.prunable for g in nmap.groups])
    singles = np.zeros((len(prunable), len(empty)), dtype=bool)
    singles[np.arange(len(prunable)), prunable] = True
    asr1, ca1 = measure(singles, dclean, dtx, dty)
    order = np.lexsort((ca0 - ca1, asr1))  # lowest ASR first, then the cheapest
    candidates = [int(prunable[i]) for i in order[:args.candidates]]
    print(f"{case.name} draw {args.draw}: {len(prunable)} prunable groups; unpruned defense ASR {100 * asr0:.2f}% "
          f"CA {100 * ca0:.2f}%, test ASR {100 * tasr0:.2f}% CA {100 * tca0:.2f}%; best single group: ASR "
          f"{100 * asr1[order[0]]:.2f}% at {100 * (ca0 - ca1[order[0]]):.2f} CA points (defense)", flush=True)

    mask, trajectory = empty.copy(), []
    print("| step | groups | defense ASR % | defense CA drop | test ASR % | test CA drop |")
    print("|---:|---:|---:|---:|---:|---:|")
    for step in range(1, args.steps + 1):
        left = [c for c in candidates if not mask[c]]
        if not left:
            break
        trial = np.repeat(mask[None], len(left), axis=0)
        trial[np.arange(len(left)), left] = True
        asr, ca = measure(trial, dclean, dtx, dty)
        feasible = 100 * (ca0 - ca) <= args.budget + 1e-9
        if not feasible.any():
            break
        best = int(np.flatnonzero(feasible)[np.lexsort((ca0 - ca[feasible], asr[feasible]))[0]])
        mask[left[best]] = True
        (tasr,), (tca,) = measure(mask[None], tclean, ttx, tty)
        row = {"step": step, "group": left[best], "defense_asr": float(asr[best]),
               "defense_ca_drop": float(ca0 - ca[best]), "test_asr": float(tasr), "test_ca_drop": float(tca0 - tca)}
        trajectory.append(row)
        print(f"| {step} | {int(mask.sum())} | {100 * row['defense_asr']:.2f} | {100 * row['defense_ca_drop']:.2f} | "
              f"{100 * tasr:.2f} | {100 * row['test_ca_drop']:.2f} |", flush=True)
        if asr[best] <= 0.01:
            break

    report(args, case, (asr0, ca0, tasr0, tca0), trajectory)


def report(args, case, unpruned, trajectory):
    asr0, ca0, tasr0, tca0 = unpruned
    for limit in (2.0, 3.0):
        ok = [r for r in trajectory if 100 * r["test_ca_drop"] <= limit + 1e-9]
        best = min(ok, key=lambda r: r["test_asr"]) if ok else None
        print(f"lowest test ASR with test CA drop <= {limit:g}: " +
              (f"{100 * best['test_asr']:.2f}% at step {best['step']} ({100 * best['test_ca_drop']:.2f} points)"
               if best else "none"))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({"case": case.name, "draw": args.draw, "budget": args.budget,
                                "unpruned": {"defense_asr": asr0, "defense_ca": ca0, "test_asr": tasr0,
                                             "test_ca": tca0}, "trajectory": trajectory}) + "\n")


if __name__ == "__main__":
    main()
