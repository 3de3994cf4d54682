"""Errors a user can cause, each with the exit code the CLI returns for it.

The CLI prints ``error: <message>`` on one line and exits with ``exit_code``; library users catch
``OnpError``. Codes are part of the public contract (README, "Exit codes"): a CI gate branches on them.
"""

from __future__ import annotations


class OnpError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in onnx-onp."""

    exit_code = 1
    kind = "error"


class UsageError(OnpError):
    """Options that do not go together (click's own usage errors exit 2 as well)."""

    exit_code = 2
    kind = "usage"


class ModelFileError(OnpError):
    """The file is not ONNX, is truncated or corrupt, or cannot be read."""

    exit_code = 3
    kind = "bad-model-file"


class ExternalDataError(OnpError):
    """External tensor data is missing, or points outside the model's folder."""

    exit_code = 4
    kind = "bad-external-data"


class UnsupportedModelError(OnpError):
    """The graph is valid ONNX but onnx-onp or onnxruntime cannot handle it (operators, inputs, outputs)."""

    exit_code = 5
    kind = "unsupported-model"


class DataError(OnpError):
    """The dataset is unreadable, empty, does not fit the model's input, or has labels out of range."""

    exit_code = 6
    kind = "bad-data"


class OutputError(OnpError):
    """The output file cannot be written, or the written model failed its check."""

    exit_code = 7
    kind = "bad-output"


class MaskError(OnpError):
    """A neuron list or mask file does not fit the model's neuron map."""

    exit_code = 8
    kind = "bad-mask"


class Terminated(KeyboardInterrupt):
    """Raised by the CLI's SIGTERM handler: a KeyboardInterrupt, so that everything that cleans up on Ctrl-C
    (temporary output files) cleans up on SIGTERM too."""


# Gate outcomes (not errors): what `sanitize` and `audit` return for their verdict, by --fail-on.
GATE_SUSPECTED = 10
GATE_UNSANITIZABLE = 11
BATCH_SOME_FAILED = 12  # a batch audit went on past models it could not audit

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (`onnx-onp inspect M | head`)

EXIT_CODES = {
    0: "success (sanitize, audit: nothing that --fail-on fails on)",
    1: "internal error (a bug: please report it with --debug output)",
    2: "usage error (unknown option, missing argument, bad option value)",
    ModelFileError.exit_code: "model file is not ONNX, truncated or corrupt, not a regular file, or over "
                              "--max-model-size",
    ExternalDataError.exit_code: "external data missing, malformed or outside the model's folder",
    UnsupportedModelError.exit_code: "unsupported model (operators, inputs or outputs, NaN/Inf weights, over "
                                     "--max-memory or --max-nodes)",
    DataError.exit_code: "dataset unreadable, empty, wrong shape or labels out of range",
    OutputError.exit_code: "output cannot be written or failed verification",
    MaskError.exit_code: "neuron list or mask file does not fit the model",
    GATE_SUSPECTED: "backdoor suspected (with --fail-on suspected)",
    GATE_UNSANITIZABLE: "backdoor suspected and not removed: no pruning within the clean-accuracy budget, or the "
                        "backdoor remains after pruning",
    BATCH_SOME_FAILED: "batch audit: some models could not be audited (their rows in summary.json say why)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C): no output file left behind",
    EXIT_BROKEN_PIPE: "stdout closed early (e.g. piped into head): output cut short, nothing else wrong",
    EXIT_TERMINATED: "terminated (SIGTERM): no output file left behind",
}
