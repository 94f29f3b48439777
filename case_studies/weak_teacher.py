"""Weak teacher: even a poorly trained teacher helps, and only as much as label smoothing does.

Claim: A teacher far less accurate than the student still improves it through distillation, because
KD at τ = 1 is label smoothing with the uniform distribution replaced by the teacher (level 1, the
"universe"); so the gain should be no larger than that of plain label smoothing of the same strength.
kddiag should say `teacher-weak`.

Source: Yuan et al. 2020, "Revisiting Knowledge Distillation via Label Smoothing Regularization"
(CVPR, arXiv 1909.11723): De-KD, a ResNet18 trained for one epoch (15.48% on CIFAR-100) lifts
MobileNetV2 from 68.38 to 70.65; Tf-KD.

Setup: synthetic class hierarchy (20 classes in 4 groups, 30 training examples per class). Teacher
32-256-256-20 trained for 5 epochs only; student 32-16-20 trained with CE, distilled from the weak
teacher at τ = 1 with α = 0.5 and α = 0.9, and trained with label smoothing ε = α·γ (γ the weak
teacher's equivalent smoothing, so that LS puts the same mass on the wrong classes as KD at α = 0.5).
"""
from __future__ import annotations

from case_studies._harness import (Check, Context, Rows, compare, fit_student, fit_teacher, hierarchy_task,
                                   run_study, eval_accuracy)
from case_studies._training import Recipe, logits_of, teacher_targets
from kddiag.metrics.universe import equivalent_smoothing

WEAK_TEACHER = Recipe(epochs=5, lr=1e-3)
TEMPERATURE, ALPHAS = 1.0, (0.5, 0.9)
MATCHED_ALPHA = 0.5


def run_seed(ctx: Context) -> Rows:
    task = hierarchy_task(ctx.seed)
    teacher, _ = fit_teacher(ctx, task, recipe=WEAK_TEACHER)
    logits = logits_of(teacher, task.train.x)
    gamma = equivalent_smoothing(logits, task.train.labels, temperature=TEMPERATURE)
    baseline = fit_student(ctx, task)
    ls_student = fit_student(ctx, task, epsilon=MATCHED_ALPHA * gamma)
    paths = {"teacher": ctx.save(teacher, "teacher"), "baseline": ctx.save(baseline, "baseline")}
    rows: Rows = {"weak teacher": {"accuracy": eval_accuracy(teacher, task)},
                  "CE student": {"accuracy": eval_accuracy(baseline, task)},
                  f"LS student, ε = {MATCHED_ALPHA:g}·γ": {"accuracy": eval_accuracy(ls_student, task)}}
    for alpha in ALPHAS:
        student = fit_student(ctx, task, soft_targets=teacher_targets(logits, temperature=TEMPERATURE),
                              temperature=TEMPERATURE, alpha=alpha)
        rows[f"KD student, α={alpha:g}"] = {"accuracy": eval_accuracy(student, task)}
        ctx.inspect(f"weak-teacher-alpha{alpha:g}", "teacher-weak", task=task, teacher=paths["teacher"],
                    baseline=paths["baseline"],
                    student=ctx.save(student, f"student-alpha{alpha:g}", temperature=TEMPERATURE, alpha=alpha))
    return rows


def checks(per_seed: list[Rows]) -> list[Check]:
    acc, kd = "accuracy", f"KD student, α={MATCHED_ALPHA:g}"
    return [
        compare("The teacher is much weaker than the CE student", per_seed, ("weak teacher", acc), ("CE student", acc),
                relation="<"),
        compare("Even so, KD from it (α = 0.5) beats CE", per_seed, (kd, acc), ("CE student", acc), relation=">"),
        compare("... and no more than label smoothing of the same strength (level 1 only)", per_seed,
                (kd, acc), (f"LS student, ε = {MATCHED_ALPHA:g}·γ", acc), relation="<="),
    ]


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run the study over ``seeds``; write its JSON, Markdown and HTML reports; return the result."""
    return run_study("weak-teacher", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
