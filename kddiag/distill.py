"""The distillation loss, in one place: what the probes train with and the case studies distil with."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, labels: torch.Tensor, soft_targets: torch.Tensor | None,
                      *, temperature: float, alpha: float) -> torch.Tensor:
    """(1 − α)·CE(e_y, q¹) + α·τ²·KL(ρ ‖ softmax(s/τ)), the mean over the batch (Hinton et al. 2015).

    ``student_logits`` s: (n_samples, n_classes); ``labels``: (n_samples,) class ids; ``soft_targets`` ρ:
    (n_samples, n_classes) probabilities already at temperature τ (the teacher's softmax(z/τ), or any
    constructed target), None for cross-entropy alone. α = 0 is plain cross-entropy on the labels.
    """
    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0 or soft_targets is None:
        return hard
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    soft = F.kl_div(log_q, soft_targets, reduction="batchmean")
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft
