"""Stage 7: choose the final mask from the defense data alone (no poisoned data, no test labels).

Candidates are every mask the agent scored plus the policy's ranking cut at growing sizes (the k most
probable groups). The best candidates by training reward that kept clean accuracy within budget are
re-scored on the held-out part of the defense data, and the best one that also keeps the budget there wins.
If none does, nothing is pruned and the run says it could not sanitize within the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..agent.reinforce import Outcome, RewardEnv


@dataclass
class Decision:
    mask: np.ndarray
    train: Outcome | None
    holdout: Outcome | None
    candidates_checked: int
    within_budget: bool


def ranked_masks(probabilities: np.ndarray, prunable: np.ndarray, max_size: int) -> np.ndarray:
    """The k most probable prunable groups, for k = 1, 2, 3, 4, 6, 8, 12, ... up to max_size."""
    order = [g for g in np.argsort(-probabilities, kind="stable") if prunable[g]]
    sizes, k = [], 1
    while k <= min(max_size, len(order)):
        sizes.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    masks = np.zeros((len(sizes), len(probabilities)), dtype=bool)
    for row, size in enumerate(sizes):
        masks[row, order[:size]] = True
    return masks


def choose_mask(train_env: RewardEnv, holdout_env: RewardEnv, tried: list[tuple[np.ndarray, Outcome]],
                probabilities: np.ndarray, prunable: np.ndarray, *, max_ca_drop: float,
                max_fraction: float = 0.25, shortlist: int = 10) -> Decision:
    ranked = ranked_masks(probabilities, prunable, max(1, int(max_fraction * prunable.sum())))
    pool = list(tried) + list(zip(ranked, train_env.score(ranked)))
    seen, shortlisted = set(), []
    for mask, outcome in sorted(pool, key=lambda mo: -mo[1].reward):
        key = mask.tobytes()
        if outcome.pruned == 0 or key in seen or train_env.ca0 - outcome.ca > max_ca_drop:
            continue
        seen.add(key)
        shortlisted.append((mask, outcome))
        if len(shortlisted) == shortlist:
            break
    if not shortlisted:
        return Decision(mask=np.zeros_like(prunable), train=None, holdout=None, candidates_checked=0,
                        within_budget=False)
    held = holdout_env.score(np.array([m for m, _ in shortlisted]))
    best = None
    for (mask, train_outcome), hold in zip(shortlisted, held):
        if holdout_env.ca0 - hold.ca > max_ca_drop:
            continue
        if best is None or hold.reward > best[2].reward:
            best = (mask, train_outcome, hold)
    if best is None:
        return Decision(mask=np.zeros_like(prunable), train=None, holdout=None,
                        candidates_checked=len(shortlisted), within_budget=False)
    return Decision(mask=best[0], train=best[1], holdout=best[2], candidates_checked=len(shortlisted),
                    within_budget=True)
