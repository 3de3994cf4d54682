"""Stage 3: the instrumented model and the masked evaluator."""

from .masked import MASK_INPUT, MaskedEvaluator, Scores, cross_entropy, instrument, masked_name

__all__ = ["MASK_INPUT", "MaskedEvaluator", "Scores", "cross_entropy", "instrument", "masked_name"]
