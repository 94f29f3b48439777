"""Healthy pairs: distillation that works, the controls for false alarms in the benchmark.

Claim: A student distilled at a moderate temperature from an accurate teacher that has not memorized
the transfer set beats the same student trained on the labels alone; kddiag should find nothing wrong
(`healthy`).

Source: Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a Neural Network" (arXiv
1503.02531), in the working form L = (1 − α)·CE + α·τ²·KL used by mdistiller (τ = 4, α = 0.9).

Setup: two synthetic class hierarchies with few training examples per class (30): 20 classes in 4
groups (32 features) and 24 classes in 6 groups (48 features, more noise). Teacher MLP with two
hidden layers of 256, stopped early (50 epochs of full-batch Adam); student with 16 hidden units
(600 epochs), KD at τ = 4, α = 0.9; baseline = the same student, same initialization, CE only.
"""
from __future__ import annotations

from case_studies._harness import (EARLY_TEACHER, Context, Rows, compare, fit_student, fit_teacher,
                                   hierarchy_task, run_study, eval_accuracy)
from case_studies._training import logits_of, teacher_targets

TEMPERATURE, ALPHA = 4.0, 0.9
PAIRS = {
    "hierarchy 20 classes": dict(),
    "hierarchy 24 classes": dict(n_groups=6, classes_per_group=4, n_features=48, noise=1.2),
}


def run_seed(ctx: Context) -> Rows:
    rows = {}
    for pair, task_options in PAIRS.items():
        task = hierarchy_task(ctx.seed, **task_options)
        teacher, _ = fit_teacher(ctx, task, recipe=EARLY_TEACHER)
        baseline = fit_student(ctx, task)
        targets = teacher_targets(logits_of(teacher, task.train.x), temperature=TEMPERATURE)
        student = fit_student(ctx, task, soft_targets=targets, temperature=TEMPERATURE, alpha=ALPHA)
        tag = pair.replace(" ", "-")
        ctx.inspect(tag, "healthy", task=task, teacher=ctx.save(teacher, f"{tag}-teacher"),
                    student=ctx.save(student, f"{tag}-student", temperature=TEMPERATURE, alpha=ALPHA),
                    baseline=ctx.save(baseline, f"{tag}-baseline"))
        rows[pair] = {"teacher accuracy": eval_accuracy(teacher, task),
                      "baseline (CE) accuracy": eval_accuracy(baseline, task),
                      "KD student accuracy": eval_accuracy(student, task)}
    return rows


def checks(per_seed: list[Rows]):
    return [compare(f"KD beats the CE baseline on the {pair}", per_seed,
                    (pair, "KD student accuracy"), (pair, "baseline (CE) accuracy"), relation=">")
            for pair in PAIRS]


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run the study over ``seeds``; write its JSON, Markdown and HTML reports; return the result."""
    return run_study("healthy-pairs", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
