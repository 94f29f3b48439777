"""Label-smoothed teacher: as accurate, yet a worse teacher, the more so at high temperature.

Claim: A teacher trained with label smoothing (LS) is as accurate as a plain one or better, but its KD
student is no better than a student trained with plain LS of the same strength, because LS erases the
relative information between wrong-class logits; the plain teacher's students are better; distilling
the LS teacher at τ = 1 does less damage than at a high τ. kddiag should say `teacher-label-smoothed`.

Source: Müller, Kornblith and Hinton 2019, "When Does Label Smoothing Help?" (NeurIPS, arXiv
1906.02629), §4; Chandrasegaran et al. 2022, "Revisiting Label Smoothing and Knowledge Distillation
Compatibility: What was Missing?" (ICML, arXiv 2206.14532).

Setup: synthetic class hierarchy (20 classes in 4 groups, 30 training examples per class). Teachers
32-256-256-20 trained 400 epochs with LS ε ∈ {0, 0.05, 0.1, 0.2}; students 32-16-20 distilled from
each at τ ∈ {1, 4, 16} (α = 0.9); a CE student; and for each teacher a student trained with plain LS
of the same strength as its τ = 1 KD targets, ε = α·γ (γ the teacher's equivalent smoothing, Müller's
x-axis: at τ = 1 KD is LS with the uniform distribution replaced by the teacher). kddiag inspects
every teacher's τ = 4 student (baseline: the CE student).
"""
from __future__ import annotations

from case_studies._harness import (FULL_TEACHER, Check, Context, Rows, compare, fit_student, fit_teacher,
                                   hierarchy_task, run_study, eval_accuracy)
from case_studies._training import logits_of, teacher_targets
from kddiag.metrics.universe import equivalent_smoothing

EPSILONS = (0.0, 0.05, 0.1, 0.2)
TEMPERATURES = (1.0, 4.0, 16.0)
DIAGNOSED_TEMPERATURE, ALPHA = 4.0, 0.9
MATCHED_LS = "LS student, ε = α·γ(τ=1)"


def _row(epsilon: float) -> str:
    return f"teacher LS ε={epsilon:g}"


def _student(temperature: float) -> str:
    return f"KD student τ={temperature:g}"


def run_seed(ctx: Context) -> Rows:
    task = hierarchy_task(ctx.seed)
    baseline = fit_student(ctx, task)
    baseline_path = ctx.save(baseline, "baseline")
    rows: Rows = {"CE student": {"accuracy": eval_accuracy(baseline, task)}}
    for epsilon in EPSILONS:
        teacher, _ = fit_teacher(ctx, task, recipe=FULL_TEACHER, epsilon=epsilon)
        teacher_path = ctx.save(teacher, f"teacher-eps{epsilon:g}")
        logits = logits_of(teacher, task.train.x)
        gamma = equivalent_smoothing(logits, task.train.labels, temperature=1.0)
        row = rows[_row(epsilon)] = {"teacher accuracy": eval_accuracy(teacher, task),
                                     MATCHED_LS: eval_accuracy(fit_student(ctx, task, epsilon=ALPHA * gamma), task)}
        for temperature in TEMPERATURES:
            student = fit_student(ctx, task, soft_targets=teacher_targets(logits, temperature=temperature),
                                  temperature=temperature, alpha=ALPHA)
            row[_student(temperature)] = eval_accuracy(student, task)
            if temperature == DIAGNOSED_TEMPERATURE:
                report = ctx.inspect(f"ls-teacher-eps{epsilon:g}", "teacher-label-smoothed" if epsilon else "healthy",
                                     task=task, teacher=teacher_path, baseline=baseline_path,
                                     student=ctx.save(student, f"student-eps{epsilon:g}", temperature=temperature,
                                                      alpha=ALPHA))
                ctx.follow_advice(f"ls-teacher-eps{epsilon:g}", row[_student(temperature)],
                                  lambda t, a: eval_accuracy(fit_student(
                                      ctx, task, soft_targets=teacher_targets(logits, temperature=t),
                                      temperature=t, alpha=a), task), temperature=temperature, alpha=ALPHA)
                teacher_structure = report.measurements.domain.transfer.teacher
                row["dark-knowledge content τ=1"] = teacher_structure.dark_knowledge_content.value
                row["non-target logit spread"] = teacher_structure.nontarget_logit_spread.value
                row["severity teacher-label-smoothed"] = ctx.severity(f"ls-teacher-eps{epsilon:g}",
                                                                       "teacher-label-smoothed")
    for temperature in TEMPERATURES:  # what LS costs the student at each τ, paired within the seed
        rows.setdefault("damage: plain − LS ε=0.2 teacher's student", {})[_student(temperature)] = (
            rows[_row(0.0)][_student(temperature)] - rows[_row(0.2)][_student(temperature)])
    return rows


def checks(per_seed: list[Rows]) -> list[Check]:
    damage = "damage: plain − LS ε=0.2 teacher's student"
    return [
        *[compare(f"The LS ε={e:g} teacher is as accurate as the plain one or better", per_seed,
                  (_row(e), "teacher accuracy"), (_row(0.0), "teacher accuracy"), relation=">=")
          for e in (0.1, 0.2)],
        *[compare(f"At τ = 1 the LS ε={e:g} teacher's student is no better than plain LS of the same strength",
                  per_seed, (_row(e), _student(1.0)), (_row(e), MATCHED_LS), relation="<=") for e in (0.1, 0.2)],
        *[compare(f"At τ = {t:g} the LS ε=0.2 teacher's student is worse than the plain teacher's", per_seed,
                  (_row(0.2), _student(t)), (_row(0.0), _student(t)), relation="<") for t in (4.0, 16.0)],
        compare("Distilling the LS teacher at τ = 1 does less damage than at τ = 16", per_seed,
                (damage, _student(1.0)), (damage, _student(16.0)), relation="<"),
        compare("The LS ε=0.2 teacher distils at least as well at τ = 1 as at τ = 16", per_seed,
                (_row(0.2), _student(1.0)), (_row(0.2), _student(16.0)), relation=">="),
    ]


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run the study over ``seeds``; write its JSON, Markdown and HTML reports; return the result."""
    return run_study("label-smoothing", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
