"""Rebuild the demo pair that `kddiag demo` inspects (kddiag/demo/*.pt), about a minute on 2 cores.

Run ``python -m case_studies demo-pair`` (``--out DIR`` to write elsewhere). The demo is a distillation
that did not work, built so on purpose. On scikit-learn's digits (the built-in ``digits:train`` split,
1,257 images of 8×8 pixels):
- teacher ``mlp:64-256-256-10``, cross-entropy, 300 full-batch Adam epochs, no regularization: it
  fits (memorizes) the transfer set, so its targets there are near one-hot;
- baseline ``mlp:64-8-10``, cross-entropy on the labels alone, 2,000 epochs;
- student ``mlp:64-8-10``, the same initialization and budget as the baseline, trained with the case
  studies' one loss (``case_studies._training.distillation_loss``, Hinton et al. 2015) at τ = 1, α = 0.9.
At τ = 1 the memorizing teacher hands the student the labels back: no smoothing, no class relations,
no per-example rescaling, and the student ends where the baseline does. kddiag should say
``teacher-overconfident`` and advise a higher τ or an early-stopped teacher.
Each checkpoint is ``{'state_dict', 'arch', 'temperature', 'alpha'}`` (τ and α set for the student only),
so ``kddiag inspect`` needs no ``--*-arch`` or settings flags for them.
"""
from __future__ import annotations

from pathlib import Path

from case_studies._training import (Recipe, logits_of, new_mlp, save_checkpoint, teacher_targets, train_ce,
                                    train_kd, use_few_threads)

DEMO_DIR = Path(__file__).resolve().parent.parent / "kddiag" / "demo"
TEMPERATURE, ALPHA, SEED = 1.0, 0.9, 0
TEACHER_WIDTHS, STUDENT_WIDTHS = (64, 256, 256, 10), (64, 8, 10)
TEACHER_RECIPE, STUDENT_RECIPE = Recipe(epochs=300), Recipe(epochs=2000)


def main(*, out_dir: Path | None = None) -> dict[str, Path]:
    """Train the three models and write ``teacher.pt``, ``student.pt``, ``baseline.pt`` to ``out_dir``."""
    from kddiag.readers.arrays import load_dataset

    use_few_threads()
    out_dir = DEMO_DIR if out_dir is None else Path(out_dir)
    data = load_dataset("digits:train")
    teacher = new_mlp(TEACHER_WIDTHS, seed=SEED)
    train_ce(teacher, data.x, data.labels, recipe=TEACHER_RECIPE)
    baseline = new_mlp(STUDENT_WIDTHS, seed=SEED + 1)
    student = new_mlp(STUDENT_WIDTHS, seed=SEED + 1)  # the same initialization as the baseline
    train_ce(baseline, data.x, data.labels, recipe=STUDENT_RECIPE)
    soft_targets = teacher_targets(logits_of(teacher, data.x), temperature=TEMPERATURE)
    train_kd(student, data.x, data.labels, soft_targets, temperature=TEMPERATURE, alpha=ALPHA,
             recipe=STUDENT_RECIPE)
    written = {"teacher": save_checkpoint(teacher, out_dir / "teacher.pt"),
               "student": save_checkpoint(student, out_dir / "student.pt", temperature=TEMPERATURE, alpha=ALPHA),
               "baseline": save_checkpoint(baseline, out_dir / "baseline.pt")}
    for path in written.values():
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main()
