"""Permuted class order: a student that learned well but numbers its classes differently (a bug).

Claim: When the student's data pipeline maps class names to indices in another order than the
teacher's, the student can be accurate in its own order while its top-1 agreement with the teacher
(and its accuracy against the teacher's labels) is near chance; the relabelling that maximizes
agreement restores it, and it is the pipeline's permutation. kddiag should say `class-order-mismatch`
and report the permutation.

Source: none published; a common bug, checked by the permutation test of docs/literature.md §13
(derived: the Hungarian assignment on the teacher-vs-student confusion matrix).

Setup: scikit-learn's digits (60 training images per class from digits:train; eval on digits:test).
Teacher 64-256-256-10 (50 epochs); student 64-16-10 distilled at τ = 4, α = 0.9 by a pipeline that
numbers the classes in the order they first appear in its shuffled data; a control student is
distilled in the teacher's order.
"""
from __future__ import annotations

import numpy as np

from case_studies._harness import (EARLY_TEACHER, Check, Context, Rows, compare, digits_task, fit_student,
                                   fit_teacher, run_study)
from case_studies._training import logits_of, teacher_targets
from kddiag.metrics.fidelity import accuracy, permuted_agreement, top1_agreement

TEMPERATURE, ALPHA = 4.0, 0.9
N_TRAIN_PER_CLASS = 60


def first_appearance_order(labels: np.ndarray, *, seed: int) -> np.ndarray:
    """σ: teacher class t → the student's index for it, numbered by first appearance in shuffled data."""
    shuffled = labels[np.random.default_rng(seed).permutation(len(labels))]
    _, first = np.unique(shuffled, return_index=True)
    sigma = np.empty(len(first), dtype=np.int64)
    sigma[np.argsort(first)] = np.arange(len(first))
    return sigma


def run_seed(ctx: Context) -> Rows:
    task = digits_task(ctx.seed, n_train_per_class=N_TRAIN_PER_CLASS)
    teacher, _ = fit_teacher(ctx, task, recipe=EARLY_TEACHER)
    p = teacher_targets(logits_of(teacher, task.train.x), temperature=TEMPERATURE)
    sigma = first_appearance_order(task.train.labels, seed=ctx.seed)
    p_student_order = np.empty_like(p)
    p_student_order[:, sigma] = p  # the same targets, columns renumbered by the student's pipeline
    buggy = fit_student(ctx, task, soft_targets=p_student_order, labels=sigma[task.train.labels],
                        temperature=TEMPERATURE, alpha=ALPHA)
    control = fit_student(ctx, task, soft_targets=p, temperature=TEMPERATURE, alpha=ALPHA)
    report = ctx.inspect("permuted-classes", "class-order-mismatch", task=task, teacher=ctx.save(teacher, "teacher"),
                         student=ctx.save(buggy, "student-permuted", temperature=TEMPERATURE, alpha=ALPHA))
    found = np.asarray(report.measurements.outcome.transfer.class_permutation.value)
    z_test = logits_of(teacher, task.test.x)
    rows: Rows = {}
    for name, student in (("student in its own order", buggy), ("control student (teacher's order)", control)):
        s_test = logits_of(student, task.test.x)
        own_labels = sigma[task.test.labels] if student is buggy else task.test.labels
        rows[name] = {"accuracy in its own order": accuracy(s_test, own_labels),
                      "accuracy against the teacher's labels": accuracy(s_test, task.test.labels),
                      "agreement with the teacher": top1_agreement(z_test, s_test),
                      "agreement after the best relabelling": permuted_agreement(z_test, s_test)}
    rows["student in its own order"]["kddiag found the pipeline's permutation"] = float(
        np.array_equal(found[sigma], np.arange(len(sigma))))
    return rows


def checks(per_seed: list[Rows]) -> list[Check]:
    bug, control = "student in its own order", "control student (teacher's order)"
    found = [rows[bug]["kddiag found the pipeline's permutation"] for rows in per_seed]
    return [
        compare("The permuted student is as accurate in its own order as the control", per_seed,
                (bug, "accuracy in its own order"), (control, "accuracy in its own order"), relation=">="),
        compare("Its agreement with the teacher is far below the control's", per_seed,
                (bug, "agreement with the teacher"), (control, "agreement with the teacher"), relation="<"),
        compare("The best relabelling restores the agreement", per_seed,
                (bug, "agreement after the best relabelling"), (control, "agreement with the teacher"), relation=">="),
        Check("kddiag's class_permutation is the pipeline's permutation", all(found),
              f"found in {int(sum(found))} of {len(found)} seed(s)"),
    ]


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run the study over ``seeds``; write its JSON, Markdown and HTML reports; return the result."""
    return run_study("class-order", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
