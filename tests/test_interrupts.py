"""Ctrl-C and SIGTERM lose nothing (issue 24): no output file, no temporary file, one line, exit 130/143."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from fixtures import hostile
from onnx_onp.errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from onnx_onp_cli.main import main


@pytest.fixture()
def case(tmp_path):
    onnx.save(hostile.tiny_cnn(), tmp_path / "tiny.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (120, 8, 8, 3), dtype=np.uint8), y=np.arange(120) % 3)
    out = tmp_path / "out"
    out.mkdir()
    return tmp_path / "tiny.onnx", tmp_path / "d.npz", out


def _wait_until_mapped(pid: int, library: str, limit: float = 300.0) -> None:
    """Until the process has loaded ``library`` (it is past the CLI's start and into the command)."""
    maps = Path(f"/proc/{pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc to see when the run is under way")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if library in maps.read_text():
                return
        except OSError:
            return  # already gone: the assertions below say why
        time.sleep(0.2)


@pytest.mark.parametrize("command,sig,code", [("sanitize", signal.SIGINT, EXIT_INTERRUPTED),
                                              ("audit", signal.SIGTERM, EXIT_TERMINATED)])
def test_signal_during_a_real_run_leaves_nothing(case, command, sig, code):
    model, data, out = case
    before = model.read_bytes()
    script = Path(sys.executable).parent / "onnx-onp"
    args = [str(script), command, str(model), "--data", str(data), "--budget", "200", "--rounds", "6",
            "--report", str(out / "report.json")]
    args += ["-o", str(out / "clean.onnx"), "--html", str(out / "r.html")] if command == "sanitize" \
        else ["-o", str(out / "r.html")]
    # A shell starts background jobs with SIGINT ignored, and children inherit that: give the run the
    # default disposition a terminal's foreground command has.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_until_mapped(proc.pid, "libtorch")  # the analysis imports torch: the run is under way
    time.sleep(1.0)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, (proc.returncode, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert list(out.iterdir()) == []  # no model, no report, no temporary file
    assert model.read_bytes() == before


def test_interrupt_after_the_model_was_written_removes_it(case, monkeypatch):
    """sanitize writes the model, then the reports: an interrupt in between must not leave the model."""
    import onnx_onp_cli.main as cli

    model, data, out = case

    def interrupted(*args, **kwargs):
        assert (out / "clean.onnx").exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_write_reports", interrupted)
    result = CliRunner().invoke(main, ["sanitize", str(model), "--data", str(data), "--budget", "1", "--rounds", "1", "--fail-on", "never",
                                       "-o", str(out / "clean.onnx"), "--report", str(out / "r.json")])
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert result.output.strip().startswith("error: interrupted") and result.output.count("\n") == 1
    assert list(out.iterdir()) == []


def test_interrupt_while_prune_writes_leaves_no_temporary(case, monkeypatch):
    import onnx_onp.export.export as export

    model, data, out = case
    real_save = export._save_bytes  # where a model under the external-data threshold is written

    def save_then_interrupt(data, path):
        real_save(data, path)  # the temporary is complete on disk ...
        assert Path(path).stat().st_size == len(data) > 0
        raise KeyboardInterrupt  # ... and Ctrl-C arrives before it is renamed into place

    monkeypatch.setattr(export, "_save_bytes", save_then_interrupt)
    result = CliRunner().invoke(main, ["prune", str(model), "--neurons", "#0:0", "-o", str(out / "p.onnx")])
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert list(out.iterdir()) == []


def test_an_interrupt_swallowed_inside_a_finaliser_still_stops_the_run(case, monkeypatch, capfd):
    """A signal whose handler runs inside ``__del__`` or a weakref callback (the import system's module-lock
    callback, as in a CI run) has its KeyboardInterrupt printed as "Exception ignored" and dropped: the run
    must stop at its next checkpoint anyway, with exit 130, one line, and nothing written."""
    import os
    import onnx_onp.sanitize as pipeline

    model, data, out = case
    real_detectors = pipeline.run_detectors

    class SignalledWhileFinalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here, inside the finaliser, and Python drops what it raises

    def detect_then_lose_the_signal(*args, **kwargs):
        result = real_detectors(*args, **kwargs)
        SignalledWhileFinalised()  # created and finalised at once
        return result

    monkeypatch.setattr(pipeline, "run_detectors", detect_then_lose_the_signal)
    # A shell that starts the tests in the background ignores SIGINT (the CLI then keeps it ignored, on purpose):
    # this test is about a Ctrl-C that arrives, so it runs with Python's default handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = CliRunner().invoke(main, ["sanitize", str(model), "--data", str(data), "--budget", "1", "--rounds",
                                           "1", "--force", "--fail-on", "never", "-o", str(out / "clean.onnx"),
                                           "--report", str(out / "r.json")])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert result.output.strip().startswith("error: interrupted") and result.output.count("\n") == 1
    assert "Exception ignored" not in capfd.readouterr().err
    assert list(out.iterdir()) == []
