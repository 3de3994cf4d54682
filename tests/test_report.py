"""The audit report and the supply-chain gate: exit codes, the JSON schema, the HTML page, progress output."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

import onnx_onp.sanitize as sanitize_module
from onnx_onp.errors import GATE_SUSPECTED, GATE_UNSANITIZABLE
from onnx_onp.progress import Silent, TerminalProgress, for_terminal
from onnx_onp.report import (STATUS_CLEAN, STATUS_SANITIZED, STATUS_UNSANITIZABLE, gate_exit_code,
                             validate_report)
from onnx_onp.report.html import render_html
from onnx_onp.report.schema import schema_text
from onnx_onp.report.verdict import STATUS_DETECT_ONLY
from onnx_onp_cli.main import main

from .conftest import DATA, REAL_MODELS, REPO, TINY, need


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_published_schema_is_the_one_the_code_checks():
    """docs/report-schema.json is what readers build against: it must not drift from the code."""
    assert (REPO / "docs" / "report-schema.json").read_text() == schema_text()


def test_sanitize_report_follows_the_schema(tiny_sanitized):
    result, paths = tiny_sanitized
    report = json.loads(paths["json"].read_text())
    validate_report(report)
    assert report["schema"] == {"name": "onnx-onp-report", "version": "1.19"}
    assert report["command"] == "sanitize" and report["exit_code"] == result.exit_code == 0
    assert report["resume"]["runs_resumed"] > 0 and report["resume"]["levels"] > 0  # on by default on the CPU
    assert report["verdict"]["verdict"] == "backdoor suspected" and report["verdict"]["suspected_target"] == 0
    assert report["model"]["sha256"] == hashlib.sha256(TINY.with_suffix(".onnx").read_bytes()).hexdigest()
    assert report["verdict"]["carrier_neurons"] and set(report["verdict"]["carrier_neurons"]) <= set(
        report["pruned_signals"])
    assert 0.5 < report["prediction_agreement_holdout"] <= 1.0
    detail = report["most_affected_layer"]
    assert sum(detail["pruned"]) == max(r["pruned"] for r in report["pruned"]["per_layer_counts"])
    assert detail["graph"]["edges"] and any(n["pruned"] for n in detail["graph"]["nodes"])
    assert {r["round"] for r in report["reward_curve"]} == set(range(len(report["rounds"])))
    # every round says whether its mask cut the probes; a round before the last either still found the backdoor or,
    # cleared by the re-check, left the probes uncut (until_probes_cut, the default) and says so
    assert all(isinstance(r["probes_cut"], bool) and 0 <= r["holdout_probe_asr_unpruned"] <= 1
               for r in report["rounds"])
    for r in report["rounds"][:-1]:
        went_on = bool(r.get("went_on_as_probes_not_cut"))
        assert r["backdoor_still_found"] != went_on and (not went_on or not r["probes_cut"])
    assert not report["rounds"][-1].get("went_on_as_probes_not_cut")
    assert report["audit"]["attack_success_rate"]["after"] < report["audit"]["attack_success_rate"]["before"]


def test_schema_rejects_broken_reports(tiny_sanitized):
    report = json.loads(tiny_sanitized[1]["json"].read_text())
    for breakage in (lambda r: r.pop("verdict"), lambda r: r.update(status="probably fine"),
                     lambda r: r["model"].update(sha256="abc"), lambda r: r["schema"].update(version="2.0"),
                     lambda r: r["clean_accuracy_holdout"].update(after=1.5)):
        broken = copy.deepcopy(report)
        breakage(broken)
        with pytest.raises(jsonschema.ValidationError):
            validate_report(broken)


def test_a_check_too_small_for_a_small_cost_says_how_much_data_would_show_it(tiny_sanitized, capsys):
    """The tiny run's check drop (3 points) is itself over budget: no hint. A report whose drop is small but whose
    bound is not shows, in the CLI and the HTML, the check size the rates seen would need and the --limit."""
    from onnx_onp_cli.main import _print_outcome

    report = json.loads(tiny_sanitized[1]["json"].read_text())
    ca = report["final_check"]["clean_accuracy"]
    assert report["status"] == STATUS_UNSANITIZABLE and ca["drop"] >= ca["budget"] and ca["images_needed"] is None
    assert "defense_images_needed" not in report["final_check"] and "too few images" not in tiny_sanitized[0].output
    small = copy.deepcopy(report)
    small["final_check"]["clean_accuracy"].update(drop=0.01, upper_bound=0.0219, broken=1, fixed=0, images_needed=127)
    small["final_check"]["defense_images_needed"] = 635
    validate_report(small)
    _print_outcome(small, None)
    assert ("too few images to show a cost this small: at the rates seen (1 broken, 0 fixed) about 127 check images "
            "would, i.e. --limit 635 clean images") in capsys.readouterr().out
    assert "run again with 635 clean images (--limit)" in render_html(small)
    assert "run again with" not in render_html(report)
    # Where the backdoor remains, more data would not help: no hint.
    small["final_check"]["backdoor_remains"], small["status"] = True, "backdoor remains"
    _print_outcome(small, None)
    assert "too few images" not in capsys.readouterr().out and "run again with" not in render_html(small)


@pytest.mark.parametrize("status, verdict, fail_on, code", [
    (STATUS_CLEAN, "no backdoor evidence", "suspected", 0),
    (STATUS_CLEAN, "no backdoor evidence", "unsanitizable", 0),
    (STATUS_SANITIZED, "backdoor suspected", "unsanitizable", 0),
    (STATUS_SANITIZED, "backdoor suspected", "suspected", GATE_SUSPECTED),
    (STATUS_SANITIZED, "backdoor suspected", "never", 0),
    (STATUS_UNSANITIZABLE, "backdoor suspected", "unsanitizable", GATE_UNSANITIZABLE),
    (STATUS_UNSANITIZABLE, "backdoor suspected", "suspected", GATE_UNSANITIZABLE),
    (STATUS_UNSANITIZABLE, "backdoor suspected", "never", 0),
    (STATUS_DETECT_ONLY, "backdoor suspected", "suspected", GATE_SUSPECTED),
    (STATUS_DETECT_ONLY, "backdoor suspected", "unsanitizable", 0),
])
def test_gate_exit_code_for_every_outcome(status, verdict, fail_on, code):
    assert gate_exit_code({"status": status, "verdict": {"verdict": verdict}}, fail_on) == code


def test_audit_flags_the_backdoored_fixture_with_exit_10(tmp_path):
    """`audit` writes no model, and suspicion fails the job by default (--fail-on suspected; every --fail-on value
    is checked against every outcome in test_gate_exit_code_for_every_outcome, and the batch tests run `audit
    --fail-on never` end to end)."""
    args = ["audit", TINY.with_suffix(".onnx"), "--data", need(DATA / "cifar10_train.npz"), "--limit", 300,
            "--spec", TINY.with_suffix(".json"), "--detect-only", "--report", tmp_path / "r.json"]
    result = _run(args)
    assert result.exit_code == GATE_SUSPECTED, result.output
    assert "verdict: backdoor suspected" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    validate_report(report)
    assert report["command"] == "audit" and report["status"] == STATUS_DETECT_ONLY and report["exit_code"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"] and report["fail_on"] == "suspected"


def test_audit_passes_a_clean_real_model_with_exit_0(tmp_path):
    """A model trained without poisoning by someone else (sashank's clean twin): no false alarm."""
    model = need(REAL_MODELS / "sashank_badnet_cifar10_clean.onnx")
    result = _run(["audit", model, "--data", need(DATA / "cifar10_train.npz"), "--spec", model.with_suffix(".json"),
                   "--detect-only", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["verdict"]["verdict"] == "no backdoor evidence" and report["status"] == STATUS_CLEAN
    validate_report(report)
    page = render_html(report)  # the page without any pruning: no policy, graph or reward figures
    # Trigger synthesis found nothing, so the neuron-perturbation, amplification and max-margin scans ran, and
    # found nothing.
    scan = report["neuron_perturbation"]
    assert report["detector"] == "trigger synthesis" and max(scan["share_per_class"]) < scan["min_share"]
    amplified = report["neuron_amplification"]
    assert amplified["anomaly_index"] < amplified["threshold"] and len(amplified["count_per_class"]) == 10
    margins = report["max_margin"]
    assert margins["anomaly_index"] < margins["threshold"] and len(margins["margin_per_class"]) == 10
    assert "Verdict: no backdoor evidence" in page and page.count("<img") == 4


def test_gate_commands_reject_bad_input_with_their_exit_codes(tmp_path, monkeypatch):
    """Bad input is never mistaken for a verdict: its own code, one line, no report left behind."""
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_bytes(b"this is not a protobuf")
    wrong_shape = tmp_path / "mnist_like.npz"
    np.savez(wrong_shape, x=np.zeros((10, 28, 28), np.uint8), y=np.zeros(10, np.int64))
    cases = [(["audit", not_onnx, "--data", need(DATA / "cifar10_test.npz")], 3),
             (["sanitize", not_onnx, "--data", need(DATA / "cifar10_test.npz"), "-o", tmp_path / "out.onnx"], 3),
             (["audit", TINY.with_suffix(".onnx"), "--data", wrong_shape], 6),
             (["audit", TINY.with_suffix(".onnx"), "--data", need(DATA / "cifar10_test.npz"),
               "--poisoned-data", wrong_shape, "--target", 0], 6),
             (["audit", TINY.with_suffix(".onnx"), "--data", need(DATA / "cifar10_test.npz"),
               "--poisoned-data", need(DATA / "cifar10_test.npz"), "--target", 10], 6)]
    # Bad input must fail before the analysis runs: the pipeline's stages are never entered.
    monkeypatch.setattr(sanitize_module, "run_stages", lambda *a, **k: pytest.fail("the analysis ran on bad input"))
    for args, code in cases:
        result = _run(args + ["--report", tmp_path / "r.json", "-q"])
        assert result.exit_code == code, (args, result.output)
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist_like.npz", "model.onnx"]


def test_sanitize_that_finds_no_mask_within_budget_exits_11_and_writes_no_model(tmp_path, monkeypatch):
    """When every candidate pruning breaks the accuracy budget, the suspected model must not be written under
    the sanitized name. The decision is forced empty here; the rest of the pipeline runs for real."""
    import onnx_onp.search as search_stage

    real_choose = search_stage.choose_mask

    def nothing_within_budget(*args, **kwargs):
        decision = real_choose(*args, **kwargs)
        decision.mask[:] = False
        decision.within_budget = False
        return decision

    monkeypatch.setattr(search_stage, "choose_mask", nothing_within_budget)
    out = tmp_path / "sanitized.onnx"
    result = _run(["sanitize", TINY.with_suffix(".onnx"), "--data", need(DATA / "cifar10_train.npz"), "--limit", 300,
                   "--spec", TINY.with_suffix(".json"), "--budget", 2, "--masks-per-step", 4, "--rounds", 1,
                   "-o", out, "--report", tmp_path / "r.json"])
    assert result.exit_code == GATE_UNSANITIZABLE, result.output
    assert not out.exists() and f"no model written to {out}" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    validate_report(report)
    assert report["status"] == STATUS_UNSANITIZABLE and "output" not in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def _browser() -> str | None:
    return os.environ.get("ONP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_report_renders_in_headless_chromium(tiny_sanitized, tmp_path):
    """The page a person reads: every figure loads, nothing is fetched, no console errors, not blank."""
    executable = _browser()
    if executable is None:
        if os.environ.get("ONP_REQUIRE_BROWSER"):
            pytest.fail("ONP_REQUIRE_BROWSER is set but no Chromium was found")
        pytest.skip("no Chromium on this machine (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    page_file = tiny_sanitized[1]["html"]
    messages, requests = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth])")
        text = page.inner_text("body")
        shot = page.screenshot(full_page=True, path=str(tmp_path / "report.png"))
        browser.close()
    assert not [m for m in messages if m.startswith(("error", "pageerror"))], messages
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # self-contained
    assert len(images) >= 5 and all(done and width > 100 for done, width in images), images
    assert "Verdict: backdoor suspected" in text and "SHA-256" in text
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 2000 and pixels.std() > 20 and (pixels < 128).mean() > 0.01  # a real page, not blank


def test_report_command_rebuilds_the_html_and_refuses_bad_input(tiny_sanitized, tmp_path):
    saved = tiny_sanitized[1]["json"]
    result = _run(["report", saved, "-o", tmp_path / "again.html"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "again.html").read_text()
    assert "Verdict: backdoor suspected" in page
    first = json.loads(saved.read_text())["rounds"][0]  # the rounds table shows the probes unpruned -> pruned
    assert f"{100 * first['holdout_probe_asr_unpruned']:.2f}% → {100 * first['holdout_asr_synthesized']:.2f}%" in page
    (tmp_path / "junk.json").write_text("{not json")
    broken = json.loads(saved.read_text())
    del broken["verdict"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    for bad in ("junk.json", "broken.json"):
        result = _run(["report", tmp_path / bad, "-o", tmp_path / "x.html"])
        assert result.exit_code == 6 and result.output.startswith("error: ") and result.output.count("\n") == 1
    result = _run(["report", saved, "-o", tmp_path / "missing" / "x.html"])
    assert result.exit_code == 7
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "missing").exists()
    assert not list(tmp_path.glob(".*.tmp"))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_on_a_terminal(tiny_sanitized):
    assert isinstance(for_terminal(stream=io.StringIO()), Silent)  # a pipe or a CI log: no bars
    assert type(for_terminal(quiet=True, stream=_Terminal())) is Silent
    screen = _Terminal()
    progress = for_terminal(stream=screen)
    assert isinstance(progress, TerminalProgress)
    progress.stage("trigger synthesis", total=3)
    progress.advance(reward=0.5)
    progress.note("suspected target 0")
    progress.close()
    shown = screen.getvalue()
    assert "trigger synthesis" in shown and "suspected target 0" in shown and "reward=0.500" in shown
    result, _ = tiny_sanitized  # the CLI under a test runner: not a terminal
    assert "\r" not in result.output and "it/s" not in result.output


@pytest.mark.parametrize("flag, expected", [([], None), (["--resume"], True), (["--no-resume"], False)])
def test_resume_flag_reaches_the_config(monkeypatch, flag, expected):
    """--resume/--no-resume set SanitizeConfig.runtime.resume_evaluation; without either, sanitize decides (CPU: on)."""
    from onnx_onp import sanitize as pipeline

    seen = {}

    def capture(*args, config, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "sanitize", capture)
    result = _run(["sanitize", TINY.with_suffix(".onnx"), "--data", need(DATA / "cifar10_train.npz"), "--limit", 50,
                   *flag])
    assert result.exit_code == 0, result.output
    assert seen["config"].runtime.resume_evaluation is expected
