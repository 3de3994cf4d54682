"""The seeded mutation fuzzer (benchmarks/fuzz.py) on a CI-sized sample: 100 hostile or broken models through
inspect, evaluate and prune, every fifth through audit --detect-only too; every promise must hold."""

from __future__ import annotations

from benchmarks.fuzz import PROBLEMS, fuzz, parse_args


def test_fuzz_sample_breaks_no_promise(tmp_path):
    args = parse_args(["--n", "100", "--seed", "0", "--audit-every", "5", "--out", ""])
    result = fuzz(args)
    assert result["runs"] >= 300
    broken = {name: count for name, count in result["problems"].items() if count}
    details = [(f["case"], f["family"], f["detail"], f["command"], f["code"], f["problems"], f["stderr"][:200])
               for f in result["failures"][:10]]
    assert not broken, (result["summary"], details)
    assert set(result["problems"]) == set(PROBLEMS)
    # Every family ran, and the sample reached both refusals and successful runs.
    assert len(result["families"]) == 21
    codes = result["exit_codes"]["inspect"]
    assert codes.get("0", 0) > 0 and sum(n for code, n in codes.items() if code != "0") > 0
