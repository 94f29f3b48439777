"""Larger teacher, early stopping, and a student too small to follow: the capacity gap.

Claim: A larger, more accurate teacher is not a better teacher for a small student, and stopping the
teacher's training early makes it a better teacher (Cho & Hariharan); when the student is far too
small to mimic the teacher, distilling from it directly hurts and an intermediate teacher assistant
helps (Mirzadeh et al.). kddiag should report `teacher-overconfident` for the over-trained large
teachers, with severity rising with the teacher's size, and `capacity-gap` for the tiny student.

Source: Cho and Hariharan 2019, "On the Efficacy of Knowledge Distillation" (ICCV, arXiv 1910.01348);
Mirzadeh et al. 2020, "Improved Knowledge Distillation via Teacher Assistant" (AAAI, arXiv 1902.03393).

Setup: synthetic class hierarchy (20 classes in 4 groups, 30 training examples per class); student
32-16-20 distilled at τ = 2 (α = 0.9; also τ = 4). (a) Teachers of growing capacity, 32-24-20,
32-64-20, 32-256-256-20 and 32-512-512-20, each trained 400 epochs (until it fits the transfer set).
(b) Checkpoints of the 32-256-256-20 teacher after 25 to 400 epochs. (c) A 32-4-20 student, distilled
at τ = 4 from the early-stopped (50-epoch) teacher directly, or through a 32-16-20 teacher assistant.
"""
from __future__ import annotations

from case_studies._harness import (EARLY_TEACHER, FULL_TEACHER, Check, Context, Rows, compare, fit_student,
                                   fit_teacher, hierarchy_task, run_study, eval_accuracy)
from case_studies._training import logits_of, teacher_targets

TEACHERS = ((24,), (64,), (256, 256), (512, 512))
OVERCONFIDENT = ((256, 256), (512, 512))  # fit the transfer set to saturation at τ = 2 (true cause)
CHECKPOINT_EPOCHS = (25, 50, 100, 200, 400)  # of the (256, 256) teacher
TEMPERATURE, ALPHA = 2.0, 0.9
TINY_HIDDEN, TINY_TEMPERATURE = (4,), 4.0


def _teacher_row(hidden: tuple[int, ...], task) -> str:
    return "teacher " + "-".join(map(str, (task.n_features, *hidden, task.n_classes)))


def _distil(ctx: Context, task, teacher, *, temperature: float, hidden=None, alpha: float = ALPHA):
    targets = teacher_targets(logits_of(teacher, task.train.x), temperature=temperature)
    options = {} if hidden is None else {"hidden": hidden}
    return fit_student(ctx, task, soft_targets=targets, temperature=temperature, alpha=alpha, **options)


def _inspect_row(ctx: Context, task, row: dict, scenario: str, true_cause: str | None, *, teacher, student, baseline_path,
                 temperature: float, benchmark: bool = True, hidden=None) -> None:
    report = ctx.inspect(scenario, true_cause, task=task, benchmark=benchmark, baseline=baseline_path,
                         teacher=ctx.save(teacher, f"{scenario}-teacher"),
                         student=ctx.save(student, f"{scenario}-student", temperature=temperature, alpha=ALPHA))
    ctx.follow_advice(scenario, eval_accuracy(student, task),
                      lambda t, a: eval_accuracy(_distil(ctx, task, teacher, temperature=t, hidden=hidden, alpha=a),
                                                 task), temperature=temperature, alpha=ALPHA)
    row[f"saturation share τ={temperature:g}"] = report.measurements.universe.transfer.saturation_share.value
    row["agreement (transfer)"] = report.measurements.outcome.transfer.agreement.value
    for finding in ("teacher-overconfident", "capacity-gap"):
        row[f"severity {finding}"] = ctx.severity(scenario, finding)


def run_seed(ctx: Context) -> Rows:
    task = hierarchy_task(ctx.seed)
    baseline = fit_student(ctx, task)
    baseline_path = ctx.save(baseline, "baseline")
    rows: Rows = {"CE student": {"accuracy": eval_accuracy(baseline, task)}}
    for hidden in TEACHERS:  # (a) growing capacity, trained to fit
        snapshot_epochs = CHECKPOINT_EPOCHS if hidden == (256, 256) else ()
        teacher, snapshots = fit_teacher(ctx, task, recipe=FULL_TEACHER, hidden=hidden, snapshot_epochs=snapshot_epochs)
        row = rows[_teacher_row(hidden, task)] = {"teacher accuracy": eval_accuracy(teacher, task)}
        student = _distil(ctx, task, teacher, temperature=TEMPERATURE)
        row["KD student τ=2"] = eval_accuracy(student, task)
        row["KD student τ=4"] = eval_accuracy(_distil(ctx, task, teacher, temperature=4.0), task)
        _inspect_row(ctx, task, row, "teacher-" + "x".join(map(str, hidden)),
                     "teacher-overconfident" if hidden in OVERCONFIDENT else "healthy",
                     teacher=teacher, student=student, baseline_path=baseline_path, temperature=TEMPERATURE)
        if snapshots:
            checkpoints = (teacher, snapshots[:-1], rows[_teacher_row(hidden, task)])
    teacher, snapshots, fully_trained = checkpoints
    for epoch, state in zip(CHECKPOINT_EPOCHS, snapshots):  # (b) the 256-256 teacher along its training
        teacher.load_state_dict(state)
        row = rows[f"256-256 teacher after {epoch} epochs"] = {"teacher accuracy": eval_accuracy(teacher, task)}
        student = _distil(ctx, task, teacher, temperature=TEMPERATURE)
        row["KD student τ=2"] = eval_accuracy(student, task)
        _inspect_row(ctx, task, row, f"checkpoint-epoch{epoch}", None, teacher=teacher, student=student,
                     baseline_path=baseline_path, temperature=TEMPERATURE, benchmark=False)
    rows[f"256-256 teacher after {CHECKPOINT_EPOCHS[-1]} epochs"] = {  # the fully trained teacher of (a)
        k: v for k, v in fully_trained.items() if k != "KD student τ=4"}
    # (c) a student far too small: directly, or through a teacher assistant
    teacher, _ = fit_teacher(ctx, task, recipe=EARLY_TEACHER)
    tiny_baseline = fit_student(ctx, task, hidden=TINY_HIDDEN)
    direct = _distil(ctx, task, teacher, temperature=TINY_TEMPERATURE, hidden=TINY_HIDDEN)
    assistant = _distil(ctx, task, teacher, temperature=TINY_TEMPERATURE)
    via_assistant = _distil(ctx, task, assistant, temperature=TINY_TEMPERATURE, hidden=TINY_HIDDEN)
    row = rows["student 32-4-20"] = {"CE": eval_accuracy(tiny_baseline, task),
                                     "KD from the teacher": eval_accuracy(direct, task),
                                     "KD via a 32-16-20 assistant": eval_accuracy(via_assistant, task)}
    _inspect_row(ctx, task, row, "tiny-student", "capacity-gap", teacher=teacher, student=direct,
                 baseline_path=ctx.save(tiny_baseline, "tiny-baseline"), temperature=TINY_TEMPERATURE,
                 hidden=TINY_HIDDEN)
    return rows


def checks(per_seed: list[Rows]) -> list[Check]:
    small, large = "teacher 32-64-20", "teacher 32-512-512-20"
    severity = "severity teacher-overconfident"
    return [
        compare("The 512-512 teacher is not a better teacher than the 64 one (τ = 2)", per_seed,
                (large, "KD student τ=2"), (small, "KD student τ=2"), relation="<="),
        compare("The 512-512 teacher's student is worse than the 64 teacher's (τ = 2)", per_seed,
                (large, "KD student τ=2"), (small, "KD student τ=2"), relation="<"),
        compare("The early-stopped (50-epoch) teacher distils better than the fully trained one (τ = 2)", per_seed,
                ("256-256 teacher after 50 epochs", "KD student τ=2"),
                ("256-256 teacher after 400 epochs", "KD student τ=2"), relation=">"),
        compare("kddiag: teacher-overconfident is more severe for the 256-256 teacher than for the 64 one", per_seed,
                ("teacher 32-256-256-20", severity), (small, severity), relation=">", scale=1, unit=""),
        compare("kddiag: ... and at least as severe for the 512-512 teacher as for the 256-256 one", per_seed,
                (large, severity), ("teacher 32-256-256-20", severity), relation=">=", scale=1, unit=""),
        compare("Distilling the 32-4-20 student directly hurts it (vs CE)", per_seed,
                ("student 32-4-20", "KD from the teacher"), ("student 32-4-20", "CE"), relation="<"),
        compare("A teacher assistant helps the 32-4-20 student", per_seed,
                ("student 32-4-20", "KD via a 32-16-20 assistant"), ("student 32-4-20", "KD from the teacher"),
                relation=">"),
    ]


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run the study over ``seeds``; write its JSON, Markdown and HTML reports; return the result."""
    return run_study("capacity-gap", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
