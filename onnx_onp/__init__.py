"""onnx-onp: remove backdoors from ONNX classifiers by Optimized Neuron Pruning.

Python API (the same runs as the CLI's `sanitize` and `audit`, with the same defaults)::

    import onnx_onp
    result = onnx_onp.sanitize("model.onnx", "clean.npz")  # paths, onnx.ModelProto, (x, y) arrays
    print(result.verdict, result.outcome, result.pruned)
    result.save("model.clean.onnx")

Pipeline stages, one subpackage each: load -> neuron_map -> detect -> probes -> search -> decide -> verify ->
report -> export; ``onnx_onp.sanitize`` (the module; calling it calls ``api.sanitize``) runs them in order.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "sanitize", "audit", "Result"]


def __getattr__(name):
    # Imported on first use: `onnx-onp --help` and `from onnx_onp.errors import ...` stay free of torch.
    import importlib

    if name == "sanitize":  # the orchestrator module, callable as the API's sanitize()
        return importlib.import_module(".sanitize", __name__)
    if name in ("audit", "Result"):
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
