"""Stage 1: safe loading and normalisation of ONNX classifiers."""

from .loader import LoadedModel, load_model, load_model_proto, normalise

__all__ = ["LoadedModel", "load_model", "load_model_proto", "normalise"]
