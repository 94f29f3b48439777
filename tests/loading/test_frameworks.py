"""Checkpoints as vision KD frameworks write them, built here with the key names their saving code uses.

Sources read (commit dates 2023-2026): torchdistill ``torchdistill/common/main_util.py::save_ckpt``;
mdistiller ``mdistiller/engine/trainer.py`` (``state``/``student_state``) and ``tools/train.py``
(DataParallel); RepDistiller ``train_student.py``/``train_teacher.py``; timm
``timm/utils/checkpoint_saver.py::_save``, ``timm/task/task.py::get_checkpoint_state``, ``train.py``
(``--kd-*`` arguments); PyTorch Lightning ``trainer/connectors/checkpoint_connector.py::dump_checkpoint``.
"""
import argparse
import dataclasses
import pathlib
import pickle

import pytest
import torch

from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.loading import load_model

from ._helpers import ARCH, same_weights

WIDE = "kd_test_archs:wide"  # the teacher: 8 -> 32 -> 3; the student is ARCH: 8 -> 16 -> 3


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()


def _note(loaded, fragment):
    matching = [note for note in loaded.notes if fragment in note]
    assert matching, loaded.notes
    return matching[0]


# --- torchdistill: {'model', 'optimizer', 'best_value', 'lr_scheduler', 'args'} --------------------

def torchdistill_args():
    """examples/torchvision/image_classification.py's get_args(): τ and α live in the YAML, not here."""
    return argparse.Namespace(config="configs/sample/cifar10/kd/resnet20_from_resnet110.yaml", device="cuda",
                              run_log="log/kd.log", start_epoch=0, seed=None, disable_cudnn_benchmark=False,
                              test_only=False, student_only=False, log_config=False, world_size=1,
                              dist_url="env://", adjust_lr=False)


def test_torchdistill(tmp_path, archs):
    student = archs.mlp()
    scheduler = torch.optim.lr_scheduler.StepLR(torch.optim.SGD(student.parameters(), lr=0.1), step_size=30)
    path = tmp_path / "resnet20_from_resnet110.pt"
    torch.save({"model": student.state_dict(), "optimizer": _optimizer(student), "best_value": 91.3,
                "lr_scheduler": scheduler.state_dict(), "args": torchdistill_args()}, path)
    loaded = load_model(path, arch=ARCH, role="student")
    assert same_weights(loaded.module, student)
    assert loaded.metadata == {}
    assert "'configs/sample/cifar10/kd/resnet20_from_resnet110.yaml'" in _note(loaded, "torchdistill keeps τ and α")


# --- mdistiller: {'epoch', 'model', 'optimizer', 'best_acc'} and {'model'} (student only) -----------

def test_mdistiller_full_checkpoint_gives_each_role_its_weights(tmp_path, archs):
    """``self.distiller.state_dict()`` of a DataParallel-wrapped Distiller(student, teacher)."""
    teacher, student = archs.wide(), archs.mlp()
    model = {**_prefixed(student.state_dict(), "module.student."), **_prefixed(teacher.state_dict(), "module.teacher.")}
    path = tmp_path / "latest"
    torch.save({"epoch": 240, "model": model, "optimizer": _optimizer(student), "best_acc": 73.4}, path)
    as_teacher = load_model(path, arch=WIDE, role="teacher")
    as_student = load_model(path, arch=ARCH, role="student")
    assert same_weights(as_teacher.module, teacher) and same_weights(as_student.module, student)
    assert "chosen by role (teacher)" in _note(as_teacher, "names prefixed 'module.teacher.'")
    assert "also holds student weights" in _note(as_teacher, "chosen by role")
    assert "also holds teacher weights" in _note(as_student, "chosen by role (student)")


def test_mdistiller_same_architecture_is_decided_by_role(tmp_path, archs):
    """Self-distillation: teacher and student of one architecture; only the role tells them apart."""
    teacher, student = archs.mlp(), archs.mlp()
    model = {**_prefixed(student.state_dict(), "module.student."), **_prefixed(teacher.state_dict(), "module.teacher.")}
    path = tmp_path / "best"
    torch.save({"epoch": 240, "model": model, "optimizer": _optimizer(student), "best_acc": 73.4}, path)
    assert same_weights(load_model(path, arch=ARCH, role="teacher").module, teacher)
    assert same_weights(load_model(path, arch=ARCH, role="student").module, student)
    assert same_weights(load_model(path, arch=ARCH, role="baseline").module, student)


def test_mdistiller_student_checkpoint(tmp_path, archs):
    student = archs.mlp()
    path = tmp_path / "student_best"
    torch.save({"model": student.state_dict()}, path)
    loaded = load_model(path, arch=ARCH, role="student")
    assert same_weights(loaded.module, student) and loaded.notes == () and loaded.metadata == {}


# --- RepDistiller: best {'epoch', 'model', 'best_acc'}, last {'opt', 'model'} ----------------------

def repdistiller_opt(**changes):
    """train_student.py's parse_option(): loss = gamma·CE + alpha·KL(τ = kd_T) + beta·other."""
    options = dict(print_freq=100, batch_size=64, epochs=240, learning_rate=0.05, lr_decay_epochs=[150, 180, 210],
                   dataset="cifar100", model_s="resnet8", path_t="./save/models/resnet32x4_vanilla/ckpt.pth",
                   distill="kd", trial="1", gamma=0.1, alpha=0.9, beta=0.0, kd_T=4.0, feat_dim=128,
                   model_t="resnet32x4")
    return argparse.Namespace(**{**options, **changes})


@pytest.mark.parametrize("changes, expected", [
    ({}, {"temperature": 4.0, "alpha": 0.9}),
    ({"gamma": 1.0, "alpha": 1.0, "kd_T": 2}, {"temperature": 2.0, "alpha": 0.5}),  # weights normalized
    ({"alpha": None}, {"temperature": 4.0}),  # its default: α not given
])
def test_repdistiller_last_checkpoint_settings(tmp_path, archs, changes, expected):
    student = archs.mlp()
    path = tmp_path / "resnet8_last.pth"
    torch.save({"opt": repdistiller_opt(**changes), "model": student.state_dict()}, path)
    loaded = load_model(path, arch=ARCH, role="student")
    assert same_weights(loaded.module, student)
    assert loaded.metadata == pytest.approx(expected)
    assert "τ = kd_T" in _note(loaded, "from RepDistiller's opt")


def test_repdistiller_best_and_teacher_checkpoints(tmp_path, archs):
    student, teacher = archs.mlp(), archs.wide()
    torch.save({"epoch": 200, "model": student.state_dict(), "best_acc": torch.tensor(71.2)}, tmp_path / "best.pth")
    torch.save({"epoch": 240, "model": teacher.state_dict(), "best_acc": torch.tensor(79.4),
                "optimizer": _optimizer(teacher)}, tmp_path / "teacher_best.pth")
    assert same_weights(load_model(tmp_path / "best.pth", arch=ARCH, role="student").module, student)
    assert same_weights(load_model(tmp_path / "teacher_best.pth", arch=WIDE).module, teacher)


# --- timm: {'epoch', 'arch', 'optimizer', 'version', 'args', 'state_dict', 'state_dict_ema', 'metric'} -

def timm_args(**changes):
    """A few of train.py's arguments, with its --kd-* ones (defaults: no distillation, τ = 4)."""
    options = dict(model="resnet18", num_classes=3, lr=None, opt="sgd", model_ema=True, model_ema_decay=0.9998,
                   model_kwargs={}, kd_model_name=None, kd_distill_type="logit", kd_loss_type="kl",
                   distill_loss_weight=None, task_loss_weight=None, kd_temperature=4.0)
    return argparse.Namespace(**{**options, **changes})


def timm_checkpoint(model, ema, **args):
    return {"epoch": 99, "arch": "resnet18", "optimizer": _optimizer(model), "version": 2, "args": timm_args(**args),
            "state_dict": model.state_dict(), "state_dict_ema": ema.state_dict(), "metric": 71.5}


def test_timm_raw_weights_by_default_ema_when_asked(tmp_path, archs):
    model, ema = archs.mlp(), archs.mlp()
    path = tmp_path / "model_best.pth.tar"
    torch.save(timm_checkpoint(model, ema), path)
    raw = load_model(path, arch=ARCH)
    assert same_weights(raw.module, model)
    assert "EMA weights in 'state_dict_ema' (pass --ema teacher to use them)" in _note(raw, "raw weights")
    asked = load_model(path, arch=ARCH, ema=True)
    assert same_weights(asked.module, ema)
    assert _note(asked, "weights:") == "weights: EMA weights from 'state_dict_ema' (asked for with --ema teacher)"


def test_timm_ema_used_when_only_it_fits(tmp_path, archs):
    model, ema = archs.wide(), archs.mlp()  # only the EMA weights fit ARCH
    path = tmp_path / "checkpoint-9.pth.tar"
    torch.save(timm_checkpoint(model, ema), path)
    loaded = load_model(path, arch=ARCH)
    assert same_weights(loaded.module, ema)
    assert "no other weights in the file fit the architecture" in _note(loaded, "EMA weights from 'state_dict_ema'")


@pytest.mark.parametrize("layout", [
    lambda model, ema: {"model": model.state_dict(), "model_ema": ema.state_dict(), "epoch": 3},  # older timm, DeiT
    lambda model, ema: {"state_dict": {**_prefixed(model.state_dict(), "model."),
                                       **_prefixed(ema.state_dict(), "model_ema.module.")}},  # an EMA submodule
], ids=["model_ema", "model_ema-prefix"])
def test_other_ema_layouts(tmp_path, archs, layout):
    model, ema = archs.mlp(), archs.mlp()
    path = tmp_path / "ema.pt"
    torch.save(layout(model, ema), path)
    assert same_weights(load_model(path, arch=ARCH).module, model)
    assert same_weights(load_model(path, arch=ARCH, ema=True).module, ema)


def test_ema_asked_but_absent_or_not_a_state_dict(tmp_path, archs):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": archs.mlp().state_dict()}, path)
    with pytest.raises(KddiagError, match=r"^student checkpoint '.*plain\.pt': --ema student asks for EMA weights "
                                          r"but the file holds none \(keys: state_dict\)"):
        load_model(path, arch=ARCH, role="student", ema=True)
    torch.save(torch.zeros(4, 3), tmp_path / "logits.pt")
    with pytest.raises(KddiagError, match=r"--ema teacher asks for EMA weights, which only state-dict checkpoints "
                                          r"hold; this file is a logits"):
        load_model(tmp_path / "logits.pt", ema=True)


@pytest.mark.parametrize("args, expected", [
    ({}, {}),  # trained without timm's distillation task: its default kd_temperature means nothing
    ({"kd_model_name": "resnet50", "kd_temperature": 2.0}, {"temperature": 2.0, "alpha": 0.5}),  # 1·CE + 1·KD
    ({"kd_model_name": "resnet50", "task_loss_weight": 0.25}, {"temperature": 4.0, "alpha": 0.75}),  # 1 - task
    ({"kd_model_name": "resnet50", "distill_loss_weight": 3.0}, {"temperature": 4.0, "alpha": 0.75}),  # 3 / (3 + 1)
    ({"kd_model_name": "resnet50", "distill_loss_weight": 0.9, "task_loss_weight": 0.1},
     {"temperature": 4.0, "alpha": 0.9}),
])
def test_timm_settings_from_args(tmp_path, archs, args, expected):
    model = archs.mlp()
    path = tmp_path / "last.pth.tar"
    torch.save(timm_checkpoint(model, model, **args), path)
    loaded = load_model(path, arch=ARCH, role="student")
    assert loaded.metadata == pytest.approx(expected)
    said = _note(loaded, "settings: ")
    if args:
        assert said.startswith("settings: from timm's args: τ = kd_temperature; α = distill weight / "
                               "(distill weight + task weight) = "), said
    else:
        assert said == "settings: timm's args say it was trained without its distillation task (kd_model_name None)"


# --- PyTorch Lightning .ckpt ----------------------------------------------------------------------

def lightning_checkpoint(state_dict, hyper_parameters):
    """dump_checkpoint(): the LightningModule's attributes become state_dict prefixes."""
    return {"epoch": 9, "global_step": 1000, "pytorch-lightning_version": "2.5.0", "state_dict": state_dict,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 10, "completed": 9}}}},
            "callbacks": {"ModelCheckpoint{'monitor': 'val_acc', 'mode': 'max'}": {
                "monitor": "val_acc", "best_model_score": torch.tensor(0.71), "best_model_path": "epoch=9.ckpt",
                "best_k_models": {"epoch=9.ckpt": torch.tensor(0.71)}, "dirpath": "checkpoints"}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1, 2, 3]}]}],
            "lr_schedulers": [{"step_size": 30, "gamma": 0.1, "last_epoch": 9}],
            "hparams_name": "kwargs", "hyper_parameters": hyper_parameters}


def test_lightning_kd_module_holding_both_models(tmp_path, archs):
    teacher, student = archs.wide(), archs.mlp()
    state = {**_prefixed(teacher.state_dict(), "teacher."), **_prefixed(student.state_dict(), "student.")}
    path = tmp_path / "epoch=9-step=1000.ckpt"
    torch.save(lightning_checkpoint(state, {"lr": 0.1, "T": 3.0, "kd_alpha": 0.7}), path)
    as_teacher, as_student = load_model(path, arch=WIDE, role="teacher"), load_model(path, arch=ARCH, role="student")
    assert same_weights(as_teacher.module, teacher) and same_weights(as_student.module, student)
    assert as_student.metadata == {"temperature": 3.0, "alpha": 0.7, "learning_rate": 0.1}  # lr: for the probes
    assert "from 'state_dict' (names prefixed 'teacher.'), chosen by role (teacher)" in _note(as_teacher, "weights:")


def test_lightning_single_model_under_model_prefix(tmp_path, archs):
    student = archs.mlp()
    path = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint(_prefixed(student.state_dict(), "model."), {"temperature": 2.0}), path)
    loaded = load_model(path, arch=ARCH, role="student")
    assert same_weights(loaded.module, student) and loaded.metadata == {"temperature": 2.0}


@pytest.mark.parametrize("hyper_parameters, expected", [
    ({"temperature": 4, "alpha": 0.9}, {"temperature": 4.0, "alpha": 0.9}),
    ({"T": 2.0}, {"temperature": 2.0}),
    ({"tau": 5.0, "kd_alpha": 0.3}, {"temperature": 5.0, "alpha": 0.3}),
    ({"kd_T": 3, "alpha": 0.5}, {"temperature": 3.0, "alpha": 0.5}),
    ({"kd_temperature": 6.0, "distill_alpha": 0.2}, {"temperature": 6.0, "alpha": 0.2}),
    ({"distill": {"temperature": 8.0, "alpha": 0.6}, "lr": 0.1},
     {"temperature": 8.0, "alpha": 0.6, "learning_rate": 0.1}),
    ({"hparams": argparse.Namespace(kd_T=2.5, kd_alpha=0.4)}, {"temperature": 2.5, "alpha": 0.4}),
    ({"lr": 0.1, "temp_schedule": "cosine"}, {"learning_rate": 0.1}),
])
def test_lightning_hyper_parameter_names(tmp_path, archs, hyper_parameters, expected):
    path = tmp_path / "kd.ckpt"
    torch.save(lightning_checkpoint(_prefixed(archs.mlp().state_dict(), "student."), hyper_parameters), path)
    assert load_model(path, arch=ARCH, role="student").metadata == expected


# --- objects beside the weights: read (argparse.Namespace) or skipped, never run --------------------

@dataclasses.dataclass
class TrainConfig:
    """Stands for a config object saved in hyper_parameters (a dataclass; OmegaConf's DictConfig alike)."""

    temperature: float = 4.0
    alpha: float = 0.9


def touch(path):
    pathlib.Path(path).touch()


class Payload:
    """Calls :func:`touch` on ``path`` when unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return touch, (self.path,)


def test_objects_beside_the_weights_are_skipped_and_named(tmp_path, archs):
    student, marker = archs.mlp(), tmp_path / "touched"
    checkpoint = lightning_checkpoint(_prefixed(student.state_dict(), "student."),
                                      {"cfg": TrainConfig(), "callback": Payload(str(marker)), "lr": 0.1})
    checkpoint["hparams_type"] = TrainConfig  # Lightning saves the type of an OmegaConf hparams container
    path = tmp_path / "hydra.ckpt"
    torch.save(checkpoint, path)
    loaded = load_model(path, arch=ARCH, role="student")
    assert same_weights(loaded.module, student) and loaded.metadata == {"learning_rate": 0.1}
    assert not marker.exists()
    note = _note(loaded, "not read: ")
    for fragment in (f"'hyper_parameters/cfg' ({__name__}.TrainConfig)", f"'hyper_parameters/callback' ({__name__}.touch)",
                     f"'hparams_type' ({__name__}.TrainConfig)", "--trust-pickle would"):
        assert fragment in note, note
    torch.load(path, weights_only=False)  # the oracle: unpickling for real runs the payload
    assert marker.exists()


def test_namespace_holding_an_unknown_object(tmp_path, archs):
    student = archs.mlp()
    path = tmp_path / "resnet8_last.pth"
    torch.save({"opt": repdistiller_opt(extra=TrainConfig()), "model": student.state_dict()}, path)
    loaded = load_model(path, arch=ARCH, role="student")
    assert loaded.metadata == pytest.approx({"temperature": 4.0, "alpha": 0.9})
    assert f"'opt/extra' ({__name__}.TrainConfig)" in _note(loaded, "not read: ")


def test_weights_inside_an_object_are_refused(tmp_path, archs):
    path = tmp_path / "whole.ckpt"
    torch.save({"state_dict_holder": archs.mlp(), "hyper_parameters": {"T": 4}}, path)
    with pytest.raises(UnsafeLoadError, match=r"needs unpickling \(it contains torch\.nn\.modules\.container\."
                                              r"Sequential\).*--trust-pickle"):
        load_model(path, arch=ARCH)


def test_nothing_stays_allowlisted(tmp_path, archs):
    path = tmp_path / "hydra.ckpt"
    torch.save({"state_dict": archs.mlp().state_dict(), "cfg": TrainConfig(), "args": argparse.Namespace(T=2)}, path)
    load_model(path, arch=ARCH)
    names = {f"{g.__module__}.{g.__qualname__}" for g in torch.serialization.get_safe_globals() if hasattr(g, "__qualname__")}
    assert not names & {"argparse.Namespace", f"{__name__}.TrainConfig"}
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
