"""Random logits and independent reference implementations (scipy/brute force) for the metric tests."""
import numpy as np
from scipy.special import log_softmax, logsumexp


def logits_and_labels(n=300, n_classes=6, *, seed=0, scale=2.0, correlated=0.7):
    """Teacher, student logits (n, C) and labels; the student roughly follows the teacher, labels follow both."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, n_classes)) * scale
    teacher = base + rng.normal(size=(n, n_classes))
    student = correlated * base + rng.normal(size=(n, n_classes)) * scale * 0.7
    labels = np.array([rng.choice(n_classes, p=np.exp(row)) for row in log_softmax(base, axis=1)])
    return teacher, student, labels


def log_probs(logits, temperature=1.0):
    return log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def nontarget_log_mass(logits, labels, temperature=1.0):
    """log(1 − p_y) by logsumexp over the non-target log-probabilities (stable reference)."""
    lp = log_probs(logits, temperature)
    masked = lp.copy()
    masked[np.arange(len(labels)), labels] = -np.inf
    return logsumexp(masked, axis=1)


def nontarget_distribution(logits, labels, temperature=1.0):
    """r (n, C) with r_iy = 0, from log-probabilities."""
    lp = log_probs(logits, temperature)
    log_r = lp - nontarget_log_mass(logits, labels, temperature)[:, None]
    with np.errstate(over="ignore"):  # the target entry, overwritten below
        r = np.exp(log_r)
    r[np.arange(len(labels)), labels] = 0.0
    return r


def ece_loop(confidence, hit, n_bins=15):
    """Σ_m |B_m|/n |acc − conf| with bins (lo, hi], value 0 in the first bin; also returns MCE and counts."""
    edges = np.linspace(0, 1, n_bins + 1)
    total, worst, counts = 0.0, 0.0, []
    for m in range(n_bins):
        lo, hi = edges[m], edges[m + 1]
        members = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (m == 0 and c == 0)]
        counts.append(len(members))
        if members:
            gap = abs(np.mean([hit[i] for i in members]) - np.mean([confidence[i] for i in members]))
            total += len(members) / len(confidence) * gap
            worst = max(worst, gap)
    return total, worst, counts
