"""Temperature sweep: too low gives near one-hot targets, too high near uniform ones.

Claim: The distillation temperature has a useful middle range: a τ too low makes a good teacher's
targets near one-hot (little beyond the labels), a τ too high makes them near uniform (Hinton's
high-τ limit is logit matching, and the class ranking is drowned); both distil worse than a moderate τ.
kddiag should say `temperature-mismatch` at both ends and find nothing wrong in the middle.

Source: Hinton, Vinyals and Dean 2015 (arXiv 1503.02531), who introduce τ and the τ² scaling;
the sweep over τ follows Chandrasegaran et al. 2022 (arXiv 2206.14532) and docs/literature.md §13
(temperature sweep).

Setup: synthetic class hierarchy (20 classes in 4 groups, 30 training examples per class);
early-stopped teacher 32-256-256-20 (50 epochs, not fitted to the transfer set); student 32-16-20
distilled at τ ∈ {0.25, 0.5, 1, 2, 4, 8, 16, 32, 100}, α = 0.9; kddiag inspects τ = 0.25 and τ = 100
(τ = 4 is the first healthy pair of healthy-pairs).
"""
from __future__ import annotations

from case_studies._harness import (EARLY_TEACHER, Check, Context, Rows, compare, fit_student, fit_teacher,
                                   hierarchy_task, run_study, eval_accuracy)
from case_studies._training import logits_of, teacher_targets
from kddiag.metrics.domain import dark_knowledge_content
from kddiag.metrics.universe import effective_smoothing, saturation_share

TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 100.0)
ALPHA = 0.9
INSPECTED = {0.25: "temperature-mismatch", 100.0: "temperature-mismatch"}
LOW, GOOD, HIGH = 0.25, 4.0, 100.0


def _row(temperature: float) -> str:
    return f"τ={temperature:g}"


def run_seed(ctx: Context) -> Rows:
    task = hierarchy_task(ctx.seed)
    teacher, _ = fit_teacher(ctx, task, recipe=EARLY_TEACHER)
    baseline = fit_student(ctx, task)
    paths = {"teacher": ctx.save(teacher, "teacher"), "baseline": ctx.save(baseline, "baseline")}
    logits, labels = logits_of(teacher, task.train.x), task.train.labels
    rows: Rows = {"CE student": {"student accuracy": eval_accuracy(baseline, task)}}
    for temperature in TEMPERATURES:
        student = fit_student(ctx, task, soft_targets=teacher_targets(logits, temperature=temperature),
                              temperature=temperature, alpha=ALPHA)
        rows[_row(temperature)] = {
            "student accuracy": eval_accuracy(student, task),
            "effective smoothing (transfer)": effective_smoothing(logits, labels, temperature=temperature),
            "saturation share (transfer)": saturation_share(logits, labels, temperature=temperature),
            "dark-knowledge content at τ (transfer)": dark_knowledge_content(logits, labels, temperature=temperature)}
        if temperature in INSPECTED:
            scenario = f"tau-{temperature:g}"
            student_path = ctx.save(student, scenario, temperature=temperature, alpha=ALPHA)
            ctx.inspect(scenario, INSPECTED[temperature], task=task, teacher=paths["teacher"],
                        baseline=paths["baseline"], student=student_path)
            ctx.follow_advice(scenario, rows[_row(temperature)]["student accuracy"],
                              lambda t, a: eval_accuracy(fit_student(
                                  ctx, task, soft_targets=teacher_targets(logits, temperature=t), temperature=t,
                                  alpha=a), task), temperature=temperature, alpha=ALPHA)
    return rows


def checks(per_seed: list[Rows]) -> list[Check]:
    acc = "student accuracy"
    return [compare(f"τ = {GOOD:g} distils better than τ = {LOW:g}", per_seed, (_row(GOOD), acc), (_row(LOW), acc),
                    relation=">"),
            compare(f"τ = {GOOD:g} distils better than τ = {HIGH:g}", per_seed, (_row(GOOD), acc), (_row(HIGH), acc),
                    relation=">")]


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run the study over ``seeds``; write its JSON, Markdown and HTML reports; return the result."""
    return run_study("temperature-sweep", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
