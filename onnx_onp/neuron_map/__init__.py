"""Stage 2: the neuron map, the abstraction every later stage builds on."""

from .build import build_neuron_map
from .neuron_map import Group, Layer, MaskSite, NeuronMap, ParamSite, ShapeSite

__all__ = ["Group", "Layer", "MaskSite", "NeuronMap", "ParamSite", "ShapeSite", "build_neuron_map"]
