"""Stage 5: neuron graphs, one per prunable layer."""

from .build import GraphConfig, batch_graphs, build_graphs

__all__ = ["GraphConfig", "batch_graphs", "build_graphs"]
