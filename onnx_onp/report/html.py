"""The HTML report: one self-contained file (figures inlined as PNG data URIs, no script, no network).

Built from the JSON report alone (``render_html(report)``), so any saved report.json can be turned into a
page later: ``onnx-onp report report.json -o report.html``. Written for a reader who has never heard of ONP:
the verdict and key numbers first, then the evidence, then the details.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from .verdict import NOT_SANITIZED, STATUS_REMAINS, STATUS_SANITIZED, SUSPECTED

_RED, _BLUE, _GREY = "#d62728", "#6baed6", "#bdbdbd"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _e(text) -> str:
    return html.escape(str(text))


# ---------------------------------------------------------------- figures


def _per_class_bars(values, target: int, flagged: bool, ylabel: str, title: str, ylim=None) -> str:
    """One bar per class, the flagged suspect in red, the median dashed: the picture every detector gives."""
    values = np.asarray(values, dtype=float)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.bar(np.arange(len(values)), values, color=[_RED if c == target and flagged else _BLUE
                                                  for c in range(len(values))])
    ax.axhline(np.median(values), color="k", lw=0.8, ls="--", label="median over classes")
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=9, loc="left")
    if len(values) <= 20:
        ax.set_xticks(np.arange(len(values)))
    ax.legend(fontsize=8)
    return _png(fig)


def _flagged_by(report: dict, detector: str) -> bool:
    # Only the detector that decided colours its suspect: the others may name another class.
    return report["backdoor_suspected"] and report.get("detector", "trigger synthesis") == detector


def figure_trigger_norms(report: dict) -> str:
    ts = report["trigger_synthesis"]
    target = ts["suspected_target"]
    return _per_class_bars(ts["mask_l1_per_class"], target, _flagged_by(report, "trigger synthesis"),
                           "trigger size (mask L1)",
                           f"Smallest trigger that sends clean images to each class; class {target}: anomaly index "
                           f"{ts['anomaly_index']:.2f} (threshold {ts['threshold']})")


def figure_perturbation_shares(report: dict) -> str:
    scan = report["neuron_perturbation"]
    target = scan["suspected_target"]
    return _per_class_bars(100 * np.array(scan["share_per_class"]), target,
                           _flagged_by(report, "neuron perturbation"), "images moved (%)",
                           f"Share of other classes' clean images a ±{scan['epsilon']:g} neuron perturbation sends "
                           f"to each class; class {target}: anomaly index {scan['anomaly_index']:.2f}", ylim=(0, 100))


def figure_amplification_counts(report: dict) -> str:
    scan = report["neuron_amplification"]
    target = scan["suspected_target"]
    factors = " and ".join(f"{f:g}" for f in scan["factors"])
    return _per_class_bars(scan["count_per_class"], target, _flagged_by(report, "neuron amplification"), "settings",
                           f"Single groups amplified (x{factors}, {scan['settings']} settings) that send nearly all "
                           f"other images to each class; class {target}: anomaly index {scan['anomaly_index']:.2f}")


def figure_max_margins(report: dict) -> str:
    scan = report["max_margin"]
    target = scan["suspected_target"]
    return _per_class_bars(scan["margin_per_class"], target, _flagged_by(report, "max margin"), "logit margin",
                           f"Largest logit margin over the other classes that inputs optimised from noise reach for "
                           f"each class; class {target}: anomaly index {scan['anomaly_index']:.2f}")


def figure_pruned_per_layer(report: dict) -> str:
    rows = report["pruned"]["per_layer_counts"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.22 * len(rows) + 0.8)))
    y = np.arange(len(rows))
    ax.barh(y, [r["neurons"] for r in rows], color="#e5e5e5", label="neurons in the layer")
    ax.barh(y, [r["pruned"] for r in rows], color=_RED, label="pruned")
    ax.set_yticks(y)
    ax.set_yticklabels([r["layer"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("neurons (log scale above 10)")
    for i, r in enumerate(rows):
        if r["pruned"]:
            ax.text(r["pruned"], i, f" {r['pruned']}", va="center", fontsize=7, color=_RED)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def figure_policy(detail: dict) -> str:
    """The paper's Fig. 5 style: ONP's policy for one layer next to what CLP and Fine-Pruning look at."""
    units = np.arange(detail["units"])
    pruned = np.array(detail["pruned"], dtype=bool)
    lipschitz = np.array(detail["lipschitz"])
    clp_cut = lipschitz.mean() + 3 * lipschitz.std()
    plt = _plt()
    fig, axes = plt.subplots(3, 1, figsize=(8, 5.6), sharex=True)
    panels = [("ONP: prune probability (first round); red = pruned", detail["prune_probability"], None),
              ("CLP's signal: channel Lipschitz bound (CLP prunes above the dashed line, mean + 3 std)",
               lipschitz, clp_cut),
              ("Fine-Pruning's signal: mean clean activation (it prunes the least active first)",
               detail["mean_clean_activation"], None)]
    for ax, (title, values, line) in zip(axes, panels):
        ax.bar(units, values, color=np.where(pruned, _RED, _BLUE), width=0.85)
        if line is not None:
            ax.axhline(line, color="k", lw=0.8, ls="--")
        ax.set_title(title, fontsize=9, loc="left")
    axes[-1].set_xlabel(f"unit of {detail['layer']} ({detail['op']}, {detail['units']} units)")
    fig.tight_layout()
    return _png(fig)


def figure_graph(detail: dict) -> str | None:
    """The layer's neuron graph: the previous layer's neurons (left) feed this layer's (right)."""
    graph = detail.get("graph")
    if not graph:
        return None
    nodes = graph["nodes"]
    own = [i for i, n in enumerate(nodes) if n["layer_node"]]
    context = [i for i, n in enumerate(nodes) if not n["layer_node"]]
    pos = {}
    for column, members in ((1.0, own), (0.0, context)):
        for rank, i in enumerate(members):
            pos[i] = (column, 1 - (rank + 0.5) / max(len(members), 1))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 6))
    for src, dst, weight, kind in graph["edges"]:
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        marked = nodes[src]["pruned"] or nodes[dst]["pruned"]
        if kind == "similarity":  # within the layer: an arc to the right of the column
            t = np.linspace(0, 1, 20)
            bulge = 0.05 + 0.3 * abs(y1 - y0)
            ax.plot(x0 + bulge * np.sin(np.pi * t), y0 + (y1 - y0) * t, lw=0.7,
                    color=_RED if marked else "#31a354", alpha=0.6 if marked else 0.15 + 0.3 * weight)
        else:
            ax.plot([x0, x1], [y0, y1], color=_RED if marked else "#636363", lw=0.3 + 1.5 * weight,
                    alpha=(0.25 + 0.6 * weight) if marked else 0.04 + 0.4 * weight)
    for members, column in ((own, 1.0), (context, 0.0)):
        for pruned in (False, True):
            chosen = [i for i in members if nodes[i]["pruned"] == pruned]
            ax.scatter([pos[i][0] for i in chosen], [pos[i][1] for i in chosen], zorder=3 + pruned,
                       c=_RED if pruned else (_BLUE if column == 1.0 else _GREY), edgecolors="none",
                       s=45 if pruned else (18 if len(members) < 80 else 6))
    for i in own:
        if nodes[i]["pruned"]:
            ax.annotate("unit " + nodes[i]["label"].rsplit(":", 1)[-1], pos[i], xytext=(-8, 0), zorder=6,
                        textcoords="offset points", fontsize=7, color=_RED, va="center", ha="right",
                        bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 0.5})
    context_layers = sorted({nodes[i]["label"].rsplit(":", 1)[0] for i in context})
    ax.text(0.0, 1.03, "feeding neurons\n" + (", ".join(context_layers)[:60] or "(input)"), ha="center",
            fontsize=8, transform=ax.transData)
    ax.text(1.0, 1.03, f"{detail['layer']}\n(red: pruned)", ha="center", fontsize=8)
    ax.set_xlim(-0.3, 1.5)
    ax.set_ylim(-0.02, 1.12)
    ax.axis("off")
    shown = len(graph["edges"])
    ax.set_title(f"Neuron graph of {detail['layer']}: lines = connection strength (L1 of the weights), arcs = "
                 f"similar neurons; red = edges of pruned neurons ({shown} of {graph['edges_total']} edges drawn)",
                 fontsize=8, loc="left")
    return _png(fig)


def figure_reward_curve(report: dict) -> str | None:
    curve = report.get("reward_curve") or []
    if not curve:
        return None
    x = np.arange(len(curve))
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True)
    top.plot(x, [r["mean_reward"] for r in curve], label="mean reward of the sampled prunings")
    top.plot(x, [r["best_reward"] for r in curve], label="best reward")
    bottom.plot(x, [r["ca"] for r in curve], label="clean accuracy (training part)", color="#2ca02c")
    bottom.plot(x, [r["asr"] for r in curve], label="synthesized-trigger success", color=_RED)
    for axis in (top, bottom):
        for i in range(1, len(curve)):
            if curve[i]["round"] != curve[i - 1]["round"]:
                axis.axvline(i - 0.5, color="k", lw=0.6, ls=":")
        axis.legend(fontsize=8)
    bottom.set_xlabel("agent training step (dotted lines: a new round after re-synthesizing the trigger)")
    top.set_title("What the agent learned: reward per step (higher = backdoor signal removed, accuracy kept, "
                  "few neurons)", fontsize=9, loc="left")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:960px;margin:24px auto;
padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.5em;margin-bottom:4px}h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
.verdict{padding:14px 18px;border-radius:6px;font-size:1.25em;font-weight:600;margin:14px 0}
.bad{background:#fde0dc;border-left:6px solid #d62728}.good{background:#e3f4e1;border-left:6px solid #2ca02c}
.warn{background:#fff3cd;border-left:6px solid #e6a100}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 10px;text-align:left;
font-size:.92em}th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:6px 0}.muted{color:#666;font-size:.9em}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px;font-size:.9em}
"""


def _table(rows, header=None, numeric=()) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td class='n'>{_e(v)}</td>" if i in numeric else f"<td>{v}</td>"
                                    for i, v in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _recheck(round_record: dict) -> str:
    """What the deciding detector found when run again on the pruned model (each detector records its own)."""
    if "resynthesized_mask_l1" in round_record:
        return f"re-synthesized trigger size {round_record['resynthesized_mask_l1']}"
    if "reperturbed_share" in round_record:
        return f"perturbation sends {100 * round_record['reperturbed_share']:.1f}% to the target"
    keys = [k for k in round_record if k not in ("round", "pruned_groups", "chosen_from", "holdout_ca",
                                                 "holdout_asr_synthesized", "backdoor_still_found",
                                                 "holdout_probe_asr_unpruned", "probes_cut",
                                                 "went_on_as_probes_not_cut")]
    return _e(", ".join(f"{k} {round_record[k]}" for k in keys)) or "-"


def _probes(round_record: dict) -> str:
    """The probes' held-out ASR, unpruned -> with the round's mask (reports before 1.18 lack the first)."""
    after = _pct(round_record.get("holdout_asr_synthesized"))
    if round_record.get("holdout_probe_asr_unpruned") is None:
        return after
    return f"{_pct(round_record['holdout_probe_asr_unpruned'])} → {after}" + (
        "" if round_record.get("probes_cut", True) else " (not cut to half)")


def _figure(src: str | None, alt: str, caption: str) -> str:
    if not src:
        return ""
    return f"<figure><img src='{src}' alt='{_e(alt)}'><figcaption class='muted'>{caption}</figcaption></figure>"


def _outcome_text(report: dict) -> str:
    """What pruning achieved, in the words the outcome allows: "removed" only for a sanitized model."""
    status, neurons = report["status"], report["pruned"]["neurons"]
    budget = 100 * report["config"]["decide"]["max_ca_drop"]
    check = report.get("final_check")
    if status == STATUS_SANITIZED:
        checked = (f" On {check['images']} defense images the search never saw, the detected trigger no longer "
                   f"works and the clean-accuracy drop is at most {100 * check['clean_accuracy']['upper_bound']:.1f} "
                   f"points ({100 * check['clean_accuracy']['confidence']:.0f}% bound).") if check else ""
        return (f"onnx-onp removed the {neurons} neurons that carry it while keeping clean accuracy within the budget "
                f"of {budget:.1f} points; {_pct(report['prediction_agreement_holdout'])} of held-out clean images "
                f"keep their answer.{checked}")
    if status == STATUS_REMAINS:
        return (f"onnx-onp pruned {neurons} neurons, but on defense images the search never saw the final check still "
                f"finds the backdoor (see below): it remains and the model should not ship.")
    if neurons and check:
        needed = check["clean_accuracy"].get("images_needed")
        more = (f" The drop seen is small; {check['images']} images are too few to show it is within budget. At the "
                f"same rates about {needed} check images would: run again with {check['defense_images_needed']} "
                f"clean images (--limit).") if needed and check.get("defense_images_needed") else ""
        return (f"The {neurons} neurons that carry it cannot be pruned within the clean-accuracy budget of "
                f"{budget:.1f} points on images the search never saw (upper bound "
                f"{100 * check['clean_accuracy']['upper_bound']:.1f} points): the model should not ship.{more}")
    return "No pruning within the clean-accuracy budget removed it: the model should not ship."


def _final_check_section(check: dict) -> str:
    ca = check["clean_accuracy"]
    rows = [(_e(item["source"]), _e(("found" if item["found"] else "too weak to decide"
                                     if not item.get("conclusive", True) else "not found")
                                    + ("" if item["decisive"] else " (recorded, does not decide)")
                                    + (f"; ASR {_pct(item['asr_before'])} → {_pct(item['asr_after'])}"
                                       if "asr_after" in item else "")
                                    + (f"; target margin {item['target_margin_before']} → "
                                       f"{item['target_margin_after']} (runner-up {item['runner_up_margin']})"
                                       if "runner_up_margin" in item else "")))
            for item in check["residual_evidence"]]
    rows.append(("Clean accuracy", _e(f"{_pct(ca['before'])} → {_pct(ca['after'])}; drop {100 * ca['drop']:.1f} points, "
                                   f"upper bound {100 * ca['upper_bound']:.1f} at {100 * ca['confidence']:.0f}% "
                                   f"(budget {100 * ca['budget']:.1f}; {ca['broken']} images broken, {ca['fixed']} "
                                   f"fixed)")))
    return (f"<h2>Final check</h2><p>On {check['images']} defense images that neither the search nor the decision "
            f"used: does the backdoor still work, and what does the pruning cost?</p>" + _table(rows))


def render_html(report: dict) -> str:
    """The whole page as a string."""
    v = report["verdict"]
    suspected = v["verdict"] == SUSPECTED
    model = report["model"]
    status = report["status"]
    css_class = "bad" if suspected and status in NOT_SANITIZED else "warn" if suspected else "good"
    ca = report["clean_accuracy_holdout"]
    audit = report.get("audit") or {}
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>onnx-onp report: {_e(v['verdict'])} ({_e(_name(model))})</title><style>{_CSS}</style>",
             "</head><body>",
             f"<h1>Backdoor audit of <code>{_e(_name(model))}</code></h1>",
             f"<div class='muted'>onnx-onp {_e(report['tool']['version'])}, {_e(report['command'])}, "
             f"{_e(report['started_at'])}</div>",
             f"<div class='verdict {css_class}'>Verdict: {_e(v['verdict'])}"
             f"<div style='font-size:.7em;font-weight:400'>Outcome: {_e(status)}; exit code "
             f"{report['exit_code']}</div></div>"]

    for warning in report.get("warnings", []):
        parts.append(f"<div class='verdict warn' style='font-size:1em'>Warning: {_e(warning)}</div>")
    key = [("Suspected target class", v["suspected_target"]),
           ("Anomaly index (≥ " + f"{v['threshold']} means suspected)", f"{v['anomaly_index']:.2f}"),
           ("Neurons pruned", f"{report['pruned']['neurons']} in {report['pruned']['groups']} groups"),
           ("Clean accuracy on held-out defense data", f"{_pct(ca['before'])} → {_pct(ca['after'])}"),
           ("Clean predictions unchanged by the pruning", _pct(report["prediction_agreement_holdout"]))]
    if "clean_accuracy" in audit:
        key.append(("Clean accuracy on the test data", f"{_pct(audit['clean_accuracy']['before'])} → "
                                                        f"{_pct(audit['clean_accuracy']['after'])}"))
    if "attack_success_rate" in audit:
        key.append(("Attack success rate (real trigger)", f"{_pct(audit['attack_success_rate']['before'])} → "
                                                          f"{_pct(audit['attack_success_rate']['after'])}"))
    parts.append("<h2>Key numbers</h2>" + _table([(_e(k), _e(val)) for k, val in key]))

    parts.append("<h2>What this means</h2><p>")
    if suspected and v.get("detector") == "neuron perturbation":
        parts.append(
            f"No class can be reached with an unusually small input patch, but a small change of every neuron's "
            f"strength (±{100 * report['neuron_perturbation']['epsilon']:g}%) sends "
            f"{_pct(v['target_perturbation_share'])} of the other classes' clean images to class "
            f"{v['suspected_target']}, against a median of {_pct(v['others_median_perturbation_share'])} for "
            f"the other classes. Backdoors whose trigger is not a patch (warps, image-wide signals) leave such a "
            f"shortcut inside the network. ")
        parts.append(_outcome_text(report))
    elif suspected and v.get("detector") == "neuron amplification":
        parts.append(
            f"No class can be reached with an unusually small input patch or neuron perturbation, but amplifying "
            f"single neuron groups sends nearly all clean images to class {v['suspected_target']} in "
            f"{v['target_amplification_count']} of {report['neuron_amplification']['settings']} settings, against a "
            f"median of {v['others_median_amplification_count']:g} for the other classes. A backdoor target pulls "
            f"strong signals towards itself this way; it is how the image-wide SIG trigger was found in the "
            f"benchmark. ")
        parts.append(_outcome_text(report))
    elif suspected and v.get("detector") == "max margin":
        parts.append(
            f"No class can be reached with an unusually small input patch, a neuron perturbation or amplified "
            f"neurons, but inputs optimised from noise make the network score class {v['suspected_target']} with a "
            f"logit margin of {v['target_max_margin']:g}, against a median of {v['others_median_max_margin']:g} for "
            f"the other classes. A backdoor's target reaches such margins whatever its trigger looks like. ")
        first = report.get("unconfirmed_suspicion")
        if first:
            parts.append(f"(The {_e(first['detector'])} detector suspected a backdoor first, but the pruning did not "
                         f"confirm it, so this last-resort detector was asked and its suspicion acted on.) ")
        parts.append(_outcome_text(report))
    elif suspected:
        parts.append(
            f"Among the {len(report['trigger_synthesis']['mask_l1_per_class'])} classes, class "
            f"{v['suspected_target']} can be reached from clean images with an unusually small input pattern "
            f"(size {v['target_trigger_l1']} against a median of {v['others_median_trigger_l1']} for the other "
            f"classes). Hidden backdoors create exactly such shortcuts. ")
        parts.append(_outcome_text(report))
    else:
        parts.append("No class stands out: no reverse-engineered trigger is unusually small"
                     + (", no small neuron perturbation sends the images of other classes to one class"
                        if "neuron_perturbation" in report else "")
                     + (", no class collects an outlier number of amplified neurons"
                        if "neuron_amplification" in report else "")
                     + (", and no class reaches an outlier logit margin from noise"
                        if "max_margin" in report else "")
                     + ", so there is no backdoor evidence and nothing was changed. This is evidence, not proof: "
                       "a trigger may escape every test.")
    parts.append(f"</p><p class='muted'>Rule: {_e(v['rule'])}.</p>")
    if report.get("final_check"):
        parts.append(_final_check_section(report["final_check"]))
    if "attack_success_rate" not in audit:
        parts.append("<p class='muted'>No poisoned data or trigger spec was given, so the real attack success "
                     "rate is not measured here (<code>--spec</code> or <code>--poisoned-data</code> add it).</p>")

    parts.append("<h2>Evidence: trigger synthesis</h2>")
    parts.append(_figure(figure_trigger_norms(report), "trigger size per class",
                         "For each class, the smallest pattern (mask L1 norm) that sends clean images there. "
                         "A backdoor target needs far less than the others."))
    if "neuron_perturbation" in report:
        parts.append("<h2>Evidence: neuron perturbation</h2>")
        parts.append(_figure(figure_perturbation_shares(report), "neuron perturbation per class",
                             "For each class, the share of the other classes' clean images that one bounded "
                             "change of the neurons' strengths sends there. A backdoor target takes almost all."))
    if "neuron_amplification" in report:
        parts.append("<h2>Evidence: neuron amplification</h2>")
        parts.append(_figure(figure_amplification_counts(report), "neuron amplification per class",
                             "For each class, how many single neuron groups, amplified, send at least 90% of the "
                             "other classes' clean images there. A backdoor target collects far more."))
    if "max_margin" in report:
        parts.append("<h2>Evidence: maximum margin</h2>")
        parts.append(_figure(figure_max_margins(report), "maximum logit margin per class",
                             "For each class, the largest margin by which inputs optimised from noise make the "
                             "network prefer it. A backdoor target reaches far more."))
    if v["carrier_neurons"]:
        parts.append("<p>Neurons that carry the signal (pruned, strongest activation shift under the synthesized "
                     "trigger first): " + ", ".join(f"<code>{_e(n)}</code>" for n in v["carrier_neurons"]) + "</p>")

    if report["pruned"]["groups"]:
        parts.append("<h2>Where neurons were pruned</h2>")
        parts.append(_figure(figure_pruned_per_layer(report), "pruned neurons per layer",
                             "Pruned neurons (red) out of each layer's neurons."))
        detail = report.get("most_affected_layer")
        if detail:
            parts.append(f"<h2>The most affected layer: <code>{_e(detail['layer'])}</code></h2>")
            parts.append(_figure(figure_policy(detail), "pruning policy",
                                 "The learned policy for this layer (top) next to the signals two published "
                                 "defenses use, CLP and Fine-Pruning; red bars are the units onnx-onp pruned."))
            parts.append(_figure(figure_graph(detail), "neuron graph",
                                 "The graph the agent sees for this layer: nodes are neurons, edges are weights "
                                 "and similarities."))
        parts.append(_figure(figure_reward_curve(report), "reward curve",
                             "The reinforcement-learning agent's reward while it learned which neurons to prune."))
        rows = [(f"<code>{_e(layer)}</code>", _e(", ".join(map(str, units))))
                for layer, units in report["pruned"]["per_layer"].items()]
        parts.append("<h3>Pruned units</h3>" + _table(rows, header=("layer", "units")))
        if report.get("rounds"):
            parts.append("<h3>Rounds</h3>" + _table(
                [(r["round"] + 1, r["pruned_groups"], _pct(r.get("holdout_ca")), _probes(r), _recheck(r),
                  "yes" if r["backdoor_still_found"] else "no") for r in report["rounds"]],
                header=("round", "groups pruned so far", "held-out CA", "probes' held-out ASR",
                        "the detector again on the pruned model", "backdoor still found"), numeric=(0, 1)))
        if report.get("pruned_back", {}).get("restored"):
            back = report["pruned_back"]
            parts.append(f"<p>Given back after the rounds (the probe did not need them; clean accuracy on the "
                         f"defense data {_pct(back['defense_ca']['before'])} → {_pct(back['defense_ca']['after'])}, "
                         f"probe ASR {_pct(back['probe_asr']['before'])} → {_pct(back['probe_asr']['after'])}): "
                         f"{_e(', '.join(back['restored']))}.</p>")

    if audit:
        rows = []
        for key_name, label in (("clean_accuracy", "clean accuracy (test data)"),
                                ("attack_success_rate", "attack success rate (real trigger)"),
                                ("robust_accuracy", "robust accuracy (triggered images, true label)")):
            if key_name in audit:
                rows.append((label, _pct(audit[key_name]["before"]), _pct(audit[key_name]["after"])))
        parts.append("<h2>Measured on test data (audit only; never used to decide)</h2>"
                     + _table(rows, header=("", "before", "after"), numeric=(1, 2)))

    seconds = report["seconds"]
    fingerprint = [("File", _e(model.get("path"))), ("SHA-256", f"<code>{_e(model['sha256'])}</code>"),
                   ("Producer", _e(model.get("producer") or "?")), ("Opset", _e(model.get("opset"))),
                   ("Input", _e(f"{model['input']['name']} {model['input']['shape']}")),
                   ("Classes", _e(model["output"]["classes"]))]
    parts.append("<h2>Model fingerprint</h2>" + _table(fingerprint))
    run = [("Tool", _e(f"onnx-onp {report['tool']['version']} ({report['command']})")),
           ("Report schema", _e(f"{report['schema']['name']} {report['schema']['version']}")),
           ("Seed", _e(report["seed"])), ("onnxruntime provider", _e(report["provider"])),
           ("Defense data", _e(f"{report['defense_data']['samples']} clean images "
                               f"({report['defense_data']['holdout']} held out)")),
           ("Time", _e(f"{seconds['total']:.1f} s, {100 * seconds['onnxruntime_share']:.0f}% in onnxruntime")),
           ("Started", _e(report["started_at"]))]
    if report.get("output"):
        run.append(("Sanitized model", _e(report["output"]["path"])))
    parts.append("<h2>Run</h2>" + _table(run))
    parts.append("</body></html>")
    return "\n".join(parts)


def _name(model: dict) -> str:
    path = model.get("path") or "model"
    return path.replace("\\", "/").rsplit("/", 1)[-1]
