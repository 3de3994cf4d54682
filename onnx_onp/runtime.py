"""onnxruntime sessions with an honest provider choice.

onnxruntime-gpu silently falls back to the CPU when CUDA does not load, so the provider that actually runs is
read back from the session (``session.get_providers()``) and reported, never assumed.
"""

from __future__ import annotations

import onnx
import onnxruntime as ort

from .errors import UnsupportedModelError

# Fatal only (4): at 3 (errors) onnxruntime still prints a coloured "[E:onnxruntime:...]" line for every
# failing kernel before our one-line error, which already carries the same message from the exception.
QUIET = 4
ort.set_default_logger_severity(QUIET)

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def make_session(model: onnx.ModelProto | bytes, provider: str = "auto", *, what: str = "model",
                 threads: int | None = None, arena: bool = True) -> tuple[ort.InferenceSession, str]:
    """Build a session; return it with the name of the provider that really runs the graph.

    provider: "auto" (CUDA when it really loads, else CPU), "cpu" or "cuda" (CUDA requested: falls back to
    the CPU with the fallback visible in the returned name, as onnxruntime itself does).
    """
    if provider not in PROVIDER_CHOICES:
        raise ValueError(f"provider must be one of {PROVIDER_CHOICES}, not {provider!r}")
    wanted = ["CPUExecutionProvider"]
    if provider in ("auto", "cuda") and _NAMES["cuda"] in available_providers():
        wanted = [_NAMES["cuda"], "CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = QUIET  # its warnings and error lines would drown the one-line errors
    if threads:
        options.intra_op_num_threads = threads
    if not arena:  # many sessions at once: each arena would keep its largest batch's activations for good
        options.enable_cpu_mem_arena = False
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=wanted)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"{what}: onnxruntime cannot load the model: {first}") from None
    return session, session.get_providers()[0]
