"""Realistic :class:`kddiag.types.Report` objects built by hand, for the rendering tests.

The logits come from a small synthetic model of grouped classes (class prototypes near their group's
centre, examples = prototype + noise, linear logit layers), so matrices, histograms and per-example
arrays have the shapes and the structure a real inspection produces. The values are computed here with
plain numpy, independently of ``kddiag.metrics``: the renderers must draw whatever a Report holds.
The teacher memorized the transfer set (saturated targets there), which the findings report.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, softmax
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from kddiag.types import (EVAL, TRANSFER, ClassInfo, Diagnosis, Evidence, Finding, InputInfo, Measurements,
                          Metric, Report, Setting, Settings)

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_GROUPS = (0, 0, 1, 1, 1, 1, 1, 1, 0, 0)  # vehicles, animals
NO_BASELINE = "no baseline student given (--baseline)"
NO_WEIGHTS = "logits mode: no logit-layer weights"
NO_FEATURES = "logits mode: no penultimate features"
SCALE = 0.25  # logit scale of the synthetic linear models
WHATIF_GRID = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def build_report(*, n_classes: int = 10, n_transfer: int = 600, n_eval: int = 300, baseline: bool = True,
                 transfer: bool = True, weights: bool = True, findings: bool = True, seed: int = 0) -> Report:
    """A full inspection report; switch parts off to get logits-mode or partial reports."""
    rng = np.random.default_rng(seed)
    tau, alpha = 4.0, 0.9
    if n_classes == 10:
        class_info = ClassInfo(CIFAR10_NAMES, CIFAR10_GROUPS)
    else:
        class_info = ClassInfo(tuple(f"class_{i:03d}" for i in range(n_classes)),
                               tuple(i // 5 for i in range(n_classes)))
    models = _synthetic_models(rng, np.asarray(class_info.groups), baseline=baseline)
    sets = {EVAL: _synthetic_outputs(rng, models, n_eval, memorized=False)}
    if transfer:
        sets[TRANSFER] = _synthetic_outputs(rng, models, n_transfer, memorized=True)

    metrics: list[Metric] = []
    arrays: dict[str, np.ndarray] = {}
    for dataset, out in sets.items():
        metrics += _set_metrics(dataset, out, class_info, tau=tau, alpha=alpha, baseline=baseline,
                                features=weights, arrays=arrays)
    if transfer:
        gap = (next(m.value for m in metrics if m.name == "effective_smoothing" and m.dataset == EVAL)
               - next(m.value for m in metrics if m.name == "effective_smoothing" and m.dataset == TRANSFER))
        metrics.append(Metric("universe", "softness_gap", TRANSFER, gap))
    whatif_set = TRANSFER if transfer else EVAL
    metrics.append(Metric("universe", "temperature_whatif", whatif_set, _whatif(sets[whatif_set])))
    metrics += _weight_metrics(models, class_info, baseline=baseline, weights=weights)

    inputs = [InputInfo("teacher", "runs/teacher.pt" if weights else "logits/teacher_logits.npz",
                        "state_dict" if weights else "logits", n_classes=n_classes),
              InputInfo("student", "runs/student_kd.pt" if weights else "logits/student_logits.npz",
                        "state_dict" if weights else "logits", n_classes=n_classes),
              InputInfo(EVAL, "data/test.pt", "pt", n_samples=n_eval)]
    if baseline:
        inputs.insert(2, InputInfo("baseline", "runs/student_ce.pt", "state_dict", n_classes=n_classes))
    if transfer:
        inputs.append(InputInfo(TRANSFER, "data/train.pt", "pt", n_samples=n_transfer))
    settings = Settings(temperature=Setting(tau, "guessed"), alpha=Setting(alpha, "checkpoint"))
    measurements = Measurements(tuple(metrics), arrays)
    diagnosis = _diagnosis(measurements) if findings else Diagnosis(
        (), (("capacity-gap", "no transfer set given (--transfer-data)"),
             ("structure-not-transferred", "no baseline student given (--baseline)")))
    return Report(tuple(inputs), settings, class_info, measurements, diagnosis, n_classes)


def build_logits_only_report(*, n_classes: int = 10, seed: int = 0) -> Report:
    """Logits mode with an eval set only: no weights, features, baseline or transfer set."""
    return build_report(n_classes=n_classes, baseline=False, transfer=False, weights=False,
                        findings=False, seed=seed)


# ---------------------------------------------------------------- synthetic models

def _synthetic_models(rng, groups: np.ndarray, *, baseline: bool) -> dict:
    n_classes, dim = len(groups), 24
    centres = rng.normal(size=(groups.max() + 1, dim)) * 1.2
    prototypes = centres[groups] + rng.normal(size=(n_classes, dim)) * 0.8
    models = {"prototypes": prototypes,
              "teacher": prototypes * 1.6,
              "student": prototypes + rng.normal(size=prototypes.shape) * 0.7}
    if baseline:
        models["baseline"] = prototypes + rng.normal(size=prototypes.shape) * 1.1
    return models


def _synthetic_outputs(rng, models: dict, n: int, *, memorized: bool) -> dict:
    """Labels, logits and features of every model on one set; a memorized set has sharp teacher logits."""
    prototypes = models["prototypes"]
    labels = rng.integers(0, len(prototypes), size=n)
    x = prototypes[labels] + rng.normal(size=(n, prototypes.shape[1])) * 1.3
    teacher_x = prototypes[labels] + (x - prototypes[labels]) * (0.25 if memorized else 1.0)
    out = {"labels": labels,
           "teacher": (teacher_x @ models["teacher"].T * (SCALE * 8.0 if memorized else SCALE), teacher_x),
           # the KD student follows the teacher's logits (on unmemorized inputs) plus its own errors
           "student": (x @ (0.5 * models["teacher"] + 0.5 * models["student"]).T * SCALE * 0.7
                       + rng.normal(size=(n, len(prototypes))) * 0.3, x + rng.normal(size=x.shape) * 0.5)}
    if "baseline" in models:
        out["baseline"] = (x @ models["baseline"].T * SCALE, x + rng.normal(size=x.shape) * 0.8)
    return out


# ---------------------------------------------------------------- measurements

def _set_metrics(dataset, out, class_info, *, tau, alpha, baseline, features, arrays) -> list[Metric]:
    labels = out["labels"]
    n, n_classes = len(labels), out["teacher"][0].shape[1]
    model_names = ("teacher", "student", "baseline")
    metrics = []
    for model in model_names:
        if model == "baseline" and not baseline:
            metrics.append(Metric("outcome", "baseline_accuracy", dataset, None, unavailable=NO_BASELINE))
            metrics.append(Metric("universe", "baseline_ece", dataset, None, unavailable=NO_BASELINE))
            continue
        logits = out[model][0]
        prob = softmax(logits, axis=1)
        correct = (prob.argmax(1) == labels).astype(float)
        metrics.append(Metric("outcome", f"{model}_accuracy", dataset, correct.mean(), ci=_bootstrap(correct)))
        reliability = _reliability(prob, labels)
        metrics += [Metric("universe", f"{model}_ece", dataset, reliability["ece"]),
                    Metric("universe", f"{model}_mce", dataset, reliability["mce"]),
                    Metric("universe", f"{model}_nll", dataset, -log_softmax(logits, 1)[np.arange(n), labels].mean()),
                    Metric("universe", f"{model}_brier", dataset,
                           ((prob - np.eye(n_classes)[labels]) ** 2).sum(1).mean()),
                    Metric("universe", f"{model}_fitted_temperature", dataset, _fitted_temperature(logits, labels)),
                    Metric("domain", f"{model}_dark_knowledge_content", dataset, _dark_knowledge(logits, labels)),
                    Metric("domain", f"{model}_nontarget_logit_spread", dataset, _spread(logits, labels)),
                    Metric("domain", f"{model}_output_similarity", dataset,
                           _output_similarity(logits, labels).tolist())]
        if model != "baseline":
            del reliability["ece"], reliability["mce"]
            metrics.append(Metric("universe", f"{model}_reliability", dataset, reliability))
        if class_info.groups is not None:
            metrics.append(Metric("domain", f"{model}_group_recovery", dataset,
                                  _group_recovery(_output_similarity(logits, labels), class_info.groups)))

    z, s = out["teacher"][0], out["student"][0]
    t_pred, s_pred = z.argmax(1), s.argmax(1)
    agree = (t_pred == s_pred).astype(float)
    kl1 = _kl(z, s, 1.0)
    metrics += [Metric("outcome", "agreement", dataset, agree.mean(), ci=_bootstrap(agree)),
                Metric("outcome", "kl_teacher_student", dataset, kl1.mean(), ci=_bootstrap(kl1)),
                Metric("outcome", "kl_teacher_student_at_temperature", dataset, _kl(z, s, tau).mean()),
                Metric("outcome", "permuted_agreement", dataset, agree.mean()),
                Metric("outcome", "class_permutation", dataset, list(range(n_classes)))]
    s_sim, t_sim = _output_similarity(s, labels), _output_similarity(z, labels)
    metrics.append(Metric("domain", "output_similarity_transfer_score", dataset, _matrix_spearman(t_sim, s_sim)))
    if baseline:
        b = out["baseline"][0]
        gain = (s_pred == labels).astype(float) - (b.argmax(1) == labels)
        metrics += [Metric("outcome", "baseline_agreement", dataset, (t_pred == b.argmax(1)).mean()),
                    Metric("outcome", "kd_gain", dataset, gain.mean(), ci=_bootstrap(gain)),
                    Metric("domain", "baseline_output_similarity_transfer_score", dataset,
                           _matrix_spearman(t_sim, _output_similarity(b, labels)))]
    else:
        metrics.append(Metric("outcome", "kd_gain", dataset, None, unavailable=NO_BASELINE))

    p_y = softmax(z / tau, 1)[np.arange(n), labels]
    q_y = softmax(s / tau, 1)[np.arange(n), labels]
    q1_y = softmax(s, 1)[np.arange(n), labels]
    edges = np.linspace(0, 1, 21)
    metrics += [Metric("universe", "effective_smoothing", dataset, float(np.mean(1 - p_y))),
                Metric("universe", "equivalent_smoothing", dataset, float(np.mean(1 - p_y)) * n_classes / (n_classes - 1)),
                Metric("universe", "saturation_share", dataset, float(np.mean(p_y > 0.99))),
                Metric("universe", "target_entropy", dataset, _entropy(z / tau)),
                Metric("universe", "target_confidence_histogram", dataset,
                       {"bin_edges": edges.tolist(), "counts": np.histogram(p_y, edges)[0].tolist()}),
                Metric("domain", "dark_knowledge_content_at_temperature", dataset, _dark_knowledge(z / tau, labels))]
    if features:
        metrics.append(Metric("domain", "feature_cka", dataset, _linear_cka(out["teacher"][1], out["student"][1])))
        if baseline:
            metrics.append(Metric("domain", "baseline_feature_cka", dataset,
                                  _linear_cka(out["teacher"][1], out["baseline"][1])))
    else:
        metrics.append(Metric("domain", "feature_cka", dataset, None, unavailable=NO_FEATURES))

    w = ((1 - alpha) * (q1_y - 1) + alpha * tau * (q_y - p_y)) / np.minimum(q1_y - 1, -1e-6)
    w0 = (1 - alpha) + alpha * tau * (p_y - 1 / n_classes) * n_classes / (n_classes - 1)
    if baseline:
        difficulty, source = -log_softmax(out["baseline"][0], 1)[np.arange(n), labels], "baseline_loss"
    else:
        difficulty, source = _knn_disagreement(z, labels), "knn_disagreement_logits"
    student_wrong = (s_pred != labels).astype(int)
    p1_y = softmax(z, 1)[np.arange(n), labels]
    hardest = np.argsort(p1_y)[:10]
    metrics += [Metric("instance", "rescaling_weight_mean", dataset, w.mean()),
                Metric("instance", "rescaling_weight_cv", dataset, w.std() / abs(w.mean())),
                Metric("instance", "rescaling_weight_low_share", dataset, np.mean(w < 0.5)),
                Metric("instance", "untrained_rescaling_weight_cv", dataset, w0.std() / abs(w0.mean())),
                Metric("instance", "untrained_rescaling_weight_low_share", dataset, np.mean(w0 < 0.5)),
                Metric("instance", "rescaling_difficulty_correlation", dataset, spearmanr(w0, -difficulty)[0]),
                Metric("instance", "difficulty_source", dataset, source),
                Metric("instance", "confidence_error_auroc", dataset,
                       roc_auc_score(student_wrong, 1 - p1_y) if 0 < student_wrong.sum() < n else None,
                       unavailable=None if 0 < student_wrong.sum() < n else "the student makes no errors"),
                Metric("instance", "tckd", dataset, _tckd(p_y, q_y).mean()),
                Metric("instance", "nckd", dataset, _nckd(z / tau, s / tau, labels).mean()),
                Metric("instance", "nckd_weight", dataset, float(np.mean(1 - p_y))),
                Metric("instance", "teacher_error_rate", dataset, float(np.mean(t_pred != labels))),
                Metric("instance", "hardest_examples", dataset,
                       [{"index": int(i), "label": int(labels[i]), "teacher_prediction": int(t_pred[i]),
                         "target_confidence": float(p1_y[i])} for i in hardest])]
    arrays[f"{dataset}/teacher_target_confidence"] = p_y
    arrays[f"{dataset}/rescaling_weight"] = w
    arrays[f"{dataset}/untrained_rescaling_weight"] = w0
    arrays[f"{dataset}/difficulty"] = difficulty
    return metrics


def _weight_metrics(models, class_info, *, baseline, weights) -> list[Metric]:
    names = ("teacher", "student") + (("baseline",) if baseline else ())
    if not weights:
        return [Metric("domain", f"{m}_weight_similarity", "weights", None, unavailable=NO_WEIGHTS) for m in names]
    sims = {}
    for model in names:
        w = models[model] / np.linalg.norm(models[model], axis=1, keepdims=True)
        sims[model] = w @ w.T
    metrics = [Metric("domain", f"{m}_weight_similarity", "weights", sims[m].tolist()) for m in names]
    metrics.append(Metric("domain", "weight_similarity_transfer_score", "weights",
                          _matrix_spearman(sims["teacher"], sims["student"])))
    if baseline:
        metrics.append(Metric("domain", "baseline_weight_similarity_transfer_score", "weights",
                              _matrix_spearman(sims["teacher"], sims["baseline"])))
    metrics += [Metric("domain", f"{m}_weight_group_recovery", "weights", _group_recovery(sims[m], class_info.groups))
                for m in names]
    return metrics


def _whatif(out) -> dict:
    z, labels = out["teacher"][0], out["labels"]
    n, n_classes = z.shape
    rows = {"temperatures": list(WHATIF_GRID), "effective_smoothing": [], "saturation_share": [],
            "dark_knowledge_content": [], "rescaling_weight_cv": []}
    for tau in WHATIF_GRID:
        p_y = softmax(z / tau, 1)[np.arange(n), labels]
        w0 = 0.1 + 0.9 * tau * (p_y - 1 / n_classes) * n_classes / (n_classes - 1)
        rows["effective_smoothing"].append(float(np.mean(1 - p_y)))
        rows["saturation_share"].append(float(np.mean(p_y > 0.99)))
        rows["dark_knowledge_content"].append(_dark_knowledge(z / tau, labels))
        rows["rescaling_weight_cv"].append(float(w0.std() / abs(w0.mean())))
    ok = [t for t, e, s in zip(WHATIF_GRID, rows["effective_smoothing"], rows["saturation_share"])
          if 0.05 <= e <= 0.6 * (n_classes - 1) / n_classes and s <= 0.5]
    rows["informative_range"] = [min(ok), max(ok)] if ok else None
    return rows


def _diagnosis(measurements: Measurements) -> Diagnosis:
    saturation = measurements.value("universe", "saturation_share", TRANSFER)
    smoothing = measurements.value("universe", "effective_smoothing", TRANSFER)
    error_rate = measurements.value("instance", "teacher_error_rate", TRANSFER)
    cv = measurements.value("instance", "untrained_rescaling_weight_cv", TRANSFER)
    findings = (
        Finding("teacher-overconfident", ("universe", "instance"), 0.82,
                "The teacher's targets are near one-hot on the transfer set",
                (Evidence("universe.saturation_share", saturation, 0.5, TRANSFER, ">"),
                 Evidence("universe.effective_smoothing", smoothing, 0.02, TRANSFER, "<"),
                 Evidence("instance.untrained_rescaling_weight_cv", cv, 0.1, TRANSFER, "<")),
                "On the data the student was distilled on, most teacher targets have p_y > 0.99 at τ = 4: the "
                "teacher memorized its training set. Such targets carry no label smoothing and rescale every "
                "example's gradient alike, so the student learns little beyond the hard labels.",
                "Raise τ into the informative range, use an early-stopped or less over-fit teacher, distil on "
                "augmented views the teacher did not memorize, or use cross-fitted teacher predictions."),
        Finding("teacher-wrong-on-transfer", ("instance",), 0.35,
                "The teacher contradicts the labels on some transfer examples",
                (Evidence("instance.teacher_error_rate", error_rate, 0.05, TRANSFER, ">"),),
                "Where the teacher's top class is not the label, the soft and the hard loss pull the student "
                "in different directions; with α = 0.9 the teacher wins. Inspect the hardest examples "
                "listed in the instance section: label noise, or genuine teacher errors?",
                "Lower α, filter or relabel the examples the teacher gets wrong, check the data pipeline."),
    )
    return Diagnosis(findings, (("class-order-mismatch", "agreement is high: no relabelling to look for"),))


# ---------------------------------------------------------------- plain-numpy formulas

def _bootstrap(values: np.ndarray, n_resamples: int = 200) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    means = rng.choice(values, size=(n_resamples, len(values))).mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _reliability(prob, labels, n_bins: int = 15) -> dict:
    confidence, correct = prob.max(1), prob.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    conf = np.array([confidence[which == b].mean() if count[b] else np.nan for b in range(n_bins)])
    acc = np.array([correct[which == b].mean() if count[b] else np.nan for b in range(n_bins)])
    gaps = np.abs(acc - conf)
    return {"bin_edges": edges.tolist(), "bin_confidence": [None if np.isnan(c) else c for c in conf],
            "bin_accuracy": [None if np.isnan(a) else a for a in acc], "bin_count": count.tolist(),
            "ece": float(np.nansum(gaps * count) / len(labels)), "mce": float(np.nanmax(gaps))}


def _fitted_temperature(logits, labels) -> float:
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 200))
    nll = [-log_softmax(logits / t, 1)[np.arange(len(labels)), labels].mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def _nontarget(logits, labels) -> np.ndarray:
    mask = np.ones_like(logits, dtype=bool)
    mask[np.arange(len(labels)), labels] = False
    return logits[mask].reshape(len(labels), -1)


def _dark_knowledge(logits, labels) -> float:
    log_r = log_softmax(_nontarget(logits, labels), 1)
    k = log_r.shape[1]
    return float(np.mean((np.exp(log_r) * (log_r + np.log(k))).sum(1)) / np.log(k))


def _spread(logits, labels) -> float:
    other = _nontarget(logits, labels)
    margin = logits[np.arange(len(labels)), labels] - other.mean(1)
    keep = margin > 0
    return float(np.mean(other[keep].std(1) / margin[keep]))


def _output_similarity(logits, labels) -> np.ndarray:
    n_classes = logits.shape[1]
    prob = softmax(logits, 1)
    r = prob.copy()
    r[np.arange(len(labels)), labels] = 0
    r /= r.sum(1, keepdims=True)
    sim = np.array([r[labels == c].mean(0) if np.any(labels == c) else np.zeros(n_classes) for c in range(n_classes)])
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 0)
    return sim


def _matrix_spearman(a, b) -> float:
    upper = np.triu_indices_from(a, k=1)
    return float(spearmanr(a[upper], b[upper])[0])


def _group_recovery(sim, groups) -> float:
    groups = np.asarray(groups)
    upper = np.triu_indices_from(sim, k=1)
    same = (groups[:, None] == groups[None, :])[upper]
    return float(roc_auc_score(same, sim[upper]))


def _kl(z, s, tau) -> np.ndarray:
    log_p, log_q = log_softmax(z / tau, 1), log_softmax(s / tau, 1)
    return (np.exp(log_p) * (log_p - log_q)).sum(1)


def _entropy(scaled_logits) -> float:
    log_p = log_softmax(scaled_logits, 1)
    return float(-(np.exp(log_p) * log_p).sum(1).mean())


def _tckd(p_y, q_y) -> np.ndarray:
    p_y, q_y = np.clip(p_y, 1e-12, 1 - 1e-12), np.clip(q_y, 1e-12, 1 - 1e-12)
    return p_y * np.log(p_y / q_y) + (1 - p_y) * np.log((1 - p_y) / (1 - q_y))


def _nckd(z, s, labels) -> np.ndarray:
    log_r, log_rs = log_softmax(_nontarget(z, labels), 1), log_softmax(_nontarget(s, labels), 1)
    return (np.exp(log_r) * (log_r - log_rs)).sum(1)


def _linear_cka(x, y) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def _knn_disagreement(points, labels, k: int = 10) -> np.ndarray:
    distance = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    neighbours = np.argsort(distance, axis=1)[:, :k]
    return (labels[neighbours] != labels[:, None]).mean(1)
