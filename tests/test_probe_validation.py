"""The probe-validation case study: its scoring against hand-counted examples, its design rule, and one
tiny end-to-end run (one pair, quick mode)."""
from __future__ import annotations

import json

import numpy as np

import pytest

from case_studies import probe_validation as pv


def case(full_change, full_ci, predicted, *, helped=False, hurt=False, probe_ci=None, design="d", scenario="s",
         seed=0, alpha=0.45, scale=1.0):
    return {"family": "mlp", "scenario": scenario, "seed": seed, "alpha": alpha, "teacher_scale": scale,
            "full": {"change": full_change, "ci95": list(full_ci)},
            "probes": {design: {"predicted": predicted, "helped": helped, "hurt": hurt, "ci95": probe_ci}}}


CASES = [
    case(+0.03, (0.01, 0.05), +0.02, helped=True),   # decided up, probe up: agrees, helped right
    case(-0.04, (-0.06, -0.02), -0.01, hurt=True),   # decided down, probe down: agrees, hurt right
    case(-0.02, (-0.03, -0.01), +0.01, helped=True),  # decided down, probe up: disagrees, helped but hurt
    case(+0.01, (-0.01, 0.03), -0.05, hurt=True),    # undecided: not in the agreement, hurt call not confirmed
    case(+0.02, (0.005, 0.04), 0.0),                 # decided up, probe exactly 0: disagrees
    case(+0.02, (0.005, 0.04), None),                # decided up, arm failed: disagrees
    case(-0.01, (-0.02, 0.0), +0.01, helped=True),   # undecided (upper bound 0), helped and lower, not significant
]


def test_score_counts_agreement_and_calls_as_counted_by_hand():
    got = pv.score(CASES, "d")
    assert (got["cases"], got["decided"], got["agreed"]) == (7, 5, 2)
    assert got["agreement"] == pytest.approx(0.4)
    assert (got["helped_calls"], got["helped_right"], got["helped_but_hurt"], got["helped_but_lower"]) == (3, 1, 1, 2)
    assert (got["hurt_calls"], got["hurt_right"], got["hurt_but_helped"]) == (2, 1, 0)
    assert got["missed_helps"] == 2  # the two decided-up cases the probe did not call helped


def test_sure_agreement_counts_only_decided_cases_where_the_probe_interval_excludes_zero():
    cases = [case(+0.03, (0.01, 0.05), +0.02, probe_ci=(0.01, 0.03)),    # sure, agrees
             case(-0.03, (-0.05, -0.01), +0.02, probe_ci=(0.005, 0.03)),  # sure, disagrees
             case(-0.03, (-0.05, -0.01), +0.01, probe_ci=(-0.01, 0.03)),  # not sure: out
             case(+0.01, (-0.01, 0.03), +0.02, probe_ci=(0.01, 0.03)),    # sure but undecided: out
             case(+0.03, (0.01, 0.05), None)]                             # no score: out
    got = pv.score(cases, "d")
    assert (got["decided"], got["agreed"], got["sure"], got["sure_agreed"]) == (4, 1, 2, 1)
    assert got["sure_agreement"] == pytest.approx(0.5)


def test_no_verdict_counts_while_the_control_was_still_learning():
    still = case(-0.02, (-0.03, -0.01), +0.01, helped=True, hurt=False)
    still["probes"]["d"]["still_learning"] = True
    got = pv.score([still], "d")
    assert (got["helped_calls"], got["helped_but_hurt"], got["agreed"], got["decided"]) == (0, 0, 0, 1)


def test_score_with_nothing_decided_has_no_agreement():
    assert pv.score([CASES[3]], "d")["agreement"] is None


def test_kd_helps_pairs_are_those_whose_labels_only_arm_lost_beyond_noise():
    cases = [case(-0.05, (-0.07, -0.03), -0.01, alpha=0.0, scenario="helps"),
             case(-0.05, (-0.07, 0.01), -0.01, alpha=0.0, scenario="noise"),
             case(-0.05, (-0.07, -0.03), -0.01, alpha=0.0, scale=2.0, scenario="calibrated"),
             case(-0.05, (-0.07, -0.03), -0.01, alpha=0.45, scenario="half")]
    assert pv.kd_helps_pairs(cases) == {("mlp", "helps", 0)}


def tuning_entry(agreement_all, agreement_helps, seconds, *, helped=10, helped_but_hurt=0):
    return {"all": {"agreement": agreement_all, "helped_calls": helped, "helped_but_hurt": helped_but_hurt},
            "kd_helps": {"agreement": agreement_helps}, "cost": {"probe_seconds": seconds}}


def test_choose_design_takes_the_cheapest_that_meets_every_bar():
    designs = tuple(pv.Design(n) for n in ("cheap-but-wrong-on-kd", "cheap-but-hurts", "ok", "ok-dearer"))
    tuning = {"cheap-but-wrong-on-kd": tuning_entry(0.95, 0.6, 1.0),
              "cheap-but-hurts": tuning_entry(0.9, 0.9, 1.5, helped=10, helped_but_hurt=2),
              "ok": tuning_entry(0.86, 0.9, 3.0), "ok-dearer": tuning_entry(0.99, 1.0, 6.0)}
    name, why = pv.choose_design(tuning, designs)
    assert name == "ok" and "ok-dearer" in why
    del tuning["ok"]
    assert pv.choose_design(tuning, designs[:2] + designs[3:])[0] == "ok-dearer"


def test_choose_design_without_an_eligible_one_takes_the_best_on_kd_helps():
    designs = (pv.Design("a"), pv.Design("b"))
    tuning = {"a": tuning_entry(0.8, 0.5, 1.0), "b": tuning_entry(0.7, 0.7, 2.0)}
    name, why = pv.choose_design(tuning, designs)
    assert name == "b" and "no design met the bar" in why


def _pair(n_transfer=600, epochs=40, lr=3e-3, batch_size=None):
    from types import SimpleNamespace

    task = SimpleNamespace(train=SimpleNamespace(labels=np.zeros(n_transfer, dtype=int)))
    return pv.Pair(None, None, task, None, None, 1.0, epochs, lr, batch_size)


def test_designs_scale_kddiags_default_budget():
    from kddiag.probe import default_steps

    default = pv.Design("default").options(_pair())
    assert default.steps is None and default.lr is None and default.seeds == 2  # kddiag decides (and may grow)
    fixed = pv.Design("1×", budget=1).options(_pair())
    assert fixed.steps == default_steps(600, 64)
    four = pv.Design("4×", budget=4, seeds=3, lr="recipe").options(_pair())
    assert four.steps == 4 * fixed.steps and four.lr == 3e-3 and four.seeds == 3
    assert pv.Design("t", trend=True).run_key == pv.DEFAULT_DESIGN.run_key  # a trend design reads its base run


def test_recipe_designs_train_as_the_students_recipe_as_probe_epochs_would():
    half = pv.Design("recipe ½", seeds=3, recipe=0.5)
    options = half.options(_pair(epochs=40, lr=1e-3, batch_size=32))
    assert (options.epochs, options.steps, options.batch_size, options.lr) == (20, None, 32, 1e-3)
    assert half.options(_pair(batch_size=None)).batch_size == 600  # full batch
    assert half.run_key != pv.Design("recipe", seeds=3, recipe=1.0).run_key
    assert half.to_dict()["recipe"] == 0.5 and "recipe" not in pv.DEFAULT_DESIGN.to_dict()


def test_one_pair_quick_end_to_end(tmp_path):
    designs = (pv.Design("1×", budget=1), pv.Design("1× + trend", budget=1, trend=True))  # fixed: never grown
    result = pv.main(seeds=(0,), quick=True, out_dir=tmp_path, families=("mlp",), scenarios=("healthy-20",),
                     designs=designs, log=lambda message: None)
    assert result["seeds"] == [0] and result["held_out_seeds"] == [1] and result["quick"]
    assert set(result["tuning"]) == {"1×", "1× + trend"} and result["chosen"] in result["tuning"]
    assert set(result["held_out"]) == {"mlp"} and "cnn-digits" not in result["skipped"]
    phases = {(c["phase"], c["seed"]) for c in result["cases"]}
    assert phases == {("tuning", 0), ("held out", 1)}
    for c in result["cases"]:
        assert c["scenario"] == "healthy-20" and c["control"] == "τ 4, α 0.9"
        lo, hi = c["full"]["ci95"]
        assert lo <= c["full"]["change"] <= hi
        assert set(c["probes"]) == ({"1×", "1× + trend"} if c["phase"] == "tuning" else {result["chosen"]})
    arms = {c["arm"] for c in result["cases"]}
    assert {"τ 3", "τ 6", "α 0.45", "labels only (α 0)"} <= arms
    # the trend design shares its base design's probe run: one run per pair and seed
    assert len(result["runs"]) == 2 and all(r["probed"] and r["design"]["steps"] == 100 for r in result["runs"])
    assert result["tuning"]["1×"]["all"] == pv.score([c for c in result["cases"] if c["phase"] == "tuning"], "1×")
    written = json.loads((tmp_path / "probe-validation.json").read_text())
    assert written["chosen"] == result["chosen"] and written["verdicts"] == []
    rescored = pv.rescore(tmp_path / "probe-validation.json")  # the summaries come from the stored cases alone
    assert {k: rescored[k] for k in ("tuning", "chosen", "held_out", "checks")} == {
        k: result[k] for k in ("tuning", "chosen", "held_out", "checks")}
    markdown = (tmp_path / "probe-validation.md").read_text()
    assert "### Tuning (mlp, seeds 0): every design" in markdown and "| 1× + trend |" in markdown
    recipe = pv.Design("recipe ½", seeds=1, recipe=0.5)  # a design added later probes the stored pairs
    added = pv.add_designs(tmp_path / "probe-validation.json", designs=(recipe,), families=("mlp",),
                           log=lambda message: None)
    assert all("recipe ½" in c["probes"] for c in added["cases"]) and "recipe ½" in added["tuning"]
    assert [c["full"] for c in added["cases"]] == [c["full"] for c in result["cases"]]  # retraining kept
    runs = [r for r in added["runs"] if r["run"] == recipe.run_key]
    assert len(runs) == 2 and all(r["design"]["length_source"] == "given epochs" for r in runs)


def test_over_inits_holds_both_noises_and_scores_against_the_truth_asked_for():
    """A change that one initialization shows beyond the examples' noise but the next reverses is not
    decided over initializations; one every initialization shows is."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = 1000

    def diffs(means):
        rows = []
        for m in means:
            row = np.zeros(n)
            k = int(round(abs(m) * n))
            row[rng.choice(n, size=k, replace=False)] = np.sign(m)
            rows.append(row)
        return np.array(rows)

    flip = pv.over_inits(diffs([0.02, -0.02, 0.015, -0.025, 0.01]))
    steady = pv.over_inits(diffs([0.03, 0.025, 0.035, 0.03, 0.028]))
    assert flip["changes"][0] == pytest.approx(0.02) and flip["change"] == pytest.approx(0.0, abs=1e-9)
    assert flip["ci95"][0] < 0 < flip["ci95"][1]
    assert steady["ci95"][0] > 0 and steady["change"] == pytest.approx(0.0296)
    again = pv.over_inits(np.array([[1.0, 0.0, -1.0, 1.0]] * 3))
    assert again == pv.over_inits(np.array([[1.0, 0.0, -1.0, 1.0]] * 3))  # deterministic
    one = case(+0.02, (0.005, 0.04), +0.01)
    one["inits"] = flip
    assert pv.is_decided(one) and not pv.is_decided(one, "inits")
    assert pv.score([one], "d")["decided"] == 1 and pv.score([one], "d", "inits")["decided"] == 0
    assert pv.init_seeds(2, 3) == [2, 1021, 1022]


def test_the_mnist1d_family_splits_generated_signals_afresh_for_each_seed():
    pytest.importorskip("mnist1d")
    import torch

    from case_studies._mnist1d import N_EVAL, N_TRANSFER, Conv1dNet, mnist1d_task, noisy_labels

    task, other = mnist1d_task(0), mnist1d_task(1)
    assert task.train.x.shape == (N_TRANSFER, 40) and len(task.test.labels) == N_EVAL
    assert set(np.unique(task.train.labels)) == set(range(10))
    rows = lambda d: {r.tobytes() for r in d.x.numpy()}  # noqa: E731
    assert not rows(task.train) & rows(task.test) and not rows(task.extra) & rows(task.test)
    assert rows(task.test) != rows(other.test)
    assert Conv1dNet()(task.test.x[:5]).shape == (5, 10)
    flipped = noisy_labels(task.train.labels, rate=0.4, seed=0)
    assert 0.25 < np.mean(flipped != task.train.labels) < 0.45  # 40 % redrawn, a tenth of them to the same label
    assert torch.equal(mnist1d_task(0).train.x, task.train.x)


def test_a_design_probed_on_some_families_only_is_scored_where_it_ran():
    """add_designs goes family by family: the stored results must score between two of its steps."""
    from pathlib import Path

    stored = json.loads((Path(pv.__file__).parent / "results" / "probe-validation.json").read_text())
    new = pv.Design("late", seeds=3, recipe=1.0)
    stored["designs"] = [d for d in stored["designs"] if d.get("recipe") is None] + [new.to_dict()]
    for c in stored["cases"]:
        c["probes"].pop(new.name, None)
        if c["family"] == "mlp":  # probed on the tuning family (and its held-out seeds) only, and best there
            c["probes"][new.name] = {"predicted": c["full"]["change"], "change": c["full"]["change"],
                                     "halfway_change": 0.0, "ci95": [0, 0], "helped": False, "hurt": False}
    result = pv.summarize_result(stored)
    assert result["chosen"] == new.name
    assert new.name in result["held_out"]["mlp"]["designs"]
    assert new.name not in result["held_out"]["cnn-digits"]["designs"]
    assert not any("cnn-digits" in c["statement"] for c in result["checks"])
    assert "### Held out: cnn-digits" in pv.render_markdown(result)
