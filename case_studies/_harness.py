"""What every case study shares: its data, the run over seeds, kddiag's verdicts, and the written results.

A study module has a docstring with ``Claim:`` and ``Source:`` lines and a ``run_seed(ctx) -> rows``
function that trains what it needs for one seed, records kddiag's verdicts through ``ctx.inspect``
and returns its numbers as ``{row: {column: value}}``; ``run_study`` repeats it over seeds, reduces
each cell to mean ± standard deviation, checks the claim and writes ``<study>.json`` and ``<study>.md``.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from case_studies._training import (Recipe, logits_of, new_mlp, save_checkpoint, train_ce, train_kd, train_ls,
                                    use_few_threads)
from kddiag.inputs import ClassInfo, Dataset

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FAMILY_MLP = "mlp"  # a verdict's model family unless its study says otherwise (the benchmark scores families apart)

# The standard pair: a wide teacher and a student with 16 hidden units (about 1/150 of its parameters).
TEACHER_HIDDEN, STUDENT_HIDDEN = (256, 256), (16,)
EARLY_TEACHER = Recipe(epochs=50, lr=1e-3)  # stopped before it fits the transfer set: the good teacher
FULL_TEACHER = Recipe(epochs=400, lr=1e-3)  # trained until it fits (memorizes) the transfer set
STUDENT = Recipe(epochs=600, lr=3e-3)


# --- data --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One draw of a data set: the transfer set the students learn from and a held-out eval set."""

    train: Dataset
    test: Dataset
    extra: Dataset | None = None  # more labelled data, for teachers that see more than the student

    @property
    def n_classes(self) -> int:
        return int(self.train.labels.max()) + 1

    @property
    def n_features(self) -> int:
        return int(self.train.x.shape[1])


def hierarchy_task(seed: int, *, n_train_per_class: int = 30, n_test_per_class: int = 100,
                   n_extra_per_class: int = 0, n_groups: int = 4, classes_per_group: int = 5,
                   n_features: int = 32, noise: float = 1.0) -> Task:
    """kddiag's synthetic class hierarchy (known super-classes), drawn afresh for each seed.

    Few training examples per class, so the student over-fits and the teacher's soft targets matter.
    """
    from kddiag.readers.arrays import make_class_hierarchy

    per_class = n_train_per_class + n_extra_per_class + n_test_per_class
    x, y, groups = make_class_hierarchy(n_groups=n_groups, classes_per_group=classes_per_group,
                                        n_features=n_features, n_per_class=per_class, noise=noise, seed=seed)
    info = ClassInfo(names=tuple(f"g{g}/c{k}" for k, g in enumerate(groups.tolist())),
                     groups=tuple(groups.tolist()))
    order = [np.flatnonzero(y == c) for c in range(len(groups))]
    cuts = np.cumsum([n_train_per_class, n_extra_per_class])
    parts = [np.sort(np.concatenate([idx[lo:hi] for idx in order]))
             for lo, hi in ((0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], None))]
    name = f"hierarchy(seed={seed}, noise={noise})"
    sets = {part: Dataset(f"{name}:{part}", torch.from_numpy(x[idx]), y[idx], info)
            for part, idx in zip(("train", "extra", "test"), parts) if idx.size}
    return Task(train=sets["train"], test=sets["test"], extra=sets.get("extra"))


def digits_task(seed: int, *, n_train_per_class: int = 30) -> Task:
    """scikit-learn's digits: ``n_train_per_class`` images per class from ``digits:train``; eval on ``digits:test``."""
    from kddiag.readers.arrays import load_dataset

    train, test = load_dataset("digits:train"), load_dataset("digits:test")
    rng = np.random.default_rng(seed)
    idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(train.labels == c))[:n_train_per_class]
                                  for c in range(10)]))
    subset = Dataset(f"digits:train[{n_train_per_class}/class, seed={seed}]", train.x[idx], train.labels[idx],
                     train.class_info)
    return Task(train=subset, test=test)


# --- models ------------------------------------------------------------------------------------

def fit_teacher(ctx: "Context", task: Task, *, recipe: Recipe, hidden: tuple[int, ...] = TEACHER_HIDDEN,
                x: torch.Tensor | None = None, labels: np.ndarray | None = None, epsilon: float = 0.0,
                snapshot_epochs: tuple[int, ...] = ()):
    """A teacher trained with CE (or label smoothing ε) on the transfer set, or on ``x``/``labels``.

    Returns the model and its state dicts at ``snapshot_epochs`` (shortened like the epochs in quick mode).
    """
    x = task.train.x if x is None else x
    labels = task.train.labels if labels is None else labels
    model = new_mlp((task.n_features, *hidden, task.n_classes), seed=ctx.seed)
    options = dict(recipe=ctx.recipe(recipe), snapshot_epochs=tuple(map(ctx.epochs, snapshot_epochs)))
    snapshots = (train_ls(model, x, labels, epsilon=epsilon, **options) if epsilon
                 else train_ce(model, x, labels, **options))
    return model, snapshots


def fit_student(ctx: "Context", task: Task, *, hidden: tuple[int, ...] = STUDENT_HIDDEN,
                soft_targets: np.ndarray | None = None, temperature: float = 1.0, alpha: float = 0.0,
                epsilon: float = 0.0, labels: np.ndarray | None = None, recipe: Recipe = STUDENT,
                init_seed: int | None = None):
    """A student trained on the transfer set: CE, label smoothing ε, or KD against ``soft_targets`` at (τ, α).

    Every student of one seed starts from the same initialization, so differences between them are paired;
    ``init_seed`` starts it from another one.
    """
    x, labels = task.train.x, task.train.labels if labels is None else labels
    model = new_mlp((task.n_features, *hidden, task.n_classes), seed=ctx.seed + 100 if init_seed is None else init_seed)
    recipe = ctx.recipe(recipe)
    if epsilon:
        train_ls(model, x, labels, epsilon=epsilon, recipe=recipe)
    elif soft_targets is not None:
        train_kd(model, x, labels, soft_targets, temperature=temperature, alpha=alpha, recipe=recipe)
    else:
        train_ce(model, x, labels, recipe=recipe)
    return model


def eval_accuracy(model, task: Task) -> float:
    """Accuracy on the held-out eval set."""
    from kddiag.metrics.fidelity import accuracy

    return accuracy(logits_of(model, task.test.x), task.test.labels)


# --- one seed of one study -----------------------------------------------------------------------

# Scalar metrics kept with every verdict, so that a confusion can be explained from the JSON alone:
# one getter per value, over the measurements (kddiag.results.Measurements).
KEPT_METRICS: tuple[Callable, ...] = (
    lambda m: _kept_set(m.outcome, "eval").teacher_accuracy,
    lambda m: _kept_set(m.outcome, "eval").student_accuracy,
    lambda m: _kept_set(m.outcome, "eval").baseline_accuracy,
    lambda m: _kept_set(m.outcome, "eval").kd_gain,
    lambda m: _kept_set(m.outcome, "transfer").agreement,
    lambda m: _kept_set(m.outcome, "eval").agreement,
    lambda m: _kept_set(m.outcome, "transfer").permuted_agreement,
    lambda m: _kept_set(m.outcome, "transfer").kl_teacher_student_at_temperature,
    lambda m: _kept_set(m.universe, "transfer").effective_smoothing,
    lambda m: _kept_set(m.universe, "eval").effective_smoothing,
    lambda m: _kept_set(m.universe, "transfer").saturation_share,
    lambda m: m.universe.softness_gap,
    lambda m: _kept_set(m.universe, "eval").teacher.fitted_temperature,
    lambda m: _kept_set(m.domain, "transfer").teacher.dark_knowledge_content,
    lambda m: _kept_set(m.domain, "transfer").dark_knowledge_content_at_temperature,
    lambda m: _kept_set(m.domain, "transfer").teacher.nontarget_logit_spread,
    lambda m: _kept_set(m.domain, "eval").output_similarity_transfer_score,
    lambda m: _kept_set(m.domain, "eval").baseline_output_similarity_transfer_score,
    lambda m: m.domain.weights.weight_similarity_transfer_score,
    lambda m: m.domain.weights.baseline_weight_similarity_transfer_score,
    lambda m: _kept_set(m.domain, "eval").teacher.group_recovery,
    lambda m: _kept_set(m.domain, "eval").student.group_recovery,
    lambda m: _kept_set(m.domain, "eval").baseline.group_recovery,
    lambda m: _kept_set(m.instance, "transfer").untrained_rescaling_weight_cv,
    lambda m: _kept_set(m.instance, "transfer").teacher_error_rate,
    lambda m: _kept_set(m.instance, "eval").teacher_error_rate,
    lambda m: _kept_set(m.instance, "transfer").nckd_weight,
)


def _kept_set(level, dataset: str):
    """The level's record on ``dataset``; when that set was not given, an empty record of the same kind
    (every value 'not measured', its name still stamped), so every kept key is always written."""
    record = level.on(dataset)
    return record if record is not None else type(level.sets()[0])(dataset)


@dataclass
class Context:
    """One seed of one study: where its checkpoints and reports go, and the verdicts it collected."""

    study: str
    seed: int
    quick: bool
    out_dir: Path
    keep_html: bool  # write an HTML report per scenario (done for the first seed only)
    verdicts: list[dict] = field(default_factory=list)
    advice: list[dict] = field(default_factory=list)  # follow_advice's trials

    def epochs(self, n: int) -> int:
        """A training length, shortened in quick mode (a smoke test, not a result)."""
        return max(5, n // 4) if self.quick else n

    def recipe(self, recipe: Recipe) -> Recipe:
        return replace(recipe, epochs=self.epochs(recipe.epochs))

    def save(self, model, name: str, *, temperature: float | None = None, alpha: float | None = None) -> Path:
        """Save a checkpoint kddiag can load by itself: state dict, built-in arch and KD settings."""
        path = self.out_dir / "checkpoints" / self.study / f"seed{self.seed}" / f"{name}.pt"
        return save_checkpoint(model, path, temperature=temperature, alpha=alpha)

    def inspect(self, scenario: str, true_cause: str | None, *, teacher: Path, student: Path, task: Task,
                baseline: Path | None = None, benchmark: bool = True):
        """Run ``kddiag.inspect`` on saved checkpoints and record its verdict against the true cause.

        ``true_cause`` None: a scenario without one clear cause, shown but never scored.
        """
        import kddiag

        report = kddiag.inspect(str(teacher), str(student), data=task.test, transfer_data=task.train,
                                baseline=None if baseline is None else str(baseline))
        return self.record(scenario, true_cause, report, benchmark=benchmark)

    def record(self, scenario: str, true_cause: str | None, report, *, benchmark: bool = True, **extra):
        """Keep ``report``'s verdict on ``scenario`` (and its HTML page with ``keep_html``); ``extra`` entries
        (e.g. the model ``family``) go into the verdict record."""
        from kddiag.pipeline import write_outputs

        html = None
        if self.keep_html:
            with tempfile.TemporaryDirectory() as tmp:
                written = write_outputs(report, tmp)
                html = self.out_dir / "html" / self.study / f"{scenario}.html"
                html.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(written["html"]), html)
                html.chmod(0o644)
        findings = report.diagnosis.findings
        measured = bool(report.measurements.outcome.sets())  # a vocabulary mismatch stops before measuring
        held_out = report.measurements.outcome.on("eval")
        gain = None if held_out is None else held_out.kd_gain
        self.verdicts.append({
            "study": self.study, "family": FAMILY_MLP, **extra, "scenario": scenario, "true_cause": true_cause,
            "seed": self.seed, "verdict": findings[0].id if findings else "healthy",
            "kd_gain": None if gain is None or not gain.ok else round(gain.value, 4),
            "kd_gain_ci95": None if gain is None or gain.ci is None else [round(c, 4) for c in gain.ci],
            "findings": [{"id": f.id, "severity": round(float(f.severity), 3),
                          "evidence": [e.to_dict() for e in f.evidence],
                          "remedy": None if f.remedy is None else f.remedy.to_dict()} for f in findings],
            "metrics": _kept_metrics(report.measurements) if measured else {},
            "html": None if html is None else str(html.relative_to(self.out_dir)),
            "benchmark": benchmark and true_cause is not None,
        })
        return report

    def follow_advice(self, scenario: str, before: float, retrain: Callable[[float, float], float], *,
                      temperature: float, alpha: float) -> dict | None:
        """Do what kddiag's top finding on ``scenario`` advises, when its advice names a setting (its
        ``remedy``): ``retrain(temperature, alpha)`` trains the same student again with that setting changed
        (the other as it was) and returns its held-out accuracy, kept against ``before``, the original
        student's. Returns the trial, or None when the top finding names no setting to change."""
        verdict = next(v for v in reversed(self.verdicts) if v["scenario"] == scenario)
        top = verdict["findings"][0] if verdict["findings"] else None
        remedy = None if top is None else top.get("remedy")
        remedy = {k: remedy[k] for k in ("temperature", "alpha") if k in remedy} if remedy else None
        if not remedy:  # none, or one that changes neither τ nor α (the teacher's calibration)
            return None
        followed = {"temperature": remedy.get("temperature", temperature), "alpha": remedy.get("alpha", alpha)}
        if followed == {"temperature": temperature, "alpha": alpha}:
            return None  # advice to keep the settings as they are: nothing to retrain
        after = float(retrain(followed["temperature"], followed["alpha"]))
        trial = {"study": self.study, "family": verdict["family"], "scenario": scenario, "seed": self.seed,
                 "rule": top["id"], "remedy": remedy, "before": {"temperature": temperature, "alpha": alpha},
                 "accuracy_before": round(float(before), 4), "accuracy_after": round(after, 4),
                 "change": round(after - float(before), 4)}
        self.advice.append(trial)
        return trial

    def severity(self, scenario: str, finding_id: str) -> float:
        """Severity of ``finding_id`` in this seed's verdict on ``scenario`` (0 when it did not fire)."""
        verdict = next(v for v in reversed(self.verdicts) if v["scenario"] == scenario)
        return next((f["severity"] for f in verdict["findings"] if f["id"] == finding_id), 0.0)


def outcome_row(teacher: float, baseline: float, student: float) -> dict[str, float]:
    """A scenario's held-out accuracies and the KD gain, under the column names the out-of-family studies share."""
    return {"teacher accuracy": teacher, "baseline (CE) accuracy": baseline, "KD student accuracy": student,
            "KD gain": student - baseline}


def require_extra(study: str, missing: str | None) -> None:
    """Stop a study that cannot run here with one line (``missing``: why, from its ``missing_extra``)."""
    if missing:
        raise SystemExit(f"the {study} case study {missing}")


def _kept_metrics(measurements) -> dict[str, float | None]:
    """``{'level.metric@dataset': value rounded to 4 decimals, or None}`` for every getter in KEPT_METRICS."""
    out = {}
    for kept in KEPT_METRICS:
        metric = kept(measurements)
        value = metric.value
        out[f"{metric.name}@{metric.dataset}"] = round(float(value), 4) if isinstance(value, (int, float)) else None
    return out


# --- the claim checks ----------------------------------------------------------------------------

Rows = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Check:
    """One testable part of a study's claim, and whether it held here."""

    statement: str
    holds: bool
    evidence: str

    def to_dict(self) -> dict:
        return {"statement": self.statement, "holds": self.holds, "evidence": self.evidence}


def difference(per_seed: list[Rows], a: tuple[str, str], b: tuple[str, str]) -> tuple[float, float]:
    """Mean and standard deviation over seeds of the paired difference cell ``a`` − cell ``b``."""
    diffs = np.array([rows[a[0]][a[1]] - rows[b[0]][b[1]] for rows in per_seed])
    return float(diffs.mean()), float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0


def compare(statement: str, per_seed: list[Rows], a: tuple[str, str], b: tuple[str, str], *,
            relation: str, scale: float = 100.0, unit: str = " pt") -> Check:
    """A check on a paired difference d = a − b over seeds.

    ``relation``: '>' (d > 0 beyond noise: mean > std), '>=' (not worse beyond noise: mean ≥ −std),
    '<=' (not better beyond noise: mean ≤ std), '<' (d < 0 beyond noise: mean < −std).
    """
    mean, std = difference(per_seed, a, b)
    holds = {">": mean > std, ">=": mean >= -std, "<=": mean <= std, "<": mean < -std}[relation]
    evidence = (f"{a[0]} [{a[1]}] − {b[0]} [{b[1]}] = {scale * mean:+.1f} ± {scale * std:.1f}{unit} "
                f"over {len(per_seed)} seed(s)")
    return Check(statement, bool(holds), evidence)


# --- the run over seeds and the written results -------------------------------------------------

def claim_and_source(doc: str) -> tuple[str, str]:
    """The ``Claim:`` and ``Source:`` paragraphs of a study's docstring."""
    found = {}
    for key in ("Claim", "Source"):
        match = re.search(rf"^{key}:\s*(.+?)(?:\n\s*\n|\Z)", doc, flags=re.M | re.S)
        found[key] = " ".join(match.group(1).split()) if match else ""
    return found["Claim"], found["Source"]


def run_study(study: str, doc: str, *, run_seed: Callable[[Context], Rows],
              checks: Callable[[list[Rows]], list[Check]], seeds, quick: bool, out_dir: Path | None) -> dict:
    """Run ``run_seed`` for every seed, check the claim, write ``<study>.json`` and ``<study>.md``; return it all."""
    seeds = tuple(seeds)[:1] if quick else tuple(seeds)
    out_dir = output_dir(out_dir, quick)
    use_few_threads()
    start = time.perf_counter()
    per_seed, verdicts, advice = [], [], []
    for i, seed in enumerate(seeds):
        ctx = Context(study=study, seed=seed, quick=quick, out_dir=out_dir, keep_html=i == 0)
        per_seed.append(run_seed(ctx))
        verdicts += ctx.verdicts
        advice += ctx.advice
    claim, source = claim_and_source(doc)
    results = checks(per_seed)
    result = {
        "study": study, "claim": claim, "source": source, "seeds": list(seeds), "quick": quick,
        "seconds": round(time.perf_counter() - start, 1),
        "table": summarize(per_seed), "checks": [c.to_dict() for c in results],
        "reproduced": all(c.holds for c in results), "verdicts": verdicts, "advice": advice,
    }
    write_results(result, out_dir)
    print(render_markdown(result, brief=True))
    return result


def output_dir(out_dir: Path | None, quick: bool) -> Path:
    """``out_dir``, else case_studies/results (results/quick in quick mode, so a smoke test never overwrites them)."""
    return Path(out_dir) if out_dir is not None else RESULTS_DIR / ("quick" if quick else "")


def summarize(per_seed: list[Rows]) -> dict:
    """``{row: {column: {'mean', 'std', 'values'}}}`` over seeds (sample std; 0 for one seed)."""
    table: dict = {}
    for row, columns in per_seed[0].items():
        table[row] = {}
        for column in columns:
            values = np.array([rows[row][column] for rows in per_seed], dtype=float)
            table[row][column] = {"mean": round(float(np.mean(values)), 4),
                                  "std": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 4),
                                  "values": [round(float(v), 4) for v in values]}
    return table


def write_results(result: dict, out_dir: Path) -> dict[str, Path]:
    """Write ``<study>.json`` and ``<study>.md`` atomically into ``out_dir``."""
    from kddiag.report.json import write_atomic

    name = result["study"]
    json_path, md_path = write_atomic({out_dir / f"{name}.json": json.dumps(result, indent=1) + "\n",
                                       out_dir / f"{name}.md": render_markdown(result)})
    return {"json": json_path, "md": md_path}


def render_markdown(result: dict, *, brief: bool = False) -> str:
    """The study's claim, its table as mean ± std over seeds, the checks and kddiag's verdicts."""
    seeds = ", ".join(map(str, result["seeds"]))
    lines = [f"## {result['study']}" + ("  (quick mode: a smoke test, not a result)" if result["quick"] else ""),
             "", f"**Claim.** {result['claim']}", "", f"**Source.** {result['source']}", "",
             f"Seeds {seeds}; {result['seconds']:.0f} s. Cells: mean ± standard deviation over seeds.", ""]
    if not brief:
        lines += _markdown_table(result["table"]) + [""]
    lines += ["| check | holds | evidence |", "|---|---|---|"]
    lines += [f"| {c['statement']} | {'yes' if c['holds'] else '**no**'} | {c['evidence']} |" for c in result["checks"]]
    lines += ["", f"**Reproduced here:** {'yes' if result['reproduced'] else 'no (see the checks that fail)'}", ""]
    if result["verdicts"]:
        lines += ["| scenario | true cause | kddiag's verdict per seed (top finding) |", "|---|---|---|"]
        by_scenario: dict = {}
        for v in result["verdicts"]:
            by_scenario.setdefault((v["scenario"], v["true_cause"]), []).append(v["verdict"])
        for (scenario, cause), found in by_scenario.items():
            marks = ", ".join(f if f == cause or cause is None else f"**{f}**" for f in found)
            lines.append(f"| {scenario} | {cause or '(not labelled)'} | {marks} |")
        lines.append("")
    if result.get("advice"):
        lines += ["kddiag's advice followed (the top finding's remedy; the same student retrained with it):", "",
                  "| scenario | seed | finding | remedy | accuracy before → after | change |",
                  "|---|---|---|---|---|---|"]
        for t in result["advice"]:
            remedy = ", ".join(f"{'τ' if k == 'temperature' else 'α'} {t['before'][k]:g} → {v:g}"
                               for k, v in t["remedy"].items())
            lines.append(f"| {t['scenario']} | {t['seed']} | {t['rule']} | {remedy} | {t['accuracy_before']:.3f} → "
                         f"{t['accuracy_after']:.3f} | {100 * t['change']:+.1f} pt |")
        lines.append("")
    return "\n".join(lines)


def _markdown_table(table: dict) -> list[str]:
    columns: list[str] = []
    for cells in table.values():
        columns += [c for c in cells if c not in columns]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, cells in table.items():
        values = [f"{cells[c]['mean']:.3f} ± {cells[c]['std']:.3f}" if c in cells else "" for c in columns]
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    return lines
