"""Teacher trained on noisy labels: it contradicts the clean labels of the transfer set.

Claim: A teacher that learned the student's transfer examples with noisy labels disagrees with their
correct labels on many of them, although it is more accurate than the student on held-out data; at
the usual weight on the soft term (α = 0.9) it passes its mistakes on, and the student ends below the
same student trained on the labels alone. Lowering α limits the damage, and a teacher trained on the
same data with clean labels distils well. kddiag should say `teacher-wrong-on-transfer`.

Source: none published for this exact setting; kddiag's own scenario for the `teacher-wrong-on-transfer`
rule and its advice to lower α (docs/literature.md §15), with BAN's reading of the teacher's p_y as a
per-example weight (Furlanello et al. 2018, arXiv 1805.04770).

Setup: synthetic class hierarchy (20 classes in 4 groups). The teacher 32-256-256-20 learns for 400
epochs from 150 examples per class: the student's 30, of which 30% carry a wrong label (another class
drawn at random, as in an early labelling later cleaned for the student), and 120 more with correct
labels. The student 32-16-20 learns from its 30 examples per class with the correct labels: CE, KD at
τ = 4 with α = 0.9 and α = 0.5 from the noisy teacher, and α = 0.9 from a teacher trained on the same
150 examples per class with every label correct.
"""
from __future__ import annotations

import numpy as np
import torch

from case_studies._harness import (Check, Context, Rows, compare, fit_student, fit_teacher, hierarchy_task,
                                   run_study, eval_accuracy)
from case_studies._training import Recipe, logits_of, teacher_targets
from kddiag.metrics.instance import teacher_error_rate

NOISE_RATE = 0.3
TEACHER_RECIPE = Recipe(epochs=400, lr=1e-3)
N_EXTRA_PER_CLASS = 120
TEMPERATURE, ALPHA, LOW_ALPHA = 4.0, 0.9, 0.5


def noisy_labels(labels: np.ndarray, n_classes: int, *, rate: float, seed: int) -> np.ndarray:
    """Replace a share ``rate`` of the labels by a different class, drawn uniformly."""
    rng = np.random.default_rng(seed)
    flip = rng.random(len(labels)) < rate
    out = labels.copy()
    out[flip] = (labels[flip] + rng.integers(1, n_classes, flip.sum())) % n_classes
    return out


def run_seed(ctx: Context) -> Rows:
    task = hierarchy_task(ctx.seed, n_extra_per_class=N_EXTRA_PER_CLASS)
    x = torch.cat([task.train.x, task.extra.x])
    clean = np.concatenate([task.train.labels, task.extra.labels])
    noisy = np.concatenate([noisy_labels(task.train.labels, task.n_classes, rate=NOISE_RATE, seed=ctx.seed),
                            task.extra.labels])
    baseline = fit_student(ctx, task)
    baseline_path = ctx.save(baseline, "baseline")
    rows: Rows = {"CE student": {"student accuracy": eval_accuracy(baseline, task)}}
    for name, labels in (("noisy-label teacher", noisy), ("clean-label teacher", clean)):
        teacher, _ = fit_teacher(ctx, task, recipe=TEACHER_RECIPE, x=x, labels=labels)
        logits = logits_of(teacher, task.train.x)
        teacher_path = ctx.save(teacher, name.replace(" ", "-"))
        alphas = (ALPHA, LOW_ALPHA) if labels is noisy else (ALPHA,)
        for alpha in alphas:
            student = fit_student(ctx, task, soft_targets=teacher_targets(logits, temperature=TEMPERATURE),
                                  temperature=TEMPERATURE, alpha=alpha)
            rows[f"{name}, α={alpha:g}"] = {
                "teacher accuracy": eval_accuracy(teacher, task),
                "teacher error on the transfer set": teacher_error_rate(logits, task.train.labels),
                "student accuracy": eval_accuracy(student, task)}
            scenario = f"{name.split()[0]}-teacher-alpha{alpha:g}"
            true_cause = "teacher-wrong-on-transfer" if labels is noisy else "healthy"
            ctx.inspect(scenario, true_cause, task=task, teacher=teacher_path, baseline=baseline_path,
                        student=ctx.save(student, scenario, temperature=TEMPERATURE, alpha=alpha))
            ctx.follow_advice(scenario, rows[f"{name}, α={alpha:g}"]["student accuracy"],
                              lambda t, a: eval_accuracy(fit_student(
                                  ctx, task, soft_targets=teacher_targets(logits, temperature=t), temperature=t,
                                  alpha=a), task), temperature=TEMPERATURE, alpha=alpha)
    return rows


def checks(per_seed: list[Rows]) -> list[Check]:
    acc, noisy = "student accuracy", f"noisy-label teacher, α={ALPHA:g}"
    return [
        compare("KD from the noisy-label teacher at α = 0.9 hurts the student (vs CE)", per_seed,
                (noisy, acc), ("CE student", acc), relation="<"),
        compare("Lowering α to 0.5 limits the damage", per_seed,
                (f"noisy-label teacher, α={LOW_ALPHA:g}", acc), (noisy, acc), relation=">"),
        compare("The clean-label teacher distils well (vs CE)", per_seed,
                (f"clean-label teacher, α={ALPHA:g}", acc), ("CE student", acc), relation=">"),
    ]


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run the study over ``seeds``; write its JSON, Markdown and HTML reports; return the result."""
    return run_study("noisy-teacher", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
