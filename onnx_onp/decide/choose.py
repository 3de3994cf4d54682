"""Stage 7: choose the final mask from the defense data alone (no poisoned data, no test labels).

Candidates are every mask the agent scored plus the policy's ranking cut at growing sizes (the k most
probable groups), plus the per-layer top groups by single signals that cut the backdoor probe most, plus the
signal walk's masks (each ranking walked down, skipping costly groups). The best candidates by training reward
that kept clean accuracy within budget are re-scored on the held-out part of the defense data, and the best one
that also keeps the budget there wins. If none does, nothing is pruned and the run says it could not sanitize
within the budget.
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
    # Where the winning mask came from: "agent sample" (a mask REINFORCE sampled), "policy ranking" (the trained
    # policy's k most probable groups) or "signal mask" (one signal alone); None when nothing was chosen.
    source: str | None = None


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


def prunable_layer_groups(nmap, exclude: np.ndarray | None = None):
    """Per layer, its prunable groups (less those in ``exclude``), for layers with at least two (a z-score needs
    a spread)."""
    for layer in nmap.layers:
        groups = np.unique(nmap.layer_groups(layer))
        groups = groups[nmap.prunable[groups] & (True if exclude is None else ~exclude[groups])]
        if len(groups) >= 2:
            yield groups


def zscores(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.mean()) / max(values.std(), 1e-12)


def layer_zscores(nmap, values: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Each group's largest z-score within the layers it belongs to (-inf where it is in no such layer, or in
    ``exclude``)."""
    z = np.full(nmap.num_groups, -np.inf)
    for groups in prunable_layer_groups(nmap, exclude):
        z[groups] = np.maximum(z[groups], zscores(values[groups]))
    return z


def signal_masks(nmap, signals, *, names=("act_shift", "blc", "lipschitz"), per_layer=(1, 2, 4),
                 thresholds=(3.0, 2.5, 2.0), exclude: np.ndarray | None = None) -> np.ndarray:
    """Masks the signals alone suggest: per layer, the top-k groups by each backdoor signal, and over all
    layers, the groups whose in-layer z-score passes a threshold (CLP's rule, applied to every signal).
    ``exclude``: groups already pruned; the masks rank only the others (they are added to the base mask).

    They join the agent's masks as candidates, scored by the same reward: the policy has to beat them.
    """
    masks = []
    for groups in prunable_layer_groups(nmap, exclude):
        for name in names:
            if name == "lipschitz":
                continue  # a weight statistic: used through the thresholds only
            order = groups[np.argsort(-zscores(signals[name][groups]), kind="stable")]
            for k in per_layer:
                if k < len(groups):
                    mask = nmap.empty_mask()
                    mask[order[:k]] = True
                    masks.append(mask)
    for name in names:
        z = layer_zscores(nmap, signals[name], exclude)
        for threshold in thresholds:
            mask = (z > threshold) & nmap.prunable
            if mask.any():
                masks.append(mask)
    return np.array(masks) if masks else np.zeros((0, nmap.num_groups), dtype=bool)


WALK_SNAPSHOTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def signal_walk_masks(env: RewardEnv, nmap, signals, *, max_drop: float, names=("act_shift", "blc"),
                      max_groups: int = 48, stop_asr: float = 0.02, exclude: np.ndarray | None = None) -> np.ndarray:
    """Masks grown one group at a time down each signal's ranking, skipping the groups that cost too much.

    A signal's top-k is often almost right: on the width-32 ResNet-18 the top 24 groups by activation shift take the
    real ASR to 9.9%, at 2.4 points of CA, most of which come from one or two groups among them
    (experiments/signal_ranking.py). Walking the ranking (in-layer z-score, as signal_masks), a group joins the mask
    when the mask's clean accuracy on ``env`` stays within ``max_drop`` of the unpruned model's and the probe's ASR
    does not rise; the mask after 1, 2, 3, 4, 6, 8, ... joined groups is a candidate. The walk stops at
    ``max_groups`` groups looked at, or once the probe's ASR is at most ``stop_asr``. One evaluation per group.
    """
    masks = []
    for name in names:
        z = layer_zscores(nmap, signals[name], exclude)
        order = [g for g in np.argsort(-z, kind="stable") if np.isfinite(z[g])][:max_groups]
        mask = env.base_mask.copy()
        current, joined = env.score(mask[None])[0], 0
        for group in order:
            if current.asr <= stop_asr:
                break
            if mask[group]:
                continue
            trial = mask.copy()
            trial[group] = True
            outcome = env.score(trial[None], max_drop=max_drop)[0]  # over max_drop: rejected, probe not run
            if env.ca0 - outcome.ca > max_drop or outcome.asr > current.asr:
                continue
            mask, current, joined = trial, outcome, joined + 1
            if joined in WALK_SNAPSHOTS:
                masks.append(mask.copy())
        if joined and joined not in WALK_SNAPSHOTS:
            masks.append(mask.copy())
    return np.array(masks) if masks else np.zeros((0, nmap.num_groups), dtype=bool)


def choose_mask(train_env: RewardEnv, holdout_env: RewardEnv, tried: list[tuple[np.ndarray, Outcome]],
                probabilities: np.ndarray, prunable: np.ndarray, *, max_ca_drop: float,
                max_fraction: float = 0.25, shortlist: int = 10, extra: np.ndarray | None = None,
                extra_shortlist: int | None = None, pooled_share: float = 0.75,
                walked: np.ndarray | None = None, walk_shortlist: int = 4) -> Decision:
    ranked = ranked_masks(probabilities, prunable, max(1, int(max_fraction * prunable.sum())))
    sources = ["policy ranking"] * len(ranked)
    if walked is not None and len(walked):
        ranked = np.concatenate([ranked, walked])
        sources += ["signal walk"] * len(walked)
    if extra is not None and len(extra):
        # The per-layer signal masks are many (3 signals x 3 sizes x every layer); most leave the backdoor
        # probe untouched. For large models a first look on a part of the probe keeps the ones that cut it most
        # for full scoring (elsewhere all are scored: the shortlist lost Blended its best mask).
        if extra_shortlist is not None and len(extra) > extra_shortlist:
            asr = train_env.probe_asr(extra)
            extra = extra[np.lexsort((extra.sum(axis=1), asr))[:extra_shortlist]]
        ranked = np.concatenate([ranked, extra])
        sources += ["signal mask"] * len(extra)
    pool = [(m | train_env.base_mask, o, "agent sample") for m, o in tried] + [
        (m | train_env.base_mask, o, source)
        for m, o, source in zip(ranked, train_env.score(ranked, max_drop=max_ca_drop), sources)]
    seen, shortlisted, walks = set(), [], 0
    # Sorted by reward alone (stable): of equal masks, an agent sample comes first. The walk's masks are fitted
    # to the training part's clean accuracy, so they top its reward: they get walk_shortlist places of their own
    # and crowd out none of the others.
    for mask, outcome, source in sorted(pool, key=lambda entry: -entry[1].reward):
        key = mask.tobytes()
        if outcome.pruned == int(train_env.base_mask.sum()) or key in seen or train_env.ca0 - outcome.ca > max_ca_drop:
            continue
        is_walk = source == "signal walk"
        if (walks == walk_shortlist) if is_walk else (len(shortlisted) - walks == shortlist):
            continue
        seen.add(key)
        shortlisted.append((mask, outcome, source))
        walks += is_walk
        if len(shortlisted) == shortlist + walk_shortlist:
            break
    if not shortlisted:
        return Decision(mask=train_env.base_mask.copy(), train=None, holdout=None, candidates_checked=0,
                        within_budget=False)
    held = holdout_env.score(np.array([m for m, _, _ in shortlisted]), max_drop=max_ca_drop)
    n_train, n_hold = len(train_env.clean_y), len(holdout_env.clean_y)
    best = None
    for (mask, train_outcome, source), hold in zip(shortlisted, held):
        # The held-out part alone is small and noisy: the drop over all defense images must fit the budget too.
        pooled = (n_train * (train_env.ca0 - train_outcome.ca) + n_hold * (holdout_env.ca0 - hold.ca)) / (
            n_train + n_hold)
        if holdout_env.ca0 - hold.ca > max_ca_drop or pooled > pooled_share * max_ca_drop:
            continue
        if best is None or hold.reward > best[2].reward:
            best = (mask, train_outcome, hold, source)
    if best is None:
        return Decision(mask=train_env.base_mask.copy(), train=None, holdout=None,
                        candidates_checked=len(shortlisted), within_budget=False)
    return Decision(mask=best[0], train=best[1], holdout=best[2], candidates_checked=len(shortlisted),
                    within_budget=True, source=best[3])
