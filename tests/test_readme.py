"""The README is the user's guide: short, its exit-code table in step with onnx_onp/errors.py, and no lab notes."""

import re
from pathlib import Path

from onnx_onp.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _section(text, title):
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_is_short_and_starts_with_the_two_commands():
    assert len(README.splitlines()) <= 220
    first_screen = "\n".join(README.splitlines()[:40])
    assert "onnx-onp sanitize fixtures/models/tiny_badnet_cifar10.onnx" in first_screen
    assert "bash .ci/run" in first_screen


def test_every_exit_code_is_documented():
    table = _section(README, "Exit codes")
    documented = {int(code) for row in re.findall(r"^\| ([\d, ]+) \|", table, re.M) for code in row.split(",")}
    assert set(EXIT_CODES) <= documented, f"missing from the README: {sorted(set(EXIT_CODES) - documented)}"


def test_user_docs_carry_no_commit_hashes_or_run_numbers():
    for path in (ROOT / "README.md", ROOT / "docs" / "method.md"):
        text = path.read_text()
        hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"\d", w) and re.search(r"[a-f]", w)]
        assert not hashes, f"{path.name}: {hashes}"
        assert not re.search(r"\brun \d+\b|\bruns \d+", text), path.name


def test_the_python_snippet_is_the_one_the_api_test_runs():
    assert (ROOT / "docs" / "api_example.py").read_text() in README
