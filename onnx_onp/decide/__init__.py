"""Stage 7: the final mask, chosen from the defense data alone."""

from .choose import Decision, choose_mask, ranked_masks

__all__ = ["Decision", "choose_mask", "ranked_masks"]
