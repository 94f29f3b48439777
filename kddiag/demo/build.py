"""Rebuild the demo pair: ``python -m kddiag.demo.build`` (about 10 s on 2 CPU cores).

The demo is a distillation that did not work, built so on purpose. On scikit-learn's digits (the
built-in ``digits:train`` split, 1,257 images of 8×8 pixels):
- teacher ``mlp:64-256-256-10``, cross-entropy, 300 full-batch Adam epochs, no regularization: it
  fits (memorizes) the transfer set, so its targets there are near one-hot;
- baseline ``mlp:64-8-10``, cross-entropy on the labels alone;
- student ``mlp:64-8-10``, the same initialization and budget as the baseline, trained with
  L = (1 − α)·CE(y, q¹) + α·τ²·KL(p‖q) at τ = 1, α = 0.9 (Hinton et al. 2015).
At τ = 1 the memorizing teacher hands the student the labels back: no smoothing, no class relations,
no per-example rescaling, and the student ends exactly where the baseline does. kddiag should say
``teacher-overconfident`` and advise a higher τ or an early-stopped teacher.
Each checkpoint is ``{'state_dict', 'arch', 'temperature', 'alpha'}``, so ``kddiag inspect`` needs no
``--*-arch`` or settings flags for them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kddiag.data import load_dataset
from kddiag.demo import DEMO_DIR
from kddiag.models import MLP, mlp_name

TEMPERATURE, ALPHA, SEED = 1.0, 0.9, 0
TEACHER_WIDTHS, STUDENT_WIDTHS = (64, 256, 256, 10), (64, 8, 10)


def train(model, x, y, *, epochs, teacher=None, weight_decay=0.0, lr=3e-3):
    """Full-batch Adam; with a teacher, the KD loss above."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    soft = None
    if teacher is not None:
        with torch.no_grad():
            soft = F.log_softmax(teacher(x) / TEMPERATURE, dim=1)
    for _ in range(epochs):
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if soft is not None:
            kl = F.kl_div(F.log_softmax(logits / TEMPERATURE, dim=1), soft, log_target=True,
                          reduction="batchmean")
            loss = (1 - ALPHA) * loss + ALPHA * TEMPERATURE**2 * kl
        loss.backward()
        optimizer.step()
    return model.eval()


def main() -> None:
    torch.manual_seed(SEED)
    data = load_dataset("digits:train")
    x, y = data.x, torch.as_tensor(data.labels)
    teacher = train(MLP(TEACHER_WIDTHS), x, y, epochs=300)
    torch.manual_seed(SEED + 1)
    baseline = MLP(STUDENT_WIDTHS)
    student = MLP(STUDENT_WIDTHS)
    student.load_state_dict(baseline.state_dict())
    train(baseline, x, y, epochs=2000)
    train(student, x, y, epochs=2000, teacher=teacher)
    for name, model, widths in (("teacher", teacher, TEACHER_WIDTHS), ("student", student, STUDENT_WIDTHS),
                                ("baseline", baseline, STUDENT_WIDTHS)):
        checkpoint = {"state_dict": model.state_dict(), "arch": mlp_name(widths)}
        if name == "student":
            checkpoint.update(temperature=TEMPERATURE, alpha=ALPHA)
        torch.save(checkpoint, DEMO_DIR / f"{name}.pt")
        print(f"wrote {DEMO_DIR / f'{name}.pt'}")


if __name__ == "__main__":
    main()
