"""Shared training helpers for the case studies: small MLPs trained with full-batch Adam on CE, label
smoothing or distillation against any per-example soft targets, and the hand-made targets of Tang et
al.'s partial teachers and their controls (docs/literature.md §4).

Every student, teacher and ablation is trained by one loss (docs/literature.md §1):

    L = (1 − α)·CE(e_y, q¹) + α·τ²·KL(ρ ‖ q),  q = softmax(s/τ), q¹ = softmax(s),

where ρ is the target distribution (the teacher's softmax(z/τ), a partial teacher's construction, or
the uniform distribution). CE is α = 0; label smoothing of strength ε is ρ = uniform, τ = 1, α = ε.
Target constructions are pure functions on numpy arrays; torch appears only in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import softmax

from kddiag.distill import distillation_loss  # the one loss, shared with kddiag's remedy probes
from kddiag.models import MLP, mlp_name


def use_few_threads(n_threads: int = 2) -> None:
    """Keep torch on at most ``n_threads`` CPU threads (the case studies' budget is 2 cores)."""
    torch.set_num_threads(max(1, min(n_threads, torch.get_num_threads())))


@dataclass(frozen=True)
class Recipe:
    """How long and how fast to train: full-batch Adam (the data sets here have at most 3,000 examples)."""

    epochs: int
    lr: float = 3e-3


def new_mlp(widths: tuple[int, ...], *, seed: int) -> MLP:
    """A freshly initialized ReLU MLP (``kddiag.models.MLP``), seeded."""
    torch.manual_seed(seed)
    return MLP(tuple(widths))


def train(model: MLP, x: torch.Tensor, labels: np.ndarray, *, recipe: Recipe,
          soft_targets: np.ndarray | None = None, temperature: float = 1.0, alpha: float = 0.0,
          snapshot_epochs: tuple[int, ...] = ()) -> list[dict]:
    """Train ``model`` in place with full-batch Adam on the distillation loss; return the ``snapshot_epochs`` states.

    Deterministic given the model's initialization (full batch: no sampling).
    """
    y = torch.as_tensor(labels, dtype=torch.long)
    rho = None if soft_targets is None else torch.as_tensor(soft_targets, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    snapshots = []
    model.train()
    for epoch in range(1, recipe.epochs + 1):
        loss = distillation_loss(model(x), y, rho, temperature=temperature, alpha=alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if epoch in snapshot_epochs:
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    model.eval()
    return snapshots


def fit_minibatches(model: torch.nn.Module, n_samples: int, batch_loss, *, epochs: int, batch_size: int, lr: float,
                    seed: int, max_grad_norm: float | None = None) -> torch.nn.Module:
    """Train ``model`` in place with mini-batch Adam on ``batch_loss(batch)`` (``batch``: the indices of one
    mini-batch of the ``n_samples`` examples, shuffled each epoch with ``seed``, so two runs from one
    initialization see the same batches); gradients clipped to ``max_grad_norm`` when given. The one KD
    training loop of the case studies (the loss itself: :func:`kddiag.distill.distillation_loss`)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(n_samples, generator=generator).split(batch_size):
            loss = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
    model.eval()
    return model


def train_ce(model: MLP, x: torch.Tensor, labels: np.ndarray, *, recipe: Recipe, **kwargs) -> list[dict]:
    """Plain cross-entropy on the labels."""
    return train(model, x, labels, recipe=recipe, **kwargs)


def train_ls(model: MLP, x: torch.Tensor, labels: np.ndarray, *, epsilon: float, recipe: Recipe,
             **kwargs) -> list[dict]:
    """Label smoothing of strength ε: CE against (1 − ε)·e_y + ε·u (Szegedy 2016; Müller 2019)."""
    n_classes = int(model.widths[-1])
    uniform = np.full((len(labels), n_classes), 1.0 / n_classes)
    return train(model, x, labels, recipe=recipe, soft_targets=uniform, temperature=1.0,
                 alpha=epsilon, **kwargs)


def train_kd(model: MLP, x: torch.Tensor, labels: np.ndarray, soft_targets: np.ndarray, *, temperature: float,
             alpha: float, recipe: Recipe, **kwargs) -> list[dict]:
    """Distillation against per-example soft targets ρ (n_samples, n_classes) given at temperature τ."""
    return train(model, x, labels, recipe=recipe, soft_targets=soft_targets,
                 temperature=temperature, alpha=alpha, **kwargs)


def logits_of(model: MLP, x: torch.Tensor) -> np.ndarray:
    """The model's logits (n_samples, n_classes) as float64."""
    model.eval()
    with torch.inference_mode():
        return model(x).double().numpy()


def logit_weight(model: MLP) -> np.ndarray:
    """The logit-layer weight (n_classes, n_features)."""
    return model.head.weight.detach().double().numpy()


def save_checkpoint(model: MLP, path: Path, *, temperature: float | None = None,
                    alpha: float | None = None) -> Path:
    """Save ``{'state_dict', 'arch', 'temperature', 'alpha'}``: a state dict kddiag loads by its built-in arch."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "arch": mlp_name(model.widths),
                "temperature": temperature, "alpha": alpha}, path)
    return path


# --- target constructions (docs/literature.md §4) --------------------------------------------------

def teacher_targets(teacher_logits: np.ndarray, *, temperature: float) -> np.ndarray:
    """Full KD: ρ = softmax(z/τ) (Hinton 2015)."""
    return softmax(teacher_logits / temperature, axis=1)


def kd_pt_targets(teacher_logits: np.ndarray, labels: np.ndarray, *, temperature: float) -> np.ndarray:
    """KD-pt (Tang 2020, reconstruction): ρ_y = p_y, ρ_k = (1 − p_y)/(C − 1) for k ≠ y.

    Keeps smoothing and the per-example confidence (levels 1, 3); the wrong-class mass is flat.
    """
    p = teacher_targets(teacher_logits, temperature=temperature)
    n, n_classes = p.shape
    p_y = p[np.arange(n), labels]
    rho = np.repeat(((1 - p_y) / (n_classes - 1))[:, None], n_classes, axis=1)
    rho[np.arange(n), labels] = p_y
    return rho


def class_similarity_targets(teacher_weight: np.ndarray, labels: np.ndarray, *,
                             sim_temperature: float) -> np.ndarray:
    """KD-sim (Tang 2020, reconstruction): ρ(x) = softmax(ŵ_yᵀŴ / τ_sim), one target per class.

    ``teacher_weight``: (n_classes, n_features) logit-layer rows; Ŵ are the rows L2-normalized.
    Keeps levels 1 and 2 (class relations of the teacher's logit layer); no per-example rescaling.
    """
    unit = teacher_weight / np.linalg.norm(teacher_weight, axis=1, keepdims=True)
    per_class = softmax(unit @ unit.T / sim_temperature, axis=1)
    return per_class[labels]


def matching_sim_temperature(teacher_weight: np.ndarray, *, target_confidence: float) -> float:
    """τ_sim at which KD-sim's mean ρ_y equals ``target_confidence`` (the teacher's mean p_y at τ).

    So KD-sim smooths as much as full KD does and differs from it only in levels 2 and 3.
    Bisection on log τ_sim; ρ_y falls monotonically as τ_sim grows.
    """
    n_classes = teacher_weight.shape[0]
    classes = np.arange(n_classes)
    lo, hi = np.log(1e-3), np.log(1e3)
    for _ in range(60):
        mid = (lo + hi) / 2
        confidence = class_similarity_targets(teacher_weight, classes, sim_temperature=np.exp(mid))[classes, classes]
        lo, hi = (mid, hi) if confidence.mean() > target_confidence else (lo, mid)
    return float(np.exp((lo + hi) / 2))


def kd_pt_sim_targets(teacher_logits: np.ndarray, teacher_weight: np.ndarray, labels: np.ndarray, *,
                      temperature: float, sim_temperature: float) -> np.ndarray:
    """KD-pt+sim (Tang 2020, reconstruction): ρ_y = p_y(x); ρ_k = (1 − p_y)·ρ^sim_k / Σ_{j≠y} ρ^sim_j."""
    p = teacher_targets(teacher_logits, temperature=temperature)
    n = len(labels)
    rows = np.arange(n)
    p_y = p[rows, labels]
    sim = class_similarity_targets(teacher_weight, labels, sim_temperature=sim_temperature)
    sim[rows, labels] = 0.0
    rho = sim / sim.sum(axis=1, keepdims=True) * (1 - p_y)[:, None]
    rho[rows, labels] = p_y
    return rho


def dkpp_targets(teacher_logits: np.ndarray, *, temperature: float, seed: int) -> np.ndarray:
    """DKPP (BAN 2018): permute each row's non-argmax probabilities at random.

    Keeps the argmax and the set of values (levels 1, 3); destroys pairwise class similarity (level 2).
    """
    p = teacher_targets(teacher_logits, temperature=temperature)
    rng = np.random.default_rng(seed)
    top = np.argmax(p, axis=1)
    out = p.copy()
    for i in range(len(p)):
        others = np.flatnonzero(np.arange(p.shape[1]) != top[i])
        out[i, others] = p[i, rng.permutation(others)]
    return out


def tf_kd_reg_targets(labels: np.ndarray, n_classes: int, *, temperature: float,
                      correct_prob: float = 0.99) -> np.ndarray:
    """Tf-KD_reg (Yuan 2020): a virtual teacher with p_y = a, (1 − a)/(C − 1) elsewhere, softened at τ.

    τ is applied to the log-probabilities, as to every teacher here (Yuan's code divides the
    probabilities themselves, which is flatter still). Level 1 only.
    """
    virtual = np.full((len(labels), n_classes), (1 - correct_prob) / (n_classes - 1))
    virtual[np.arange(len(labels)), labels] = correct_prob
    return softmax(np.log(virtual) / temperature, axis=1)


def target_confidence(targets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ρ_y per example."""
    return targets[np.arange(len(labels)), labels]


__all__ = [
    "Recipe", "use_few_threads", "new_mlp", "distillation_loss", "train", "train_ce", "train_ls", "train_kd",
    "logits_of", "logit_weight", "save_checkpoint", "teacher_targets", "kd_pt_targets",
    "class_similarity_targets", "matching_sim_temperature", "kd_pt_sim_targets", "dkpp_targets",
    "tf_kd_reg_targets", "target_confidence",
]
