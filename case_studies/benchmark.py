"""Diagnosis benchmark: every case-study scenario, labelled with its true cause, against kddiag's verdict.

Claim: kddiag's top finding names the true cause of a distillation scenario (a diagnosis id, or
`healthy` for pairs where KD works) in at least 90% of scenarios × seeds, and it raises no alarm on
the healthy pairs.

Source: kddiag's own target (docs/literature.md §16: the case studies double as a labelled benchmark).

Setup: runs every other case study (so it regenerates all of case_studies/results), then pools the
scenarios each one marks for the benchmark: a scenario that repeats another study's pair is counted once.
"""
from __future__ import annotations

import json
import time

import numpy as np

from case_studies._harness import FAMILY_MLP, output_dir

TARGET_ACCURACY = 0.9


def score(verdicts: list[dict]) -> dict:
    """Confusion counts (true cause → top finding), top-1 accuracy, false alarms on healthy pairs, and
    false 'healthy' verdicts: runs called healthy whose KD gain's 95% interval lies below 0."""
    confusion: dict[str, dict[str, int]] = {}
    for v in verdicts:
        row = confusion.setdefault(v["true_cause"], {})
        row[v["verdict"]] = row.get(v["verdict"], 0) + 1
    correct = [v["verdict"] == v["true_cause"] for v in verdicts]
    found_anywhere = [v["true_cause"] in {f["id"] for f in v["findings"]} or
                      (v["true_cause"] == "healthy" and v["verdict"] == "healthy") for v in verdicts]
    healthy = [v for v in verdicts if v["true_cause"] == "healthy"]
    return {
        "n_scenarios": len(verdicts),
        "top1_accuracy": sum(correct) / len(verdicts) if verdicts else None,
        "true_cause_among_findings": sum(found_anywhere) / len(verdicts) if verdicts else None,
        "n_healthy": len(healthy),
        "false_alarms": sum(v["verdict"] != "healthy" for v in healthy),
        "n_significant_loss": sum(significant_loss(v) for v in verdicts),
        "false_healthy": sum(v["verdict"] == "healthy" and significant_loss(v) for v in verdicts),
        "confusion": confusion,
        "misses": [v for v, ok in zip(verdicts, correct) if not ok],
    }


def advice_success(trials: list[dict]) -> dict[str, dict]:
    """Per rule, over the runs where its remedy was followed (the same student retrained as the top
    finding's advice says): how many, the share where accuracy rose, and the mean and spread of the change;
    also per family."""
    out: dict[str, dict] = {}
    for rule in sorted({t["rule"] for t in trials}):
        mine = [t for t in trials if t["rule"] == rule]
        changes = np.array([t["change"] for t in mine])
        out[rule] = {"n": len(mine), "helped": int((changes > 0).sum()), "success_rate": float((changes > 0).mean()),
                     "mean_change": float(changes.mean()),
                     "std_change": float(changes.std(ddof=1)) if len(changes) > 1 else 0.0,
                     "families": {family: [t["change"] for t in mine if t["family"] == family]
                                  for family in sorted({t["family"] for t in mine})}}
    return out


def significant_loss(verdict: dict) -> bool:
    """Whether the run's KD gain over its baseline is significantly negative (its 95% interval below 0)."""
    ci = verdict.get("kd_gain_ci95")
    return ci is not None and ci[1] < 0


def passes(scored: dict) -> bool:
    """The target: top-1 ≥ TARGET_ACCURACY, no false alarm on healthy pairs, no false 'healthy'."""
    return bool(scored["top1_accuracy"] is not None and scored["top1_accuracy"] >= TARGET_ACCURACY
                and scored["false_alarms"] == 0 and scored["false_healthy"] == 0)


def by_family(verdicts: list[dict]) -> dict[str, dict]:
    """``score`` per model family (``mlp`` for studies that name none), each with whether it met the target."""
    families = sorted({v.get("family", FAMILY_MLP) for v in verdicts})
    out = {}
    for family in families:
        scored = score([v for v in verdicts if v.get("family", FAMILY_MLP) == family])
        out[family] = {**scored, "passed": passes(scored)}
    return out


# Studies that score no diagnosis and take long, run on their own: the probes against full retraining
# (about an hour on 2 cores) and the real published teachers (about 15 minutes a seed, probes included).
NOT_SCORED = ("benchmark", "probe-validation", "real-teachers")


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run every study, score kddiag's verdicts, write ``benchmark.json`` and ``benchmark.md``; return the result."""
    from case_studies import STUDIES
    from kddiag.report.json import write_atomic

    start = time.perf_counter()
    studies, skipped = {}, {}
    for name, module in STUDIES.items():
        if name in NOT_SCORED:
            continue
        missing = getattr(module, "missing_extra", lambda: None)()  # a study that needs an optional extra
        if missing:
            skipped[name] = missing
            print(f"benchmark: skipping {name}: {missing}")
            continue
        studies[name] = module.main(seeds=seeds, quick=quick, out_dir=out_dir)
    verdicts = [v for result in studies.values() for v in result["verdicts"] if v["benchmark"]]
    trials = [t for result in studies.values() for t in result.get("advice", [])]
    result = {
        "study": "benchmark", "seeds": list(tuple(seeds)[:1] if quick else seeds), "quick": quick,
        "seconds": round(time.perf_counter() - start, 1),
        "target_top1_accuracy": TARGET_ACCURACY,
        **score(verdicts),
        "families": by_family(verdicts),
        "advice": advice_success(trials), "advice_trials": trials,
        "studies": {name: {"reproduced": r["reproduced"], "seconds": r["seconds"],
                           "checks": r["checks"]} for name, r in studies.items()},
        "skipped": skipped,
    }
    result["passed"] = all(family["passed"] for family in result["families"].values())
    out = output_dir(out_dir, quick)
    write_atomic({out / "benchmark.json": json.dumps(result, indent=1) + "\n",
                  out / "benchmark.md": render_markdown(result)})
    print(render_markdown(result, brief=True))
    return result


def render_markdown(result: dict, *, brief: bool = False) -> str:
    """Confusion table, accuracy, false alarms, time per study; with ``brief=False`` each miss and its evidence."""
    ids = sorted({c for row in result["confusion"].values() for c in row} | set(result["confusion"]))
    lines = ["## benchmark" + ("  (quick mode: a smoke test, not a result)" if result["quick"] else ""), "",
             f"Seeds {', '.join(map(str, result['seeds']))}; {result['n_scenarios']} scenario runs; "
             f"all studies together {result['seconds']:.0f} s.", "",
             "Rows: true cause; columns: kddiag's top finding.", "",
             "| true cause \\ verdict | " + " | ".join(ids) + " |", "|---" * (len(ids) + 1) + "|"]
    for cause in sorted(result["confusion"]):
        row = result["confusion"][cause]
        lines.append(f"| {cause} | " + " | ".join(str(row.get(i, "")) for i in ids) + " |")
    lines += ["", f"Per model family (target: top-1 ≥ {result['target_top1_accuracy']:.0%}, no false alarm on "
                  "healthy pairs, no false 'healthy' on a run whose KD gain is significantly negative):", "",
              "| family | runs | top-1 | true cause among the findings | false alarms (healthy pairs) "
              "| false 'healthy' (gain < 0 significantly) | target met |", "|---|---|---|---|---|---|---|"]
    for family, f in result["families"].items():
        lines.append(f"| {family} | {f['n_scenarios']} | {f['top1_accuracy']:.1%} | "
                     f"{f['true_cause_among_findings']:.1%} | {f['false_alarms']} of {f['n_healthy']} | "
                     f"{f['false_healthy']} of {f['n_significant_loss']} | {'yes' if f['passed'] else '**no**'} |")
    lines += ["", f"**All families pooled:** top-1 {result['top1_accuracy']:.1%}; true cause among the findings "
                  f"{result['true_cause_among_findings']:.1%}; false alarms {result['false_alarms']} of "
                  f"{result['n_healthy']}; false 'healthy' {result['false_healthy']} of "
                  f"{result['n_significant_loss']}.",
              f"**Target met in every family:** {'yes' if result['passed'] else 'no'}.", ""]
    if result.get("advice"):
        lines += ["Advice followed: where the top finding names a setting (its remedy: τ or α), the same student was "
                  "retrained with it; success = held-out accuracy rose.", "",
                  "| finding | runs | success rate | mean change ± std | by family (runs: mean change) |",
                  "|---|---|---|---|---|"]
        for rule, a in result["advice"].items():
            families = "; ".join(f"{family} ({len(c)}: {100 * float(np.mean(c)):+.1f} pt)"
                                 for family, c in a["families"].items())
            lines.append(f"| {rule} | {a['n']} | {a['helped']}/{a['n']} ({a['success_rate']:.0%}) | "
                         f"{100 * a['mean_change']:+.1f} ± {100 * a['std_change']:.1f} pt | {families} |")
        lines.append("")
    lines += ["| study | reproduced | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if s['reproduced'] else 'no'} | {s['seconds']:.0f} |"
              for name, s in result["studies"].items()]
    lines += [f"| {name} | skipped: {why} | – |" for name, why in result.get("skipped", {}).items()]
    if not brief and result["misses"]:
        lines += ["", "### Misses", "", "| study / scenario | seed | true cause | KD gain [95% CI] "
                  "| findings (severity: evidence) |", "|---|---|---|---|---|"]
        for v in result["misses"]:
            found = "; ".join(
                f"{f['id']} {f['severity']:.2f}: " + ", ".join(
                    f"{e['metric']}@{e['dataset']} = {_number(e['value'])} {e['comparison']} {_number(e['threshold'])}"
                    for e in f["evidence"]) for f in v["findings"]) or "none"
            lines.append(f"| {v['study']} / {v['scenario']} | {v['seed']} | {v['true_cause']} | {_gain(v)} | {found} |")
    return "\n".join(lines) + "\n"


def _gain(verdict: dict) -> str:
    if verdict.get("kd_gain") is None:
        return "–"
    ci = verdict.get("kd_gain_ci95")
    return f"{100 * verdict['kd_gain']:+.1f} pt" + ("" if ci is None else f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]")


def _number(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


if __name__ == "__main__":
    main()
