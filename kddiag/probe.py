"""Remedy probes: the user's own student trained briefly under each candidate setting, against a control.

A remedy is a causal claim about one teacher–student pair, so it is tested on that pair before it is
advised (docs/probes.md). Every arm trains a fresh copy of the student's architecture — one seeded
initialization per seed, the same batches in the same order, the same budget — under the current
settings (the control) or a candidate's, then is scored on the same held-out examples: an arm's
accuracy change against the control is paired, and "more training" cancels out.

Why a fresh initialization and not the trained student continued: continuing starts every arm from
the optimum of the current setting, so a short run mostly measures how far each setting pulls away
from it (sign agreement with full retraining 16 of 27 on real teachers, issue 19); short runs from
the initialization agreed 27 of 27 there. Short runs favour settings that learn fast early (the
low-fidelity bias of successive halving); the budget and seeds are validated against full retraining
in ``case_studies/probe_validation.py``.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import numpy as np

from kddiag.errors import KddiagError
from kddiag.progress import Progress
from kddiag.inputs import IGNORE_INDEX, Dataset, LoadedModel, TokenInputs
from kddiag.options import ProbeOptions, Settings

LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # Adam learning rates the short check chooses from
LR_CHECK_SHARE = 0.2  # the check trains the control for this share of the budget at each rate
DEFAULT_EPOCHS = 10.0  # the default budget's first try: ten passes over the transfer set …
MIN_STEPS, MAX_STEPS = 100, 2_000  # … within these many steps; doubled up to MAX_STEPS while the control still learns
PLATEAU_GAIN_MAX = 0.01  # a control still gaining more than this over the last half of its budget is still learning
# … and then its arms are ranked only past this many passes over the transfer set: in the validation's tuning
# set (case_studies/probe_validation.py, mlp seeds 0-2) runs still learning at 10 passes called 2 of 19 arms
# wrongly, at 20 and 40 passes none of 30
RANKED_EPOCHS_MIN = 2 * DEFAULT_EPOCHS
# initializations per setting when none are asked for, as validated (case_studies/probe_validation.py): three
# for a probe as long as the student's own training, two for the default learning-curve budget
RECIPE_SEEDS, DEFAULT_SEEDS = 3, 2
DEFAULT_BATCH_SIZE = 64
# a training length read from a checkpoint (untrusted: it sets how long --probe runs) is used up to this
# many epochs (the case studies' full-batch MLPs train 600); more takes --probe-epochs, up to MAX_PROBE_EPOCHS
MAX_RECORDED_EPOCHS = 1_000  # transfer examples a step when neither the options nor the checkpoint name one
EVAL_MAX = 20_000  # arms are scored on a fixed-seed sample of at most this many held-out examples
NOT_TRAINABLE = ("torch.export", "torchscript", "logits")
RECIPE_LENGTHS = ("given epochs", "checkpoint")  # a probe as long as the student's own training  # formats with no initializer to start from


@dataclass(frozen=True)
class Candidate:
    """One setting to train under: temperature τ, weight α of the soft loss, and the divisor of the
    teacher's logits (its fitted temperature T* to calibrate it; 1 as it is)."""

    label: str
    temperature: float
    alpha: float
    teacher_scale: float = 1.0
    origin: str = "grid"  # 'control', 'grid' (kddiag's fixed set) or the id of the finding that advised it

    @property
    def key(self) -> tuple[float, float, float]:
        return (round(self.temperature, 6), round(self.alpha, 6), round(self.teacher_scale, 6))

    def to_dict(self) -> dict:
        return {"label": self.label, "temperature": self.temperature, "alpha": self.alpha,
                "teacher_scale": self.teacher_scale, "origin": self.origin}


@dataclass(frozen=True)
class Arm:
    """One candidate's outcome: held-out accuracy (mean over seeds) and the paired change against the
    control with its 95 % bootstrap interval over the same examples (None for the control)."""

    candidate: Candidate
    accuracy: float | None
    seed_accuracies: tuple[float, ...] = ()
    change: float | None = None
    ci: tuple[float, float] | None = None
    seed_changes: tuple[float, ...] = ()
    halfway_change: float | None = None  # the change at half the budget: which way it is moving
    failed: str | None = None  # why this arm has no score (e.g. a non-finite loss)
    ranked: bool = True  # False: the control was still learning, so no arm is called better or worse

    @property
    def helped(self) -> bool:
        """Beat the control: the interval above 0 and every seed's change positive (ranked arms only)."""
        return self.ranked and self.ci is not None and self.ci[0] > 0 and all(c > 0 for c in self.seed_changes)

    @property
    def hurt(self) -> bool:
        """Lost to the control: the interval below 0 and every seed's change negative (ranked arms only)."""
        return self.ranked and self.ci is not None and self.ci[1] < 0 and all(c < 0 for c in self.seed_changes)

    @property
    def verdict(self) -> str:
        if self.failed:
            return "failed"
        if self.candidate.origin == "control":
            return "control"
        if not self.ranked:
            return "not ranked (too short)"
        return "helped" if self.helped else "hurt" if self.hurt else "no clear change"

    def to_dict(self) -> dict:
        out = {**self.candidate.to_dict(), "verdict": self.verdict, "accuracy": _round(self.accuracy),
               "seed_accuracies": [_round(a) for a in self.seed_accuracies]}
        if self.candidate.origin != "control":
            out.update(change=_round(self.change), ci95=None if self.ci is None else [_round(c) for c in self.ci],
                       seed_changes=[_round(c) for c in self.seed_changes], halfway_change=_round(self.halfway_change))
        if self.failed:
            out["failed"] = self.failed
        return out


@dataclass(frozen=True)
class ProbeDesign:
    """What the probe did: its budget, optimizer, data and cost, stated in the report."""

    start: str  # 'initialization': every arm from a fresh seeded initialization of the student's architecture
    steps: int
    batch_size: int
    seeds: int
    learning_rate: float
    learning_rate_source: str  # 'given', 'checkpoint' or 'short check'
    n_transfer: int  # examples the arms train on
    n_eval: int  # held-out examples they are scored on
    epochs: float  # passes over the transfer set per arm and seed
    seconds: float
    where: str  # the device; under torchrun, that rank 0 probed alone
    notes: tuple[str, ...] = ()
    # where the length came from: 'given steps', 'default', or the student's own recipe ('given epochs',
    # 'checkpoint'), which ranks settings where that training stops, whether or not the control still learns
    length_source: str = "default"

    @property
    def recipe_length(self) -> bool:
        return self.length_source in RECIPE_LENGTHS

    @property
    def length_text(self) -> str:
        """How long each arm trained, and why that long."""
        why = {"given epochs": "--probe-epochs, the student's own training length",
               "checkpoint": "the student's training length, as its checkpoint records it",
               "given steps": "--probe-steps"}.get(self.length_source, "the default")
        return f"{self.steps} steps of {self.batch_size} examples = {self.epochs:.3g} epochs, {why}"

    def to_dict(self) -> dict:
        return {"start": self.start, "length_source": self.length_source, "steps": self.steps,
                "batch_size": self.batch_size, "seeds": self.seeds,
                "optimizer": "Adam", "learning_rate": self.learning_rate,
                "learning_rate_source": self.learning_rate_source, "n_transfer": self.n_transfer,
                "n_eval": self.n_eval, "epochs_per_arm": round(self.epochs, 3), "seconds": round(self.seconds, 2),
                "where": self.where, "notes": list(self.notes)}


@dataclass(frozen=True)
class ProbeResult:
    """Every arm's outcome against the control, or why nothing was probed."""

    arms: tuple[Arm, ...] = ()
    design: ProbeDesign | None = None
    not_probed: str | None = None  # why no probe ran
    control_late_gain: float | None = None  # the control's held-out accuracy gain over the last half of the budget

    @property
    def still_learning(self) -> bool:
        """Whether the control had not levelled off (it gained more than PLATEAU_GAIN_MAX over the last half
        of a budget under RANKED_EPOCHS_MIN passes): then no setting is ranked, as short runs favour the
        fastest learners."""
        return (self.control_late_gain is not None and self.control_late_gain > PLATEAU_GAIN_MAX
                and self.design.epochs < RANKED_EPOCHS_MIN and not self.design.recipe_length)

    @property
    def ran(self) -> bool:
        return self.not_probed is None

    @property
    def control(self) -> Arm | None:
        return next((a for a in self.arms if a.candidate.origin == "control"), None)

    @property
    def candidates(self) -> tuple[Arm, ...]:
        return tuple(a for a in self.arms if a.candidate.origin != "control")

    @property
    def helped(self) -> tuple[Arm, ...]:
        """The arms that beat the control, largest change first (none while the control was still learning)."""
        return tuple(sorted((a for a in self.candidates if a.helped), key=lambda a: -a.change))

    def arm_for(self, temperature: float, alpha: float, teacher_scale: float = 1.0) -> Arm | None:
        key = Candidate("", temperature, alpha, teacher_scale).key
        return next((a for a in self.arms if a.candidate.key == key), None)

    def to_dict(self) -> dict:
        if not self.ran:
            return {"probed": False, "reason": self.not_probed}
        return {"probed": True, "still_learning": self.still_learning,
                "control_late_gain": _round(self.control_late_gain), "design": self.design.to_dict(),
                "arms": [a.to_dict() for a in self.arms]}


# ---------------------------------------------------------------- candidates

def candidates_for(settings: Settings, *, grid: tuple[float, ...], fitted_temperature: float | None = None,
                   remedies: tuple[tuple[str, float | None, float | None], ...] = ()) -> tuple[Candidate, ...]:
    """The control and the settings worth trying: the grid τ just below and just above the current one,
    α halved, α = 0 (the labels only), the teacher calibrated by its T* (when it differs from 1 by more
    than 10 %), and each finding's remedy ``(finding id, τ or None, α or None)``; duplicates dropped,
    the first kept (a remedy that is also in the fixed set keeps the fixed set's label)."""
    tau, alpha = float(settings.temperature.value), float(settings.alpha.value)
    found = [Candidate(f"control (τ {tau:g}, α {alpha:g})", tau, alpha, origin="control")]
    below = [t for t in grid if t < tau * 0.999]
    above = [t for t in grid if t > tau * 1.001]
    found += [Candidate(f"τ {t:g}", t, alpha) for t in (below[-1:] + above[:1])]
    if alpha > 0:
        found += [Candidate(f"α {alpha / 2:g}", tau, alpha / 2), Candidate("labels only (α 0)", tau, 0.0)]
        if fitted_temperature is not None and abs(math.log(fitted_temperature)) > math.log(1.1):
            found.append(Candidate(f"teacher ÷ T* ({fitted_temperature:.2f})", tau, alpha, fitted_temperature))
    for rule, t, a in remedies:
        t, a = tau if t is None else float(t), alpha if a is None else float(a)
        parts = ([f"τ {t:g}"] if t != tau else []) + ([f"α {a:g}"] if a != alpha else [])
        if parts:
            found.append(Candidate(", ".join(parts), t, a, origin=rule))
    unique: dict[tuple, Candidate] = {}
    for candidate in found:
        unique.setdefault(candidate.key, candidate)
    return tuple(unique.values())


# ---------------------------------------------------------------- the paired comparison

def compare_arms(correct: np.ndarray, *, control: int = 0) -> list[tuple[float, tuple[float, float], tuple[float, ...]]]:
    """Each arm's change in accuracy against arm ``control``: (mean change, 95 % paired bootstrap interval,
    each seed's change).

    ``correct``: (n_arms, n_seeds, n_examples) booleans, every arm and seed scored on the same examples.
    The interval resamples examples, each carrying its seed-averaged correctness difference.
    """
    from kddiag.metrics.fidelity import bootstrap_ci

    correct = np.asarray(correct, dtype=np.float64)
    out = []
    for arm in range(correct.shape[0]):
        diff = (correct[arm] - correct[control]).mean(axis=0)
        seeds = tuple(float(d) for d in (correct[arm] - correct[control]).mean(axis=1))
        out.append((float(diff.mean()), bootstrap_ci(diff), seeds))
    return out


# ---------------------------------------------------------------- running the arms

def run_probes(teacher: LoadedModel, student: LoadedModel, *, transfer: Dataset, held_out: Dataset,
               candidates: tuple[Candidate, ...], options: ProbeOptions, device: str | None = None,
               progress: bool | str = False, where: str | None = None) -> ProbeResult:
    """Train the student's architecture from a fresh initialization under each candidate on ``transfer``
    and score it on ``held_out``; a reason instead when the pair cannot be probed (never raises on what
    the models or data do during training: that becomes the reason). ``progress``: how the steps are
    shown on stderr, a mode of :data:`kddiag.progress.MODES` (True: 'auto', False: 'none')."""
    import torch

    reason = _not_probeable(teacher, student, transfer, held_out)
    if reason:
        return ProbeResult(not_probed=reason)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    try:
        cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), _teacher_in_eval(teacher, device):  # the caller's state kept
            return _probe(teacher, student, transfer, held_out, candidates, options, device, progress,
                          where or device, started)
    except KddiagError as error:
        return ProbeResult(not_probed=str(error))
    except Exception as error:  # the student's own code runs here: whatever it raises becomes the reason
        from kddiag.collect._runner import one_line

        return ProbeResult(not_probed=f"training the student failed: {type(error).__name__}: {one_line(error)}")


def _not_probeable(teacher: LoadedModel, student: LoadedModel, transfer: Dataset | None,
                   held_out: Dataset | None) -> str | None:
    """Why this pair cannot be probed, or None."""
    if student.format in NOT_TRAINABLE or student.module is None:
        what = {"logits": "precomputed logits", "torchscript": "a TorchScript program",
                "torch.export": "a torch.export program"}.get(student.format, "not a model")
        return (f"the student is {what}, with no initializer to train a fresh copy from: give its state dict "
                f"and --student-arch to probe")
    if not any(p.requires_grad and p.is_floating_point() for p in student.module.parameters()):
        return "the student has no trainable parameters"
    if transfer is None or held_out is None:
        return "probes train on the transfer set and score on the eval set: give both (--transfer-data, --data)"
    if transfer.x is None or held_out.x is None:
        return "the data sets hold labels only: the probes need inputs to train the student on"
    if teacher.format == "logits" and isinstance(transfer.x, TokenInputs):
        return "a teacher given as logits of token positions cannot be probed: give the teacher model"
    if teacher.format == "logits" and "transfer" not in (teacher.logits or {}):
        return "the teacher's logits hold no transfer set to distil from"
    return None


def probe_length(options: ProbeOptions, stored: dict, n_rows: int) -> tuple[int, int, str]:
    """(steps, batch size, where the length came from) of every arm and seed: ``options`` first, then
    the student checkpoint's ``stored`` recipe (its epochs and batch size, when plausible numbers), then
    the default (:func:`default_steps` over DEFAULT_BATCH_SIZE examples a step). ``n_rows``: transfer rows."""
    batch_size, epochs, source = options.batch_size, options.epochs, "given epochs"
    stored_batch = stored.get("batch_size")
    if batch_size is None and _plausible(stored_batch, 1, 1 << 20) and float(stored_batch).is_integer():
        batch_size = int(stored_batch)
    batch_size = min(batch_size or DEFAULT_BATCH_SIZE, n_rows)
    if options.steps is not None:
        return options.steps, batch_size, "given steps"
    if epochs is None and _plausible(stored.get("epochs"), 0, MAX_RECORDED_EPOCHS):
        epochs, source = float(stored["epochs"]), "checkpoint"
    if epochs is None:
        return default_steps(n_rows, batch_size), batch_size, "default"
    return max(1, math.ceil(epochs * n_rows / batch_size)), batch_size, source


def _plausible(value: Any, low: float, high: float) -> bool:
    """Whether a stored recipe value is a number in (low, high]."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low < value <= high


def _probe(teacher, student, transfer, held_out, candidates, options, device, progress, where, started):
    n_transfer = _n_examples(transfer)
    steps, batch_size, length_source = probe_length(options, student.metadata, len(transfer.x))
    grow = length_source == "default"
    seeds = options.seeds or (RECIPE_SEEDS if length_source in RECIPE_LENGTHS else DEFAULT_SEEDS)
    teach = _teacher_fn(teacher, device)
    eval_rows = _eval_rows(held_out)
    notes = []
    lr, lr_source = options.lr, "given"
    stored = student.metadata.get("learning_rate")
    if lr is None and _plausible(stored, 0, 10):
        lr, lr_source = float(stored), "checkpoint"
    if lr is None:
        lr, lr_source = _check_learning_rate(student.module, teach, transfer, candidates[0], steps, batch_size,
                                             options.seed, device), "short check"
    n_arms, budget = len(candidates), steps
    correct = np.zeros((2, n_arms, seeds, len(eval_rows[1])), dtype=bool)
    failed: dict[int, str] = {}
    for s in range(seeds):
        seed = options.seed + s
        init, untouched = fresh_state(student.module, seed)
        if s == 0 and untouched:
            notes.append(f"{untouched} parameter tensor(s) have no initializer and start from the trained values")
        # the first seed may double the default budget while the control is still learning (its held-out
        # accuracy rose by more than PLATEAU_GAIN_MAX over the last half): the later seeds train as long
        trainer = _Arms(student.module, init, candidates, lr, device, failed)
        with Progress(f"probing {n_arms} settings, seed {s + 1}/{seeds}", budget, unit="step",
                      mode=progress) as meter:
            budget, scores = trainer.run(transfer, teach, batch_size, budget, seed,
                                         grow=s == 0 and grow,
                                         score=lambda models: _score(models, held_out, eval_rows, device, failed),
                                         progress=meter)
        correct[0, :, s], correct[1, :, s] = scores[max(1, budget // 2)], scores[budget]
    epochs = budget * batch_size / len(transfer.x)
    late_gain = float(correct[1, 0].mean() - correct[0, 0].mean())
    ranked = late_gain <= PLATEAU_GAIN_MAX or epochs >= RANKED_EPOCHS_MIN or length_source in RECIPE_LENGTHS
    if not ranked:
        notes.append(f"the control's held-out accuracy still rose {100 * late_gain:.1f} pt over the last half of "
                     f"the budget: too short to rank settings that pay off late (give --probe-epochs, how long "
                     f"your student trained, or raise --probe-steps)")
    arms = _arms(candidates, correct, failed, ranked=ranked)
    design = ProbeDesign("initialization", budget, batch_size, seeds, lr, lr_source, n_transfer,
                         len(eval_rows[1]), epochs, time.perf_counter() - started, where, tuple(notes),
                         length_source)
    return ProbeResult(arms=arms, design=design, control_late_gain=late_gain)


class _Arms:
    """One seed's arms: a copy of the student per candidate from one initialization, trained in lockstep on
    the same batches (the teacher runs once per step for all). ``failed`` collects the arms whose loss
    stopped being finite (shared across seeds: an arm that failed once is out)."""

    def __init__(self, module, init: dict, candidates: tuple[Candidate, ...], lr: float, device: str,
                 failed: dict[int, str]):
        import torch

        self.candidates, self.failed, self.lr = candidates, failed, lr
        self.models = [_start(module, init, device) for _ in candidates]
        self.optimizers = [torch.optim.Adam(m.parameters(), lr=lr) for m in self.models]
        self.device = device
        self.losses: dict[int, Any] = {}  # each arm's loss at its last step (a detached tensor: no device sync)

    def run(self, transfer: Dataset, teach, batch_size: int, budget: int, seed: int, *, grow: bool,
            score: Callable[[list], np.ndarray], progress: Progress) -> tuple[int, dict[int, np.ndarray]]:
        """Train to ``budget`` steps (doubled while the control still learns, with ``grow``), scoring every
        arm at half the budget and at its end; the final budget and the scores by step."""
        scores: dict[int, np.ndarray] = {}
        for step, (x, y, idx) in enumerate(_batches(transfer, batch_size, MAX_STEPS if grow else budget, seed,
                                                    self.device), start=1):
            self.step(x, y, teach(x, idx), seed * 1_000_003 + step, f"at step {step} (seed {seed})")
            progress.update(done=step, total=budget)
            if step in (max(1, budget // 2), budget):
                scores[step] = score(self.models)
            if step == budget:
                if grow and 2 * budget <= MAX_STEPS and _still_learning(scores, budget):
                    budget *= 2
                    continue
                break
        return budget, scores

    def step(self, x, y, soft, step_seed: int, where: str) -> None:
        """One optimizer step of every arm still training; a diverged control ends the probe."""
        import torch

        for k, (model, optimizer, candidate) in enumerate(zip(self.models, self.optimizers, self.candidates)):
            if k in self.failed:
                continue
            _seed_step(step_seed, self.device)  # every arm gets the same dropout at this step
            loss = _loss(model, x, y, soft, candidate)
            if not torch.isfinite(loss):
                self.failed[k] = f"the loss became {float(loss.detach())} {where}"
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.losses[k] = loss.detach()
        if 0 in self.failed:
            raise KddiagError(f"the control's training diverged: {self.failed[0]}; pass a smaller --probe-lr "
                              f"(it was {self.lr:g})")


def _score(models: list, held_out: Dataset, eval_rows, device: str, failed: dict[int, str]) -> np.ndarray:
    """(n_arms, n_scored) whether each arm predicts each scored held-out example (False for a failed arm)."""
    return np.stack([np.zeros(len(eval_rows[1]), bool) if k in failed else _correct(m, held_out, eval_rows, device)
                     for k, m in enumerate(models)])


def _still_learning(scores: dict[int, np.ndarray], step: int) -> bool:
    """Whether the control (row 0) gained more than PLATEAU_GAIN_MAX held-out accuracy from step/2 to ``step``."""
    return float(np.mean(scores[step][0]) - np.mean(scores[max(1, step // 2)][0])) > PLATEAU_GAIN_MAX


def default_steps(n_transfer: int, batch_size: int) -> int:
    """The budget when none is given: DEFAULT_EPOCHS passes over the transfer set, within [MIN_STEPS, MAX_STEPS]."""
    return int(min(MAX_STEPS, max(MIN_STEPS, math.ceil(DEFAULT_EPOCHS * n_transfer / batch_size))))



def _arms(candidates, correct: np.ndarray, failed: dict[int, str], *, ranked: bool) -> tuple[Arm, ...]:
    """Arms from the scores at half (correct[0]) and the whole budget (correct[1])."""
    final, half = compare_arms(correct[1]), compare_arms(correct[0])
    arms = []
    for k, candidate in enumerate(candidates):
        if k in failed:
            arms.append(Arm(candidate, None, failed=failed[k]))
            continue
        accuracies = tuple(float(a) for a in correct[1, k].mean(axis=1))
        arm = Arm(candidate, float(np.mean(accuracies)), accuracies, ranked=ranked)
        if candidate.origin != "control":
            change, ci, seeds = final[k]
            arm = replace(arm, change=change, ci=ci, seed_changes=seeds, halfway_change=half[k][0])
        arms.append(arm)
    return tuple(arms)


def fresh_state(module: Any, seed: int) -> tuple[dict, int]:
    """A freshly initialized state dict of ``module``'s architecture (seeded), and how many parameter
    tensors no initializer covered (they keep the trained values): every submodule's
    ``reset_parameters``, then a Hugging Face model's own ``_init_weights``."""
    import torch

    torch.manual_seed(seed)
    fresh = copy.deepcopy(module)
    before = {name: p.detach().clone() for name, p in fresh.named_parameters()}
    for sub in fresh.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    for sub in fresh.modules():
        init = getattr(sub, "_init_weights", None)
        if callable(init) and hasattr(sub, "config"):  # a transformers PreTrainedModel
            sub.apply(init)
            break
    untouched = sum(bool(torch.equal(before[name], p.detach())) for name, p in fresh.named_parameters())
    return {k: v.detach().clone() for k, v in fresh.state_dict().items()}, untouched


def _seed_step(value: int, device: str) -> None:
    """Seed the generators the step's random layers (dropout) draw from: the CPU's, and the device's own.
    (``torch.manual_seed`` would seed every accelerator on every call: a third of a small probe's time.)"""
    import torch

    torch.default_generator.manual_seed(value)
    where = torch.device(device)
    if where.type == "cuda":
        torch.cuda.default_generators[where.index or 0].manual_seed(value)


def _start(module: Any, state: dict, device: str):
    model = copy.deepcopy(module)
    model.load_state_dict(state)
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(p.is_floating_point())
    model.train()
    return model


def _loss(model, x, y, soft, candidate: Candidate):
    import torch

    from kddiag.distill import distillation_loss
    from kddiag.loading import logits_of

    logits = logits_of(model(x)).float()
    targets = None
    if candidate.alpha > 0:
        targets = torch.softmax(soft / (candidate.teacher_scale * candidate.temperature), dim=1)
    return distillation_loss(logits, y, targets, temperature=candidate.temperature, alpha=candidate.alpha)


def _teacher_fn(teacher: LoadedModel, device: str) -> Callable[[Any, np.ndarray], Any]:
    """The teacher's float32 logits of a batch (its inputs, and their example indices for stored logits).
    A teacher module must already be in eval mode on ``device`` (:func:`_teacher_in_eval`)."""
    import torch

    if teacher.format == "logits":
        stored = teacher.logits["transfer"]
        return lambda x, idx: torch.as_tensor(np.asarray(stored[np.sort(idx)][np.argsort(np.argsort(idx))]),
                                              dtype=torch.float32, device=device)
    from kddiag.loading import logits_of

    module = teacher.module
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)

    def teach(x, idx):
        with torch.inference_mode():
            inputs = x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x
            return logits_of(module(inputs)).float().clone()
    return teach


@contextmanager
def _teacher_in_eval(teacher: LoadedModel, device: str) -> Iterator[None]:
    """The teacher module on ``device`` in eval mode for the probe, its modes put back after (no copy:
    the teacher may be large)."""
    if teacher.module is None:
        yield
        return
    modes = [(m, m.training) for m in teacher.module.modules()]
    teacher.module.to(device).eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _batches(data: Dataset, batch_size: int, steps: int, seed: int, device: str) -> Iterator[tuple[Any, Any, np.ndarray]]:
    """``steps`` batches (inputs, labels, row indices) in a seeded order of epochs; token inputs by sequence."""
    rng = np.random.default_rng(seed)
    n, order = len(data.x), np.empty(0, dtype=np.int64)
    for _ in range(steps):
        while len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        yield (*_rows(data, idx, device), idx)


def _rows(data: Dataset, idx: np.ndarray, device: str) -> tuple[Any, Any]:
    """Inputs and labels of the rows ``idx`` (sequences for token inputs) on ``device``."""
    import torch

    rows = torch.as_tensor(idx)
    if isinstance(data.x, TokenInputs):
        x = data.x[rows]
        labels = x.targets[x.targets != IGNORE_INDEX] if x.per_position else torch.as_tensor(data.labels[idx])
        return x.to(device), labels.to(device)
    x = torch.as_tensor(data.x[rows]) if torch.is_tensor(data.x) else torch.as_tensor(np.asarray(data.x)[idx])
    x = x.float() if x.is_floating_point() else x
    return x.to(device), torch.as_tensor(data.labels[idx]).to(device)


def _eval_rows(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The held-out rows the arms are scored on (a fixed-seed sample, sequences for token inputs) and
    their labels: at most EVAL_MAX examples."""
    from kddiag.metrics._common import subsample_indices

    if isinstance(data.x, TokenInputs) and data.x.per_position:
        offsets = data.x.example_offsets()
        order = np.random.default_rng(0).permutation(len(data.x))
        counts = np.diff(offsets)[order]
        rows = np.sort(order[: max(1, int(np.searchsorted(np.cumsum(counts), EVAL_MAX, side="right")))])
        x = data.x[rows]
        return rows, x.targets[x.targets != IGNORE_INDEX].numpy()
    rows = np.sort(subsample_indices(len(data.labels), EVAL_MAX))
    return rows, data.labels[rows]


def _correct(model, data: Dataset, eval_rows: tuple[np.ndarray, np.ndarray], device: str,
             batch_size: int = 256) -> np.ndarray:
    """Whether ``model`` predicts each scored held-out example's label."""
    import torch

    from kddiag.loading import logits_of

    rows, labels = eval_rows
    model.eval()
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            x, _ = _rows(data, rows[start:start + batch_size], device)
            predictions.append(logits_of(model(x)).argmax(dim=1).cpu().numpy())
    model.train()
    return np.concatenate(predictions) == labels


def _n_examples(data: Dataset) -> int:
    return data.x.n_examples if isinstance(data.x, TokenInputs) else len(data.labels)


def _check_learning_rate(module, teach, transfer: Dataset, control: Candidate, steps: int, batch_size: int,
                         seed: int, device: str) -> float:
    """The Adam learning rate (of LEARNING_RATES) whose control run reaches the lowest training loss over
    the last half of a short run (LR_CHECK_SHARE of the budget); a rate whose loss is not finite is out."""
    import torch

    check_steps = max(10, int(steps * LR_CHECK_SHARE))
    init, _ = fresh_state(module, seed)
    scores = {}
    for lr in LEARNING_RATES:
        trainer, losses = _Arms(module, init, (control,), lr, device, {}), []
        try:
            for step, (x, y, idx) in enumerate(_batches(transfer, batch_size, check_steps, seed, device), start=1):
                trainer.step(x, y, teach(x, idx), seed * 1_000_003 + step, f"at step {step}")
                losses.append(trainer.losses[0])
        except KddiagError:  # the loss stopped being finite at this rate
            continue
        scores[lr] = float(torch.stack(losses[check_steps // 2:]).mean())
    if not scores:
        raise KddiagError("no learning rate trained the student without a non-finite loss; pass --probe-lr")
    return min(scores, key=scores.get)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
