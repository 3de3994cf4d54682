"""The decide stage's last step: give back pruned groups the probes do not need."""

from __future__ import annotations

import numpy as np

from ..probes import probe_env


def prune_back(evaluator, defense, probes, target, axes, config, mask: np.ndarray):
    """Greedy backward elimination: rounds add groups against each new probe, and some of them stop being needed
    once later groups are pruned. Restore, one at a time, the group whose return gives back the most clean
    accuracy (at least ``prune_back_min_images`` images) while the probe's ASR stays within
    ``prune_back_tolerance`` of the mask it started from (all probes, all defense images)."""
    decide = config.decide
    env = probe_env(evaluator, defense, probes, target, axes, config.search.reward,
                    max_stamped=2 * config.probes.max_stamped, seed=config.seed, max_clean=decide.prune_back_max_clean)
    start = env.score(mask[None])[0]
    restored, current = [], start
    while mask.sum() > 1:
        pruned = np.flatnonzero(mask)
        candidates = np.repeat(mask[None], len(pruned), axis=0)
        candidates[np.arange(len(pruned)), pruned] = False
        # 0 images: any group the probe can spare, whatever its return gives back.
        min_gain = (decide.prune_back_min_images - 0.5) / max(1, len(env.clean_y)) if decide.prune_back_min_images \
            else -np.inf
        # A return that gives back too little is not allowed whatever the probe says: not run on the probe.
        outcomes = env.score(candidates, max_drop=env.ca0 - current.ca - min_gain)
        allowed = [i for i in range(len(pruned)) if outcomes[i].asr <= start.asr + decide.prune_back_tolerance
                   and outcomes[i].ca - current.ca >= min_gain]
        if not allowed:
            break
        # Of the groups the probe can spare, the one whose return gives back the most clean accuracy.
        best = max(allowed, key=lambda i: (outcomes[i].ca, -outcomes[i].asr))
        mask, current = candidates[best], outcomes[best]
        restored.append(evaluator.nmap.label(evaluator.nmap.groups[int(pruned[best])].neurons[0]))
    return mask, {"restored": restored, "probe_asr": {"before": start.asr, "after": current.asr},
                  "defense_ca": {"before": start.ca, "after": current.ca}}
