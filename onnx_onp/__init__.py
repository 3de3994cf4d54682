"""onnx-onp: remove backdoors from ONNX classifiers by Optimized Neuron Pruning.

Pipeline stages, one subpackage each: load -> neuron_map -> instrument -> signals -> graphs -> agent ->
decide -> export; `sanitize.sanitize` runs them all.
"""

__version__ = "0.1.0"
