"""Case studies: the training helpers against independent oracles, and one study end to end in quick mode."""
from __future__ import annotations

import inspect as pyinspect
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import softmax

from case_studies import PROGRAMS, STUDIES
from case_studies._harness import Context, claim_and_source, compare, hierarchy_task, render_markdown
from case_studies._training import (dkpp_targets, distillation_loss, kd_pt_sim_targets, kd_pt_targets,
                                    class_similarity_targets, matching_sim_temperature, tf_kd_reg_targets)
from case_studies.benchmark import score
from case_studies.class_order import first_appearance_order
from case_studies.noisy_teacher import noisy_labels

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(scale=3.0, size=(40, 6))
LABELS = RNG.integers(0, 6, 40)
WEIGHT = RNG.normal(size=(6, 5))
ROWS = np.arange(40)


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.9), (4.0, 0.5), (2.0, 0.0)])
def test_distillation_loss_gradient_matches_closed_form(temperature, alpha):
    """∂L/∂s = [(1 − α)(q¹ − e_y) + α·τ·(q − p)] / n (docs/literature.md §2), against autograd."""
    student = torch.tensor(RNG.normal(size=(40, 6)), requires_grad=True)
    p = softmax(LOGITS / temperature, axis=1)
    loss = distillation_loss(student, torch.tensor(LABELS), torch.tensor(p), temperature=temperature, alpha=alpha)
    loss.backward()
    s = student.detach().numpy()
    expected = ((1 - alpha) * (softmax(s, axis=1) - np.eye(6)[LABELS])
                + alpha * temperature * (softmax(s / temperature, axis=1) - p)) / 40
    np.testing.assert_allclose(student.grad.numpy(), expected, atol=1e-12)


def test_kd_pt_keeps_the_teacher_confidence_and_flattens_the_rest():
    p = softmax(LOGITS / 2.0, axis=1)
    rho = kd_pt_targets(LOGITS, LABELS, temperature=2.0)
    np.testing.assert_allclose(rho.sum(axis=1), 1.0)
    np.testing.assert_allclose(rho[ROWS, LABELS], p[ROWS, LABELS])
    others = rho.copy()
    others[ROWS, LABELS] = np.nan
    np.testing.assert_allclose(np.nanstd(others, axis=1), 0.0, atol=1e-15)


def test_kd_sim_and_pt_sim_constructions():
    sim = class_similarity_targets(WEIGHT, LABELS, sim_temperature=0.5)
    unit = WEIGHT / np.linalg.norm(WEIGHT, axis=1, keepdims=True)
    for i in (0, 7):  # brute force for two examples
        scores = np.exp(unit[LABELS[i]] @ unit.T / 0.5)
        np.testing.assert_allclose(sim[i], scores / scores.sum())
    both = kd_pt_sim_targets(LOGITS, WEIGHT, LABELS, temperature=2.0, sim_temperature=0.5)
    np.testing.assert_allclose(both.sum(axis=1), 1.0)
    np.testing.assert_allclose(both[ROWS, LABELS], softmax(LOGITS / 2.0, axis=1)[ROWS, LABELS])
    k = (LABELS[3] + 1) % 6, (LABELS[3] + 2) % 6  # non-target ratios follow the class similarity
    np.testing.assert_allclose(both[3, k[0]] / both[3, k[1]], sim[3, k[0]] / sim[3, k[1]])


def test_matching_sim_temperature_hits_the_target_confidence():
    tau = matching_sim_temperature(WEIGHT, target_confidence=0.6)
    classes = np.arange(6)
    rho = class_similarity_targets(WEIGHT, classes, sim_temperature=tau)
    assert rho[classes, classes].mean() == pytest.approx(0.6, abs=1e-6)


def test_dkpp_keeps_argmax_and_values_but_moves_the_rest():
    p = softmax(LOGITS / 2.0, axis=1)
    rho = dkpp_targets(LOGITS, temperature=2.0, seed=1)
    np.testing.assert_array_equal(rho.argmax(axis=1), p.argmax(axis=1))
    np.testing.assert_allclose(np.sort(rho, axis=1), np.sort(p, axis=1))
    assert not np.allclose(rho, p)


def test_tf_kd_reg_is_the_virtual_teacher_at_tau_one():
    rho = tf_kd_reg_targets(LABELS, 6, temperature=1.0, correct_prob=0.9)
    np.testing.assert_allclose(rho[ROWS, LABELS], 0.9)
    np.testing.assert_allclose(rho.sum(axis=1), 1.0)
    flatter = tf_kd_reg_targets(LABELS, 6, temperature=20.0, correct_prob=0.9)
    assert np.all(flatter[ROWS, LABELS] < 0.9)


def test_scenario_helpers():
    sigma = first_appearance_order(np.array([3, 1, 3, 0, 2, 1]), seed=0)
    assert sorted(sigma.tolist()) == [0, 1, 2, 3]
    labels = np.repeat(np.arange(5), 200)
    noisy = noisy_labels(labels, 5, rate=0.3, seed=0)
    assert 0.25 < np.mean(noisy != labels) < 0.35  # flipped labels always change class
    task = hierarchy_task(0, n_train_per_class=3, n_test_per_class=2, n_extra_per_class=1)
    assert (len(task.train.labels), len(task.extra.labels), len(task.test.labels)) == (60, 20, 40)
    assert task.train.class_info.groups is not None
    assert hierarchy_task(0, n_train_per_class=3, n_test_per_class=2).extra is None  # no empty extra set


def test_compare_and_score():
    per_seed = [{"a": {"x": 0.8}, "b": {"x": 0.7}}, {"a": {"x": 0.82}, "b": {"x": 0.7}}]
    assert compare("a > b", per_seed, ("a", "x"), ("b", "x"), relation=">").holds
    assert not compare("a < b", per_seed, ("a", "x"), ("b", "x"), relation="<").holds
    verdicts = [{"true_cause": "healthy", "verdict": "healthy", "findings": []},
                {"true_cause": "healthy", "verdict": "teacher-weak", "findings": [{"id": "teacher-weak"}]},
                {"true_cause": "teacher-weak", "verdict": "capacity-gap",
                 "findings": [{"id": "capacity-gap"}, {"id": "teacher-weak"}]}]
    result = score(verdicts)
    assert result["top1_accuracy"] == pytest.approx(1 / 3)
    assert result["true_cause_among_findings"] == pytest.approx(2 / 3)
    assert (result["false_alarms"], result["n_healthy"]) == (1, 2)
    assert result["confusion"]["teacher-weak"] == {"capacity-gap": 1}


def test_score_counts_a_healthy_verdict_on_a_significant_loss_and_scores_families_apart():
    from case_studies.benchmark import by_family

    def run(family, true_cause, verdict, ci):
        return {"family": family, "true_cause": true_cause, "verdict": verdict, "kd_gain_ci95": ci,
                "findings": [] if verdict == "healthy" else [{"id": verdict}]}

    verdicts = [run("mlp", "healthy", "healthy", [0.01, 0.05]),
                run("mlp", "teacher-weak", "teacher-weak", [-0.04, -0.01]),
                run("cnn", "teacher-overconfident", "healthy", [-0.05, -0.02]),  # false 'healthy'
                run("cnn", "capacity-gap", "capacity-gap", [-0.03, 0.01]),  # a loss within the noise
                {"true_cause": "healthy", "verdict": "healthy", "findings": []}]  # no family, no baseline: mlp
    pooled = score(verdicts)
    assert (pooled["false_healthy"], pooled["n_significant_loss"]) == (1, 2)
    families = by_family(verdicts)
    assert sorted(families) == ["cnn", "mlp"]
    assert families["mlp"]["n_scenarios"] == 3 and families["mlp"]["passed"]
    assert families["cnn"]["false_healthy"] == 1 and not families["cnn"]["passed"]


def test_advice_success_counts_the_runs_where_following_the_remedy_raised_accuracy():
    from case_studies.benchmark import advice_success

    trials = [{"rule": "temperature-mismatch", "family": "mlp", "change": 0.02},
              {"rule": "temperature-mismatch", "family": "cnn", "change": -0.01},
              {"rule": "temperature-mismatch", "family": "cnn", "change": 0.0},  # no change: not a success
              {"rule": "teacher-wrong-on-transfer", "family": "mlp", "change": 0.05}]
    result = advice_success(trials)
    tau = result["temperature-mismatch"]
    assert (tau["n"], tau["helped"]) == (3, 1) and tau["success_rate"] == pytest.approx(1 / 3)
    assert tau["mean_change"] == pytest.approx(0.01 / 3) and tau["families"] == {"cnn": [-0.01, 0.0], "mlp": [0.02]}
    assert result["teacher-wrong-on-transfer"]["std_change"] == 0.0


def test_follow_advice_retrains_with_the_top_findings_remedy(tmp_path):
    ctx = Context(study="s", seed=0, quick=True, out_dir=tmp_path, keep_html=False)
    ctx.verdicts.append({"scenario": "a", "family": "mlp", "findings": [
        {"id": "temperature-mismatch", "remedy": {"temperature": 4.0, "tested_on_this_pair": False}},
        {"id": "x", "remedy": {"alpha": 0.1}}]})
    calls = []
    trial = ctx.follow_advice("a", 0.70, lambda t, a: calls.append((t, a)) or 0.75, temperature=100.0, alpha=0.9)
    assert calls == [(4.0, 0.9)]  # τ as advised, α as it was
    assert trial["change"] == pytest.approx(0.05) and ctx.advice == [trial]
    assert trial["remedy"] == {"temperature": 4.0}  # the setting followed, as the trial table writes it
    assert "| a | 0 | temperature-mismatch | τ 100 → 4 |" in render_markdown(
        {"study": "s", "claim": "c", "source": "s", "seeds": [0], "quick": False, "seconds": 1.0, "table": {},
         "checks": [],
         "reproduced": True, "verdicts": [], "advice": [trial]})
    ctx.verdicts.append({"scenario": "b", "family": "mlp", "findings": [{"id": "capacity-gap", "remedy": None}]})
    assert ctx.follow_advice("b", 0.7, lambda t, a: 1 / 0, temperature=4.0, alpha=0.9) is None  # nothing to follow


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_states_claim_and_source_and_has_main(name):
    module = STUDIES[name]
    claim, source = claim_and_source(module.__doc__)
    assert claim and source
    parameters = pyinspect.signature(module.main).parameters
    assert {"seeds", "quick", "out_dir"} <= set(parameters)
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters.values())


def test_class_order_quick_run_end_to_end(tmp_path):
    """Trains, saves checkpoints, runs kddiag on them, writes JSON + Markdown + one HTML report."""
    result = STUDIES["class-order"].main(seeds=(0,), quick=True, out_dir=tmp_path)
    assert result["quick"] and result["seeds"] == [0]
    (verdict,) = result["verdicts"]
    assert verdict["true_cause"] == "class-order-mismatch" and verdict["verdict"]
    written = json.loads((tmp_path / "class-order.json").read_text())
    assert written["table"]["student in its own order"]["agreement with the teacher"]["values"]
    assert "| check | holds | evidence |" in (tmp_path / "class-order.md").read_text()
    assert (tmp_path / verdict["html"]).read_text().lstrip().lower().startswith("<!doctype html")
    checkpoint = torch.load(tmp_path / "checkpoints" / "class-order" / "seed0" / "teacher.pt", weights_only=True)
    assert set(checkpoint) == {"state_dict", "arch", "temperature", "alpha"}
    assert checkpoint["arch"] == "mlp:64-256-256-10"


def run_module(*args):
    """``python -m case_studies ARGS`` from the repository root, as a user runs it."""
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "case_studies", *args], cwd=root, capture_output=True, text=True,
                          timeout=120)


def test_python_m_case_studies_lists_the_studies_and_the_demo_builder():
    result = run_module("--list")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == [*STUDIES, *PROGRAMS]


@pytest.mark.parametrize("args, fragment", [
    (["no-such-study"], "unknown case study 'no-such-study'; available: label-smoothing"),
    (["demo-pair", "--quick"], "demo-pair takes only --out"),
])
def test_python_m_case_studies_bad_input_is_one_line(args, fragment):
    result = run_module(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m case_studies: error: ") and fragment in lines[0]


def test_every_docs_citation_names_a_section_that_exists():
    root = Path(__file__).resolve().parent.parent
    sections = set(re.findall(r"^## (\d+)\. ", (root / "docs" / "literature.md").read_text(), re.M))
    citing = [*(root / "case_studies").rglob("*.py"), *(root / "case_studies").rglob("*.md"),
              *(root / "kddiag").rglob("*.py"), *(root / "docs").glob("*.md"), root / "README.md", Path(__file__)]
    cited = {(path.name, number) for path in citing
             for number in re.findall(r"docs/literature\.md §(\d+)", path.read_text())}
    assert cited, "no citation found: the pattern is stale"
    assert {(name, number) for name, number in cited if number not in sections} == set()
    outside = ("DESIGN" + ".md", "LITERATURE" + ".md")  # design notes kept outside the repository
    assert [path.name for path in citing if any(name in path.read_text() for name in outside)] == []


def test_the_benchmark_skips_a_study_whose_extra_is_missing(monkeypatch, tmp_path):
    import types

    import case_studies
    from case_studies import benchmark

    ran = []
    needs_extra = types.SimpleNamespace(missing_extra=lambda: "needs something: pip install it",
                                        main=lambda **_: ran.append("extra"))
    plain = types.SimpleNamespace(main=lambda **_: ran.append("plain") or {
        "verdicts": [{"study": "plain", "scenario": "s", "true_cause": "healthy", "seed": 0, "verdict": "healthy",
                      "findings": [], "metrics": {}, "html": None, "benchmark": True}],
        "reproduced": True, "seconds": 0.0, "checks": []})
    monkeypatch.setattr(case_studies, "STUDIES", {"plain": plain, "needs-extra": needs_extra})
    result = benchmark.main(seeds=(0,), out_dir=tmp_path)
    assert ran == ["plain"] and result["skipped"] == {"needs-extra": "needs something: pip install it"}
    assert "| needs-extra | skipped: needs something" in (tmp_path / "benchmark.md").read_text()
