"""A differentiable torch mirror of the ONNX graph (gradients for the signals), tested against onnxruntime."""

from .torch_mirror import TorchMirror

__all__ = ["TorchMirror"]
