"""BENCHMARKS.md and benchmarks/results/INDEX.md are generated: the committed files must be the rendering of the
saved results, and the renderer's rules (latest row wins, draws as mean and worst, the test split first) hold."""

from pathlib import Path

from benchmarks.render_benchmarks import RESULTS, load_runs, render_benchmarks, render_index

ROOT = Path(__file__).resolve().parent.parent


def test_committed_benchmarks_are_the_rendering():
    runs = load_runs()
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert text == render_benchmarks(runs), "run: python -m benchmarks.render_benchmarks --out BENCHMARKS.md"
    # Current tables only: it grows with models and draws (the per-draw table has a row per draw and defense),
    # never with history; 1,200 lines hold the full test split of 19 models and the dev models at three draws.
    assert len(text.splitlines()) <= 1200
    assert (RESULTS / "INDEX.md").read_text() == render_index(runs)


def _row(defense, ca, asr, groups=0):
    return {"case": "m", "defense": defense, "ca": ca, "asr": asr, "ra": 1 - asr, "der": 0.6, "pruned_groups": groups,
            "pruned_neurons": groups, "seconds": 1.0, "peak_rss_mb": 0.0, "info": {}}


def _run(date, seed, onp_asr, *, split=None, name="m"):
    case = {"name": name, "dataset": "cifar10", "before": {"ca": 0.80, "asr": 0.95},
            "rows": [_row("none", 0.80, 0.95), _row("onp", 0.79, onp_asr, 3)]}
    if split:
        case["split"] = split
    return {"command": f"onnx-onp bench --seed {seed}", "date": date, "machine": {"cpu": "cpu", "cores": 2},
            "settings": {"seed": seed}, "seconds": 10.0, "cases": [case]}


def _onp_line(text, case="m"):
    return next(line for line in text.splitlines() if line.startswith(f"| {case} | cifar10 | onp |"))


def test_the_latest_run_of_a_seed_replaces_an_older_one():
    text = render_benchmarks([("a.json", _run("2026-01-02", 0, 0.10)), ("b.json", _run("2026-01-01", 0, 0.50))])
    assert "| 10.00 |" in _onp_line(text) and "| a |" in _onp_line(text)
    assert "50.00" not in _onp_line(text) and "## Per draw" not in text


def test_several_seeds_give_mean_and_worst_and_keep_each_draw():
    runs = [("s0.json", _run("2026-01-01", 0, 0.02)), ("s1.json", _run("2026-01-01", 1, 0.10))]
    text = render_benchmarks(runs)
    assert "| 6.00 (10.00) |" in _onp_line(text)  # ASR: mean of 2% and 10%, worst 10%
    per_draw = text.split("## Per draw")[1]
    assert "| m | dev | 0 | 80.00 / 95.00 | 79.00 / 2.00 | – | – | – | 3 | s0 |" in per_draw
    assert "| m | dev | 1 | 80.00 / 95.00 | 79.00 / 10.00 | – | – | – | 3 | s1 |" in per_draw


def test_a_draws_list_in_one_case_is_read_like_several_runs():
    run = _run("2026-01-01", 0, 0.0)
    case = run["cases"][0]
    case["draws"] = [{"seed": s, "before": case["before"], "rows": [_row("onp", 0.78, asr, 2)]}
                     for s, asr in ((0, 0.04), (1, 0.08), (2, 0.0))]
    del case["rows"]
    text = render_benchmarks([("d.json", run)])
    assert "| 4.00 (8.00) |" in _onp_line(text) and text.count("| m | dev | ") == 3


def test_the_test_split_is_headlined_first_and_marked():
    runs = [("dev.json", _run("2026-01-01", 0, 0.02, split="dev", name="dev_model")),
            ("test.json", _run("2026-01-01", 0, 0.30, split="test", name="test_model"))]
    text = render_benchmarks(runs)
    assert text.index("## Test split") < text.index("## Development models")
    assert text.index("test_model") < text.index("dev_model")
    assert "test_model (test)" in render_index(runs, RESULTS)


def _scale_row(width, seconds, fp):
    return {"width": width, "parameters": 180_000 * width // 8, "groups": 46 * width + 10,
            "onp": {"seconds": seconds, "cpu_seconds": seconds / 2, "peak_rss_mb": 900.0, "onnxruntime_share": 0.3,
                    "torch_share": 0.6, "other_share": 0.1, "status": "sanitized"},
            "fp": {"seconds": fp}, "clp": {"seconds": 0.5}, "onp_over_fp": seconds / fp, "onp_over_clp": seconds / 0.5,
            "masked_eval": {"ratio_to_plain": {"masked-0": 1.2, "masked-r": 1.1}},
            "test": {"none": {"ca": 0.8, "asr": 0.95}, "onp": {"ca": 0.79, "asr": 0.05}}}


def test_the_latest_scale_run_is_rendered_with_its_command():
    def run(started, seconds):
        return {"command": "python -m benchmarks.scale --widths 8,64", "started": started,
                "machine": {"cpu": "cpu", "cores": 2, "load_average": [3.0, 2.0, 1.0]},
                "checks": {"onp_within_3x_fp": False, "masked_within_1.10x_plain": False},
                "widths": [_scale_row(8, seconds, 10.0), {"width": 64, "error": "no model"}]}

    text = render_benchmarks([("scale_a.json", run("2026-01-01T10:00", 100.0)),
                              ("scale_b.json", run("2026-01-02T10:00", 200.0))])
    section = text.split("## Scale")[1].split("\n## ")[0]
    assert "`python -m benchmarks.scale --widths 8,64`" in section and "scale_b.json" in section
    assert "| 8 | 0.18 M | 378 | 200 | 100 | 900 | 30% | 60% | 10% | 10.0 | 0.5 | 20.0× | 400.0× | 1.20 | 1.10 |" \
        in section
    assert "| 64 | no model |" in section and "scale_a.json" not in section


def test_the_targets_table_counts_backdoored_and_clean_models_apart():
    backdoored = [(f"b{s}.json", _run("2026-01-01", s, asr, split="test", name="bd")) for s, asr in ((0, 0.02), (1, 0.30))]
    clean = _run("2026-01-01", 0, 0.01, split="test", name="cl")
    clean["cases"][0]["before"]["asr"] = 0.01
    clean["cases"][0]["rows"][1]["info"] = {"status": "no backdoor evidence: nothing pruned"}
    text = render_benchmarks(backdoored + [("c.json", clean)])
    targets = text.split("### Targets (test split)")[1].split("\n\n")[2]
    assert "| backdoored (1 models): mean ONP ASR | ≤ 3% | 16.00% | **no** |" in targets
    assert "| models with mean ONP ASR ≤ 10% | ≥ 90% | 0 of 1 | **no** |" in targets
    assert "| (model, draw) pairs with ONP CA drop ≤ 2 points | ≥ 95% | 2 of 2 | yes |" in targets
    assert "| clean (1 models): flagged on any draw | ≤ 1 in 6 | 0 of 1 | yes |" in targets


def test_the_current_default_gets_its_own_targets_table_naming_the_models_it_lacks():
    """agent_ablation's runs of the default setting are tabled apart from the (older) bench rows, with coverage."""
    old = [("bench.json", _run("2026-01-01", 0, 0.30, split="test", name=n)) for n in ("bd", "other")]
    again = _run("2026-01-02", 0, 0.04, split="test", name="bd")
    again["cases"][0]["rows"][1]["info"] = {"status": "sanitized", "defense_data": {}}
    ablation = {"machine": {"cpu": "CPU A"}, "runs": {"until_probes_cut": again, "graphconv": _run(
        "2026-01-02", 0, 0.50, split="test", name="other")}}
    text = render_benchmarks(old + [("agent_ablation_x.json", ablation)])
    section = text.split("### Targets (test split, the current default setting only)")[1].split("\n## ")[0]
    assert "on 1 of the 2 test models; not yet run this way: other. Machine: CPU A." in section
    # A model whose run was cut short after some draws is named with its count.
    more = _run("2026-01-02", 0, 0.02, split="test", name="other")
    twice = {"machine": {"cpu": "CPU A"}, "runs": {"until_probes_cut": {**again, "cases": again["cases"] + [
        {**again["cases"][0], "draw": 1}]}}}
    partial = render_benchmarks(old + [("agent_ablation_x.json", twice), ("agent_ablation_y.json", {
        "machine": {"cpu": "CPU A"}, "runs": {"until_probes_cut": more}})])
    assert "on 2 of the 2 test models; not all draws yet: other (1 of 2 draws)." in partial
    assert "| backdoored (1 models): mean ONP ASR | ≤ 3% | 4.00% | **no** |" in section
    assert "| mean DER: ONP 60.00 | ONP above the others | ONP 60.00 | – |" in section  # no baselines: no verdict
    gate = text.split("## The gate as a classifier")[1].split("\n## ")[0]
    assert ("- Test split (models held out from development), the current default setting only (1 of 2 models): 1 "
            "(model, draw) pairs; sanitized: 1. `sanitized` with test ASR > 20%: **0**;") in gate
    # The headline table still reads the bench runs only (an ablation's other variants never count).
    assert "| backdoored (2 models): mean ONP ASR | ≤ 3% | 30.00% | **no** |" in text.split("### Targets (test split)")[1]


def test_baselines_added_to_the_default_runs_give_its_table_the_der_verdict_once_on_every_draw():
    """agent_ablation --baselines puts CLP, Fine-Pruning and random@onp beside the default's ONP rows."""
    def with_baselines(case, der):
        return {**case, "rows": case["rows"] + [{**_row(name, 0.79, 0.90), "der": der}
                                                for name in ("clp", "fp", "random@onp")]}

    run = _run("2026-01-02", 0, 0.04, split="test", name="bd")
    run["cases"] = [with_baselines(run["cases"][0], 0.5), {**run["cases"][0], "draw": 1}]
    bench = ("bench.json", _run("2026-01-01", 0, 0.30, split="test", name="bd"))
    text = render_benchmarks([bench, ("agent_ablation_x.json", {"machine": {"cpu": "CPU A"}, "runs": {"until_probes_cut": run}})])
    section = text.split("### Targets (test split, the current default setting only)")[1].split("\n## ")[0]
    assert "so far on 1 of 2 (model, draw) pairs" in section
    assert "| ONP above the others | ONP 60.00 | – |" in section  # baselines on one draw of two: no verdict
    run["cases"][1] = with_baselines(run["cases"][1], 0.5)
    text = render_benchmarks([bench, ("agent_ablation_x.json", {"machine": {"cpu": "CPU A"}, "runs": {"until_probes_cut": run}})])
    section = text.split("### Targets (test split, the current default setting only)")[1].split("\n## ")[0]
    assert "added on the same draws and test data by `agent_ablation --baselines`)" in section
    assert "| mean DER: ONP 60.00, CLP 50.00, Fine-Pruning 50.00, random (ONP's count) 50.00 | ONP above the others " \
           "| ONP 60.00 | yes |" in section


def test_an_optional_defense_gets_columns_only_where_measured_and_says_on_how_many_models():
    runs = [(f"{n}.json", _run("2026-01-01", 0, 0.05, split="test", name=n)) for n in ("a", "b")]
    assert "ANP" not in render_benchmarks(runs)
    runs[0][1]["cases"][0]["rows"].append({**_row("anp", 0.70, 0.02, 9), "der": 0.9})
    text = render_benchmarks(runs)
    assert "| ONP ASR % | ONP CA drop | CLP ASR % |" in text and "| ANP ASR % | ANP CA drop |" in text
    targets = text.split("### Targets (test split)")[1]
    assert "mean ONP ASR (ANP 2.00% (on 1 of 2 models))" in targets
    # ANP measured on one model only: its DER is shown, but the comparison has no full-coverage baseline.
    assert "| mean DER: ONP 60.00, ANP 90.00 (on 1 of 2 models) | ONP above the others | ONP 60.00 | – |" in targets


def test_compare_records_counts_changed_outcomes_and_masks(tmp_path, capsys):
    """`python -m benchmarks.compare_records OLD NEW`: one row per (model, draw), and the counts say what changed."""
    import copy
    import json

    from benchmarks.compare_records import main

    old = json.loads((RESULTS / "test_final_resnet18_randpatch_gtsrb.json").read_text())
    new = copy.deepcopy(old)
    onp = [row for case in new["cases"] for row in case["rows"] if row["defense"] == "onp"]
    onp[0]["status"] = onp[0]["info"]["status"] = "backdoor remains"  # draw 0: the outcome only
    onp[1]["asr"] += 0.01  # draw 1: the mask's ASR only
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    main([str(tmp_path / "old.json"), str(tmp_path / "new.json")])
    out = capsys.readouterr().out
    assert "| resnet18_randpatch_gtsrb | 0 | sanitized → backdoor remains |" in out
    assert out.count("| resnet18_randpatch_gtsrb |") == 3
    assert out.rstrip().endswith("3 (model, draw) pairs: 1 outcomes changed, 1 masks changed (test ASR or CA drop "
                                 "differ)")


def test_check_reliability_keeps_the_latest_record_and_counts_false_passes_and_refusals(tmp_path):
    """`python -m benchmarks.check_reliability`: the final check's bound against the test drop, per (model, draw)."""
    import copy
    import json

    from benchmarks.check_reliability import checked_pairs, summary

    record = json.loads((RESULTS / "test_final_resnet18_randpatch_gtsrb.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps(record))
    later = copy.deepcopy(record)
    later["date"] = "2099-01-01T00:00:00+00:00"
    onp = next(row for row in later["cases"][0]["rows"] if row["defense"] == "onp")
    onp["ca"] = later["cases"][0]["before"]["ca"] - 0.05  # draw 0 now costs 5 test points: a false pass
    (tmp_path / "b.json").write_text(json.dumps(later))
    pairs = checked_pairs(tmp_path)
    assert sorted(pairs) == [("resnet18_randpatch_gtsrb", d) for d in (0, 1, 2)]
    assert pairs[("resnet18_randpatch_gtsrb", 0)]["file"] == "b.json"
    assert abs(pairs[("resnet18_randpatch_gtsrb", 0)]["test_drop"] - 5.0) < 1e-6
    # the record: draws 0 and 1 passed the bound (0.84, 1.46), draw 2 did not (3.87) at test drop 1.3
    assert summary(list(pairs.values())).startswith(
        "3 pairs: bound within budget on 2, of them test drop over budget on 1 (false pass); bound over budget on "
        "1, of them test drop within budget on 1 (needless refusal)")
    # agent_ablation's runs of the current default are records too; the check's own images-needed is recomputed.
    newest = copy.deepcopy(record)
    newest["date"] = "2100-01-01T00:00:00+00:00"
    check = next(row for row in newest["cases"][2]["rows"] if row["defense"] == "onp")["info"]["final_check"]
    check["backdoor_remains"] = False
    check["clean_accuracy"].update(drop=0.01, upper_bound=0.0219, broken=1, fixed=0, within_budget=False)
    (tmp_path / "c.json").write_text(json.dumps({"machine": {}, "runs": {"until_probes_cut": newest,
                                                                          "graphconv": later}}))
    pairs = checked_pairs(tmp_path)
    assert {pairs[key]["file"] for key in pairs} == {"c.json"} and pairs[("resnet18_randpatch_gtsrb", 2)]["needed"] == 127
    assert "no backdoor evidence) on 1: test drop within budget on 1, test ASR over 20% on 0" in summary(
        list(pairs.values()))


def test_until_probes_cut_check_pairs_each_run_with_the_defaults_on_the_same_cpu(tmp_path):
    """`python -m benchmarks.until_probes_cut_check`: a run with no round marked is the default's own (and a bench
    record of the same CPU must agree); a marked one is paired with the default's record; other CPUs never count."""
    import json

    from benchmarks.until_probes_cut_check import lines, pairs

    def case(draw, asr, ca, marks, status):
        rounds = [{"round": i, "probes_cut": not m, **({"went_on_as_probes_not_cut": True} if m else {})}
                  for i, m in enumerate(marks)]
        return {"name": "m", "draw": draw, "split": "dev", "before": {"asr": 0.9, "ca": 0.8},
                "rows": [{"defense": "onp", "status": status, "asr": asr, "ca": ca, "info": {"rounds": rounds}}]}

    experiment = [case(0, 0.02, 0.79, [False], "sanitized"), case(1, 0.05, 0.77, [True, False], "cannot sanitize"),
                  case(2, 0.04, 0.78, [True, False], "sanitized")]
    (tmp_path / "agent_ablation_x.json").write_text(json.dumps(
        {"machine": {"cpu": "CPU A"}, "runs": {"until_probes_cut": {"cases": experiment}}}))
    (tmp_path / "dev_m.json").write_text(json.dumps({"machine": {"cpu": "CPU A"}, "cases": [
        case(0, 0.02, 0.79, [False], "sanitized"), case(1, 0.85, 0.80, [False], "no backdoor evidence")]}))
    (tmp_path / "test_m.json").write_text(json.dumps({"machine": {"cpu": "CPU B"}, "cases": [
        case(2, 0.01, 0.80, [False], "sanitized")]}))
    found = {new["draw"]: old for new, old in pairs("dev", tmp_path)}
    assert found[0]["source"].startswith("the same run") and "dev_m.json agrees" in found[0]["source"]
    assert found[1]["source"] == "dev_m.json" and found[1]["asr"] == 0.85
    assert found[2] is None  # only another CPU's record: not comparable
    text = "\n".join(lines("dev", tmp_path))
    assert "| gate misses (sanitized or no evidence at ASR > 20%) | 1 | 0 |" in text
    assert "2 (model, draw) pairs with both rows; 1 where until_probes_cut went on" in text


def test_confirmation_check_counts_rejections_on_clean_and_backdoored_models_from_the_latest_record(tmp_path):
    """`python -m benchmarks.confirmation_check`: where the confirmation rule turned a suspicion into exit 0."""
    import copy
    import json

    from benchmarks.confirmation_check import confirmations, summary_lines

    record = json.loads((RESULTS / "agent_ablation_test_upc_resnet18_clean_cifar10_s116.json").read_text())
    (tmp_path / "a.json").write_text(json.dumps(record))
    pairs = confirmations(tmp_path)
    # Only draw 2 asked (amplification, index 5.171), and pruning did not confirm it: a clean model left alone.
    assert list(pairs) == [("resnet18_clean_cifar10_s116", 2)] and not pairs[("resnet18_clean_cifar10_s116", 2)][
        "confirmed"]
    assert summary_lines(pairs) == ["- test, neuron amplification: confirmation asked on 1 (model, draw) pairs, "
                                    "rejected on 1: 1 on clean models (a false alarm avoided), 0 on backdoored ones "
                                    "(a miss, exit 0)"]
    later = copy.deepcopy(record)
    run = later["runs"]["until_probes_cut"]
    run["date"] = "2099-01-01T00:00:00+00:00"
    run["cases"][2]["before"]["asr"] = 0.9  # as if the model were backdoored: the same rejection is now a miss
    (tmp_path / "b.json").write_text(json.dumps(later))
    pairs = confirmations(tmp_path)
    assert pairs[("resnet18_clean_cifar10_s116", 2)]["file"] == "b.json"
    assert "rejected on 1: 0 on clean models (a false alarm avoided), 1 on backdoored ones" in summary_lines(pairs)[0]
