"""Stage: decide. The final mask, chosen from the defense data alone (no poisoned data, no test labels):
each round's mask among the search's candidates (``choose_mask``), then the groups the probes do not need
given back (``prune_back``)."""

from dataclasses import dataclass

from .choose import Decision, choose_mask, ranked_masks


@dataclass
class DecideConfig:
    max_ca_drop: float = 0.02  # the clean-accuracy budget, as a fraction (0.02 = 2 points)
    # The decision's clean-accuracy drop over all defense images must stay within this share of max_ca_drop
    # (the held-out part alone is small and noisy; the margin is for the test set the defense data stands for).
    pooled_ca_share: float = 0.75
    holdout: float = 0.3  # share of the defense data kept out of training to check clean accuracy
    # Signal masks the decision scores in full, picked by a first look on part of the probe (None: all of them;
    # a shortlist of 24 cost Blended its best mask).
    extra_shortlist: int | None = None
    # After the rounds, give back pruned groups one at a time while the probe's ASR over all defense images stays
    # within this much of the final mask's (None: keep the rounds' mask as it is). Later rounds leave earlier
    # rounds' groups redundant.
    prune_back_tolerance: float | None = 0.02
    # ... and only a group whose return gives back at least this many defense images: one that costs no clean
    # accuracy stays pruned, as a margin against the real trigger, which the probe only approximates.
    prune_back_min_images: int = 1
    prune_back_max_clean: int | None = None  # clean defense images the prune-back scores on (None: all of them)


__all__ = ["DecideConfig", "Decision", "choose_mask", "ranked_masks"]
