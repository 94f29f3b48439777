"""Distil three students from the demo teacher at τ = 1, 4 and 16, for ``kddiag compare`` (about 15 s).

Run ``python -m case_studies demo-students`` (``--out DIR``; default ``case_studies/results/demo-students``).
The teacher is the demo's memorizing ``mlp:64-256-256-10`` (``kddiag/demo/teacher.pt``); each student is
``mlp:64-8-10`` with the demo student's initialization and budget (2,000 full-batch epochs, α = 0.9) and
differs only in τ. At τ = 1 the teacher's targets on the transfer set are near one-hot; at 4 and 16 they
are soft. Each checkpoint stores its τ and α, so ``kddiag compare`` reads them:

    kddiag compare kddiag/demo/teacher.pt DIR/student_t1.pt DIR/student_t4.pt DIR/student_t16.pt \\
        --data digits:test --transfer-data digits:train --baseline kddiag/demo/baseline.pt --out compare/
"""
from __future__ import annotations

from pathlib import Path

from case_studies._training import logits_of, new_mlp, save_checkpoint, teacher_targets, train_kd, use_few_threads
from case_studies.demo_pair import ALPHA, DEMO_DIR, SEED, STUDENT_RECIPE, STUDENT_WIDTHS

OUT_DIR = Path(__file__).resolve().parent / "results" / "demo-students"
TEMPERATURES = (1.0, 4.0, 16.0)


def main(*, out_dir: Path | None = None) -> dict[float, Path]:
    """Train the students and write ``student_t1.pt``, ``student_t4.pt``, ``student_t16.pt`` to ``out_dir``."""
    from kddiag.readers.arrays import load_dataset
    from kddiag.loading import load_model

    use_few_threads()
    out_dir = OUT_DIR if out_dir is None else Path(out_dir)
    data = load_dataset("digits:train")
    teacher = load_model(DEMO_DIR / "teacher.pt", role="teacher").module
    teacher_logits = logits_of(teacher, data.x)
    written = {}
    for temperature in TEMPERATURES:
        student = new_mlp(STUDENT_WIDTHS, seed=SEED + 1)  # the demo student's initialization
        train_kd(student, data.x, data.labels, teacher_targets(teacher_logits, temperature=temperature),
                 temperature=temperature, alpha=ALPHA, recipe=STUDENT_RECIPE)
        path = out_dir / f"student_t{temperature:g}.pt"
        written[temperature] = save_checkpoint(student, path, temperature=temperature, alpha=ALPHA)
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
