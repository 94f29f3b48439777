"""--config: τ and α from torchdistill and mdistiller YAML and Lightning hparams.yaml, read safely; their
precedence (command line > config > checkpoint > guessed) and where reports show them."""
import json
import os
import time

import pytest
from click.testing import CliRunner

from kddiag.cli import DEMO_BASELINE, DEMO_STUDENT, DEMO_TEACHER, main
from kddiag.configs import MAX_CONFIG_BYTES, load_config
from kddiag.errors import KddiagError
from kddiag.pipeline import compare, inspect, settings_of
from kddiag.report.html import render_html
from kddiag.report.text import render_text
from kddiag.inputs import LoadedModel
from kddiag.options import InspectOptions, RunConfig

# torchdistill >= 1.0, shaped as its configs/sample/*/kd/*.yaml: custom tags, anchors, KDLoss in a WeightedSumLoss
TORCHDISTILL = """\
datasets:
  &train_set cifar10/train: !import_call
    _name: &dataset_name 'cifar10'
    _root: &root_dir !join ['~/datasets/', *dataset_name]
    key: 'torchvision.datasets.CIFAR10'
    init:
      kwargs:
        root: *root_dir
        train: True
models:
  teacher_model:
    key: 'resnet34'
    _weights: &teacher_weights !import_get
      key: 'torchvision.models.resnet.ResNet34_Weights'
    kwargs:
      num_classes: 10
      weights: !getattr [*teacher_weights, 'IMAGENET1K_V1']
train:
  num_epochs: 20
  train_data_loader:
    dataset_id: *train_set
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
        kd:
          criterion:
            key: 'KDLoss'
            kwargs:
              student_module_path: '.'
              student_module_io: 'output'
              teacher_module_path: '.'
              teacher_module_io: 'output'
              temperature: 4.0
              alpha: 0.1
              reduction: 'batchmean'
          weight: 1.0
"""

# torchdistill < 1.0: 'type' and 'params', the KD term as org_term with its factor
TORCHDISTILL_0 = """\
train:
  num_epochs: 20
  criterion:
    type: 'GeneralizedCustomLoss'
    org_term:
      criterion:
        type: 'KDLoss'
        params:
          temperature: 2.0
          alpha: 0.5
          beta: 1.5
          reduction: 'batchmean'
      factor: 1.0
    sub_terms:
"""

MDISTILLER = """\
EXPERIMENT:
  NAME: ""
  TAG: "kd,res34,res18"
DISTILLER:
  TYPE: "KD"
  TEACHER: "ResNet34"
  STUDENT: "ResNet18"
SOLVER:
  BATCH_SIZE: 512
  LR: 0.2
KD:
  TEMPERATURE: 1
  LOSS:
    CE_WEIGHT: 0.5
    KD_WEIGHT: 0.5
FITNET:
  INPUT_SIZE: !!python/tuple [32, 32]
"""

LIGHTNING = """\
lr: 0.001
temperature: 3.0
alpha: 0.7
optimizer: adam
"""


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_torchdistill_configs_of_both_generations(tmp_path):
    config = load_config(write(tmp_path, TORCHDISTILL))
    assert (config.framework, config.temperature) == ("torchdistill", 4.0)
    assert config.alpha == pytest.approx(0.9)  # KDLoss weighs CE by alpha: the soft term's weight is 1 − alpha
    assert config.keys["temperature"] == "train.criterion.kwargs.sub_terms.kd.criterion.kwargs.temperature"
    assert "α = beta / (alpha + beta) = 0.9 / (0.1 + 0.9)" in config.notes[0]
    old = load_config(write(tmp_path, TORCHDISTILL_0, "old.yaml"))
    assert old.temperature == 2.0 and old.alpha == pytest.approx(1.5 / 2.0)  # beta given: beta / (alpha + beta)
    assert old.keys["alpha"] == "train.criterion.org_term.criterion.params.alpha"
    alone = load_config(write(tmp_path, TORCHDISTILL.replace("alpha: 0.1", "alpha: 0"), "kl.yaml"))
    assert alone.alpha == 1.0 and "the KL term alone" in alone.notes[0]


def test_torchdistill_configs_without_one_kd_setting_are_refused(tmp_path):
    stages = TORCHDISTILL_0.replace("train:\n", "train:\n  stage1:\n    criterion:\n      type: 'KDLoss'\n"
                                                "      params: {temperature: 8.0, alpha: 0.5}\n")
    with pytest.raises(KddiagError, match=r"2 KDLoss terms under train with different settings \(train.stage1."
                                          r"criterion: τ 8, α 0.5; train.criterion.org_term.criterion: τ 2, α 0.75\)"):
        load_config(write(tmp_path, stages))
    features = "train:\n  criterion:\n    key: 'WeightedSumLoss'\n    kwargs:\n      sub_terms: {}\n"
    with pytest.raises(KddiagError, match=r"config.yaml': a torchdistill config, but no KDLoss under train "
                                          r"\(its criterion is 'WeightedSumLoss'\)"):
        load_config(write(tmp_path, features))
    with pytest.raises(KddiagError, match=r"train.criterion.org_term.criterion.params.temperature must be a "
                                          r"finite number > 0 and at most 10000; got -2.0"):
        load_config(write(tmp_path, TORCHDISTILL_0.replace("temperature: 2.0", "temperature: -2")))
    with pytest.raises(KddiagError, match=r"params.alpha must be a finite number; got 'half'"):
        load_config(write(tmp_path, TORCHDISTILL_0.replace("alpha: 0.5", "alpha: half")))


def test_mdistiller_configs_and_their_defaults(tmp_path):
    config = load_config(write(tmp_path, MDISTILLER))
    assert (config.framework, config.temperature, config.alpha) == ("mdistiller", 1.0, 0.5)
    assert config.keys == {"temperature": "KD.TEMPERATURE", "alpha": "KD.LOSS.KD_WEIGHT/CE_WEIGHT"}
    bare = load_config(write(tmp_path, 'DISTILLER:\n  TYPE: "KD"\nSOLVER:\n  EPOCHS: 240\n', "bare.yaml"))
    assert (bare.temperature, bare.alpha) == (4.0, pytest.approx(0.9))  # mdistiller's cfg.py defaults
    assert "mdistiller's defaults for KD.TEMPERATURE 4, KD.LOSS.CE_WEIGHT 0.1" in bare.notes[0]
    dkd = load_config(write(tmp_path, 'DISTILLER:\n  TYPE: "DKD"\nDKD:\n  T: 2.0\n  ALPHA: 1.0\n', "dkd.yaml"))
    assert (dkd.temperature, dkd.alpha) == (2.0, None) and "not kddiag's α" in dkd.notes[0]
    with pytest.raises(KddiagError, match=r"DISTILLER.TYPE is 'NONE'.*a baseline \(--baseline\)"):
        load_config(write(tmp_path, 'DISTILLER:\n  TYPE: "NONE"\n'))
    with pytest.raises(KddiagError, match=r"DISTILLER.TYPE is 'CRD': kddiag reads τ and α of mdistiller's KD"):
        load_config(write(tmp_path, 'DISTILLER:\n  TYPE: "CRD"\n'))
    with pytest.raises(KddiagError, match=r"KD.LOSS.KD_WEIGHT/CE_WEIGHT must be >= 0 and not both 0"):
        load_config(write(tmp_path, MDISTILLER.replace("CE_WEIGHT: 0.5", "CE_WEIGHT: 0").replace("KD_WEIGHT: 0.5",
                                                                                                "KD_WEIGHT: 0")))


def test_lightning_hparams(tmp_path):
    config = load_config(write(tmp_path, LIGHTNING, "hparams.yaml"))
    assert (config.framework, config.temperature, config.alpha) == ("lightning", 3.0, 0.7)
    nested = load_config(write(tmp_path, "lr: 0.1\nkd:\n  tau: 2\n", "nested.yaml"))
    assert (nested.temperature, nested.alpha, nested.keys) == (2.0, None, {"temperature": "kd.tau"})
    sections = load_config(write(tmp_path, "model: mlp\ntrain:\n  epochs: 3\n  temperature: 6\n", "train.yaml"))
    assert (sections.framework, sections.temperature) == ("lightning", 6.0)  # no criterion: not torchdistill's
    namespace = "!!python/object:argparse.Namespace\nT: 5\nalpha: 0.25\n"  # read as the plain mapping under it
    assert load_config(write(tmp_path, namespace, "ns.yaml")).temperature == 5.0
    with pytest.raises(KddiagError, match=r"more than one temperature \(temperature 3, T 5\): pass --temperature"):
        load_config(write(tmp_path, LIGHTNING + "T: 5\n"))
    with pytest.raises(KddiagError, match=r"alpha must be the soft term's weight, in \[0, 1\]; got 7"):
        load_config(write(tmp_path, LIGHTNING.replace("alpha: 0.7", "alpha: 7")))
    with pytest.raises(KddiagError, match=r"no distillation temperature or alpha found: kddiag reads torchdistill"):
        load_config(write(tmp_path, "lr: 0.1\noptimizer:\n  alpha: 0.99\n"))  # RMSprop's alpha is not KD's


def test_hostile_files_are_refused_in_one_line_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    attack = f"temperature: 4\nx: !!python/object/apply:os.system ['touch {marker}']\n"
    assert load_config(write(tmp_path, attack)).temperature == 4.0
    assert not marker.exists()  # the tag was read as data, never called
    with pytest.raises(KddiagError, match=r"config.yaml': not valid YAML at line 2, column"):
        load_config(write(tmp_path, "temperature: 4\n  alpha: [0.9\n"))
    with pytest.raises(KddiagError, match=r"expected a YAML mapping of settings .*; the file is a YAML list"):
        load_config(write(tmp_path, "- 4\n- 0.9\n"))
    with pytest.raises(KddiagError, match=r"the file is empty"):
        load_config(write(tmp_path, ""))
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_CONFIG_BYTES + "\ntemperature: 4\n")
    with pytest.raises(KddiagError, match=r"big.yaml': larger than 1 MiB"):
        load_config(big)
    with pytest.raises(KddiagError, match=r"--config '.*': a folder, not a file"):
        load_config(tmp_path)
    with pytest.raises(KddiagError, match=r"no such file"):
        load_config(tmp_path / "missing.yaml")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(KddiagError, match=r"a FIFO \(named pipe\), not a regular file"):
            load_config(tmp_path / "fifo")
    with pytest.raises(KddiagError, match="nested too deeply"):
        load_config(write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n"))
    laughs = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join([f'*{chr(97 + k)}'] * 10)}]\n" for k in range(8))
    started = time.perf_counter()
    with pytest.raises(KddiagError, match="no distillation temperature or alpha found"):
        load_config(write(tmp_path, laughs + "train_note: 1\n"))  # 10^9 leaves if expanded: aliases stay shared
    assert time.perf_counter() - started < 5
    shared = laughs.replace("a: &a", "train:\n  criterion: {key: KDLoss, kwargs: {temperature: 2}}\n  x: &a")
    assert load_config(write(tmp_path, shared)).temperature == 2.0  # the walk visits each object once
    with pytest.raises(KddiagError, match=r"--config: expected the path of a YAML file; got int"):
        load_config(3)
    started = time.perf_counter()  # the bomb where a number was expected: shown, not expanded
    with pytest.raises(KddiagError, match=r"temperature must be a finite number; got \[\[\[\[\.\.\.\], \[\.\.\.\]"):
        load_config(write(tmp_path, laughs + "temperature: *i\n"))
    assert time.perf_counter() - started < 5
    with pytest.raises(KddiagError, match=r"temperature must be a finite number; got 1000000000000000000000"):
        load_config(write(tmp_path, f"temperature: {10**400}\n"))  # an int beyond float: no OverflowError
    with pytest.raises(KddiagError, match=r"config.yaml': not a usable YAML document \(Exceeds the limit"):
        load_config(write(tmp_path, f"temperature: {'9' * 5001}\n"))  # more digits than Python converts


def test_precedence_command_line_config_checkpoint_guessed():
    config = RunConfig("runs/kd.yaml", "mdistiller", 2.0, 0.5, {"temperature": "KD.TEMPERATURE"})
    student = LoadedModel("student.pt", "module", metadata={"temperature": 8.0, "alpha": 0.3})
    settings = settings_of(InspectOptions(), student, config=config)
    assert (settings.temperature.source, settings.temperature.path, settings.alpha.value) == (
        "config", "runs/kd.yaml", 0.5)  # the config over the checkpoint
    assert settings.temperature.provenance == "config 'kd.yaml'"
    given = settings_of(InspectOptions(temperature=2.0), student, config=config)
    assert given.temperature.source == "cli" and given.alpha.source == "config"  # agreeing: fine
    with pytest.raises(KddiagError, match=r"--temperature 3 disagrees with --config 'runs/kd.yaml' "
                                          r"\(KD.TEMPERATURE: 2\): give the value once, or make them agree"):
        settings_of(InspectOptions(temperature=3.0), student, config=config)
    partial = RunConfig("runs/dkd.yaml", "mdistiller", 2.0, None)
    mixed = settings_of(InspectOptions(), student, config=partial)
    assert (mixed.temperature.source, mixed.alpha.source, mixed.alpha.value) == ("config", "checkpoint", 0.3)
    assert settings_of(InspectOptions(), LoadedModel("t.pt", "module"), config=partial).alpha.guessed


def test_inspect_reads_the_config_and_reports_say_so(tmp_path):
    path = write(tmp_path, MDISTILLER.replace("TEMPERATURE: 1", "TEMPERATURE: 2"), "kd.yaml")
    report = inspect(str(DEMO_TEACHER), str(DEMO_STUDENT), data="digits:test",
                     options=InspectOptions(config=path, full_paths=True))
    assert report.settings.temperature.source == "config" and report.settings.temperature.value == 2.0
    config = next(i for i in report.inputs if i.role == "config")
    assert (config.path, config.format) == (path, "mdistiller")
    assert any("the config's τ = 2 is used; the checkpoint" in note and "stores τ = 1" in note for note in config.notes)
    text = render_text(report)
    assert "temperature τ = 2   from the config 'kd.yaml'" in text and "GUESSED" not in text
    html = render_html(report)
    assert 'id="guessed-settings"' not in html and "config &#39;kd.yaml&#39;" in html


def test_a_guessed_setting_stands_in_the_html_header():
    report = inspect(str(DEMO_TEACHER), data="digits:test", options=InspectOptions(temperature=2.0))
    assert report.settings.alpha.guessed
    html = render_html(report)
    header = html[html.index("<header>"):html.index("</header>")]
    assert 'id="guessed-settings"' in header and "α = 0.9 guessed" in header
    assert "<code>--alpha</code>" in header and "<code>--config</code>" in header and "τ = 2 guessed" not in header


def test_the_cli_options(tmp_path):
    path = write(tmp_path, LIGHTNING, "hparams.yaml")
    base = ["inspect", str(DEMO_TEACHER), str(DEMO_STUDENT), "--data", "digits:test", "--no-progress"]
    result = CliRunner().invoke(main, [*base, "--config", path, "--json"])
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["inputs"]["settings"]
    assert settings["temperature"] == {"value": 3.0, "source": "config", "guessed": False}
    conflict = CliRunner().invoke(main, [*base, "--config", path, "--alpha", "0.5"])
    assert conflict.exit_code == 1
    assert conflict.stderr.strip().splitlines() == [
        f"kddiag: error: --alpha 0.5 disagrees with --config '{path}' (alpha: 0.7): give the value once, or make "
        f"them agree"]
    agreeing = CliRunner().invoke(main, [*base, "--config", path, "--alpha", "0.7", "--json"])
    assert json.loads(agreeing.stdout)["inputs"]["settings"]["alpha"]["source"] == "cli"
    broken = CliRunner().invoke(main, [*base, "--config", write(tmp_path, "temperature: [4\n", "bad.yaml")])
    assert broken.exit_code == 1 and len(broken.stderr.strip().splitlines()) == 1 and "not valid YAML" in broken.stderr


def test_compare_takes_one_config_for_all_or_one_per_student(tmp_path):
    first, second = write(tmp_path, LIGHTNING, "a.yaml"), write(tmp_path, "temperature: 8\nalpha: 0.5\n", "b.yaml")
    students = [str(DEMO_STUDENT), str(DEMO_BASELINE)]
    each = compare(str(DEMO_TEACHER), students, data="digits:test", configs=[first, second])
    assert [r.settings.temperature.value for r in each.reports] == [3.0, 8.0]
    assert [next(i.path for i in r.inputs if i.role == "config") for r in each.reports] == [
        os.path.relpath(first), os.path.relpath(second)]
    with pytest.raises(KddiagError, match=r"--config: 3 values for 2 students; give one per student"):
        compare(str(DEMO_TEACHER), students, data="digits:test", configs=[first, second, first])
    with pytest.raises(KddiagError, match=r"--config: give one value for every student or one per student, not both"):
        compare(str(DEMO_TEACHER), students, data="digits:test", configs=[first, second],
                options=InspectOptions(config=first))
    result = CliRunner().invoke(main, ["compare", str(DEMO_TEACHER), *students, "--data", "digits:test",
                                       "--config", first, "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)["reports"].values()
    assert [r["inputs"]["settings"]["temperature"]["source"] for r in reports] == ["config", "config"]
