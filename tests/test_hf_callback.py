"""kddiag.hf.KddiagTrainerCallback inside real Hugging Face Trainer runs (and TRL's GKD trainer when it is
installed): tiny models built from configs, a few CPU steps each; what the Trainer's loggers received is read
back from trainer_state's log history and TensorBoard's event files."""
import os
import re
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

import transformers  # noqa: E402
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,  # noqa: E402
                          Trainer, TrainingArguments)

from kddiag.errors import KddiagError  # noqa: E402
from kddiag.hf import KddiagTrainerCallback, as_token_data  # noqa: E402
from kddiag.live import FINDINGS_TAG  # noqa: E402

V, L, N_TRAIN, N_HELD = 40, 8, 64, 66  # vocabulary, tokens per sequence; 66 held out: measurements need >= 30
pytestmark = [pytest.mark.filterwarnings("ignore:.*bos_token_id must be|.*eos_token_id must be"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(autouse=True)
def quiet_transformers():
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


def classifier(hidden: int, n_labels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=V, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * hidden, num_labels=n_labels, max_position_embeddings=16)
    return BertForSequenceClassification(config)


def language_model(hidden: int, seed: int = 0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=hidden, n_layer=1, n_head=2, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))


def token_ids(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, V, (N_TRAIN + N_HELD, L), generator=generator)


def training_args(out, **options):
    settings = dict(output_dir=str(out), max_steps=6, per_device_train_batch_size=8, report_to=[], use_cpu=True,
                    save_strategy="no", disable_tqdm=True, logging_steps=2)
    return TrainingArguments(**{**settings, **options})


@pytest.fixture(scope="module")
def classification_sets():
    ids = token_ids()
    labels = ids[:, 0] % 3  # the first token decides the class
    mask = torch.ones(L, dtype=torch.long)
    train = [{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(N_TRAIN)]
    held_out = {"input_ids": ids[N_TRAIN:], "attention_mask": torch.ones(N_HELD, L, dtype=torch.long),
                "labels": labels[N_TRAIN:]}
    return train, held_out


@pytest.fixture(scope="module")
def language_sets():
    ids = token_ids(1)
    train = [{"input_ids": ids[i], "attention_mask": torch.ones(L, dtype=torch.long), "labels": ids[i]}
             for i in range(N_TRAIN)]
    held_out = [{"input_ids": ids[N_TRAIN + i, :4 + i % 5].tolist()} for i in range(N_HELD)]  # ragged, no labels
    return train, held_out


def read_events(log_dir):
    """Scalars ({tag: [(step, value)]}) and texts ({tag: [(step, text)]}) of every TensorBoard run under log_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, texts = {}, {}
    for folder, _, files in os.walk(log_dir):
        if not any(name.startswith("events.out.tfevents") for name in files):
            continue
        events = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["tensors"]:
            texts.setdefault(tag, []).extend((e.step, e.tensor_proto.string_val[0].decode())
                                             for e in events.Tensors(tag))
    return scalars, texts


def kddiag_logs(trainer):
    return [entry for entry in trainer.state.log_history if FINDINGS_TAG in entry]


# ---------------------------------------------------------------- a sequence classifier


def test_sequence_classifier_numbers_reach_the_trainers_loggers_and_the_report(classification_sets, tmp_path):
    pytest.importorskip("tensorboard")
    train, held_out = classification_sets
    args = training_args(tmp_path / "run", report_to=["tensorboard"])
    trainer = Trainer(model=classifier(8, seed=1), args=args, train_dataset=train)
    callback = KddiagTrainerCallback(classifier(32), data=held_out, every_n_steps=2, trainer=trainer,
                                     temperature=2.0, alpha=0.5)
    trainer.add_callback(callback)
    trainer.train()

    history = callback.monitor.history
    assert [r.step for r in history] == [2, 4, 6] and all(r.student_accuracy is not None for r in history)
    logged = kddiag_logs(trainer)
    assert [entry["step"] for entry in logged] == [2, 4, 6]
    assert [entry["kddiag/outcome/student_accuracy/eval"] for entry in logged] == [r.student_accuracy for r in history]
    assert all(entry[FINDINGS_TAG].startswith(f"step {r.step}: verdict {r.verdict}")
               for entry, r in zip(logged, history))
    # the Trainer's own logs of those steps still come (logging kddiag's must not cancel them)
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [2, 4, 6]

    scalars, texts = read_events(tmp_path / "run" / "runs")  # report_to's TensorBoard files them under train/
    assert [step for step, _ in scalars["train/kddiag/universe/teacher_ece/eval"]] == [2, 4, 6]
    assert [v for _, v in scalars["train/kddiag/outcome/agreement/eval"]] == pytest.approx(
        [r.agreement for r in history], abs=1e-6)
    assert [step for step, _ in texts[f"train/{FINDINGS_TAG}/text_summary"]] == [2, 4, 6]
    assert sorted(os.listdir(tmp_path / "run" / "kddiag")) == ["monitor.html", "monitor.json"]


# ---------------------------------------------------------------- a causal language model


def test_causal_lm_from_a_folder_teacher_measures_every_target_token(language_sets, tmp_path):
    train, held_out = language_sets
    language_model(32).save_pretrained(tmp_path / "teacher")
    trainer = Trainer(model=language_model(8, seed=1), args=training_args(tmp_path / "run", max_steps=5),
                      train_dataset=train)
    callback = KddiagTrainerCallback(str(tmp_path / "teacher"), data=held_out, every_n_steps=2, trainer=trainer,
                                     out=tmp_path / "report")
    trainer.add_callback(callback)
    trainer.train()

    n_targets = sum(len(row["input_ids"]) - 1 for row in held_out)  # every next token of every sequence
    assert callback.monitor.teacher_outputs.logits.shape == (n_targets, V)
    history = callback.monitor.history
    assert [r.step for r in history] == [2, 4, 5]  # every 2 steps, and the last one
    assert all(r.agreement is not None and r.kl_teacher_student is not None for r in history)
    assert [entry["step"] for entry in kddiag_logs(trainer)] == [2, 4, 5]
    assert sorted(os.listdir(tmp_path / "report")) == ["monitor.html", "monitor.json"]
    assert not (tmp_path / "run" / "kddiag").exists()  # out= given: args.output_dir is not used


# ---------------------------------------------------------------- failures are warnings


def test_failures_during_training_are_one_line_warnings_and_training_finishes(classification_sets, tmp_path):
    train, held_out = classification_sets
    trainer = Trainer(model=classifier(8, n_labels=4, seed=1), args=training_args(tmp_path / "run", max_steps=4),
                      train_dataset=[{**row, "labels": row["labels"] % 4} for row in train])
    callback = KddiagTrainerCallback(classifier(32), data=held_out, every_n_steps=2, out=tmp_path / "report")
    trainer.add_callback(callback)  # no trainer=: said once, not an error
    (tmp_path / "report").write_text("a file where the report folder should be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = trainer.train()
    assert result.global_step == 4 and callback.monitor.history == ()
    messages = [str(w.message) for w in caught if str(w.message).startswith("kddiag: ")]
    assert all("\n" not in message for message in messages)
    assert sum("has no trainer=" in m for m in messages) == 1
    skipped = [m for m in messages if "the monitor skipped step" in m]
    assert [re.search(r"step (\d+)", m).group(1) for m in skipped] == ["2", "4"]
    assert "KddiagError: teacher logits (eval set) have 3 classes but student logits (eval set) have 4" in skipped[0]
    assert any("the monitor report could not be written to" in m for m in messages)


def test_bad_arguments_are_refused_when_the_callback_is_built(classification_sets, language_sets, tmp_path):
    _, held_out = classification_sets
    teacher = classifier(16)
    with pytest.raises(KddiagError, match="every_n_steps must be a positive integer; got 0"):
        KddiagTrainerCallback(teacher, data=held_out, every_n_steps=0)
    with pytest.raises(KddiagError, match="trainer must be the transformers.Trainer .* got str"):
        KddiagTrainerCallback(teacher, data=held_out, trainer="trainer")
    with pytest.raises(KddiagError, match=r"data: no 'input_ids' \(found keys: labels\)"):
        KddiagTrainerCallback(teacher, data={"labels": held_out["labels"]})
    with pytest.raises(KddiagError, match="data: expected tokenized text: .* got an empty list"):
        KddiagTrainerCallback(teacher, data=[])
    with pytest.raises(KddiagError, match="data: example 1 has no 'labels', which example 0 has"):
        KddiagTrainerCallback(teacher, data=[{"input_ids": [1, 2], "labels": 0}, {"input_ids": [3, 4]}])
    with pytest.raises(KddiagError, match="teacher: expected a transformers model, a save_pretrained folder"):
        KddiagTrainerCallback(42, data=held_out)
    language_model(16).save_pretrained(tmp_path / "lm")
    with pytest.raises(KddiagError, match="teacher checkpoint .* is a causal language model but the data is a "
                                          "classification set"):
        KddiagTrainerCallback(str(tmp_path / "lm"), data=held_out)
    with pytest.raises(KddiagError, match=r"labels must lie in \[0, 2\) for the 2-class teacher"):
        KddiagTrainerCallback(classifier(16, n_labels=2), data=held_out)


def test_every_form_of_held_out_tokens_gives_the_same_set(classification_sets):
    _, held_out = classification_sets
    rows = [{"input_ids": held_out["input_ids"][i], "label": int(held_out["labels"][i])} for i in range(N_HELD)]
    forms = {"dict": held_out, "BatchEncoding": transformers.BatchEncoding(held_out), "examples": rows}
    try:
        import datasets
    except ImportError:  # optional: the other forms are still checked
        datasets = None
    if datasets is not None:
        forms["datasets"] = datasets.Dataset.from_dict({k: v.tolist() for k, v in held_out.items()})
    first = as_token_data(held_out)
    assert not first.x.per_position and first.labels.tolist() == held_out["labels"].tolist()
    for name, form in forms.items():
        got = as_token_data(form)
        assert torch.equal(got.x.input_ids, first.x.input_ids), name
        assert torch.equal(got.x.attention_mask, first.x.attention_mask), name
        assert got.labels.tolist() == first.labels.tolist(), name
    lm = as_token_data({"input_ids": held_out["input_ids"]})  # no labels: a language-model set
    assert lm.x.per_position and len(lm.labels) == N_HELD * (L - 1)


# ---------------------------------------------------------------- TRL


def word_tokenizer(**options):
    """A word-level tokenizer of the tiny vocabulary: 'w1 w2 …' -> [1, 2, …], id 0 the pad (and eos) token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"<pad>": 0, **{f"w{i}": i for i in range(1, V)}}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<pad>", **options)


def test_trl_gkd_trainer_runs_the_callback_and_keeps_its_own_logs(language_sets, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    pytest.importorskip("trl")
    gkd = pytest.importorskip("trl.experimental.gkd")
    datasets = pytest.importorskip("datasets")  # trl needs it
    tokenizer = word_tokenizer()
    train, held_out = language_sets

    def collate(rows):  # fixed-length sequences, the completion is the whole sequence
        ids = torch.stack([torch.as_tensor(row["input_ids"]) for row in rows])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    args = gkd.GKDConfig(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=8, lmbda=0.0,
                         beta=0.5, temperature=2.0, report_to=[], use_cpu=True, save_strategy="no",
                         disable_tqdm=True, logging_steps=2, remove_unused_columns=False)
    teacher = language_model(32)
    trainer = gkd.GKDTrainer(model=language_model(8, seed=1), teacher_model=teacher, args=args,
                             train_dataset=datasets.Dataset.from_dict(
                                 {"input_ids": [row["input_ids"].tolist() for row in train]}),
                             processing_class=tokenizer, data_collator=collate)
    callback = KddiagTrainerCallback(teacher, data=held_out, every_n_steps=2, trainer=trainer, temperature=2.0,
                                     alpha=1.0)
    trainer.add_callback(callback)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no kddiag warning: every call measured and logged
        trainer.train()
    assert [r.step for r in callback.monitor.history] == [2, 4]
    assert [entry["step"] for entry in kddiag_logs(trainer)] == [2, 4]
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [2, 4]
    assert sorted(os.listdir(tmp_path / "run" / "kddiag")) == ["monitor.html", "monitor.json"]


def test_trl_distillation_trainer_keeps_its_own_averaged_metrics(language_sets, tmp_path):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    if not hasattr(trl, "DistillationTrainer"):
        pytest.skip(f"TRL {trl.__version__} has no DistillationTrainer")
    train, held_out = language_sets
    prompts = [" ".join(f"w{i}" for i in row["input_ids"][:4].tolist()) for row in train]
    args = trl.DistillationConfig(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=8,
                                  max_completion_length=4, report_to=[], use_cpu=True, save_strategy="no",
                                  disable_tqdm=True, logging_steps=2, bf16=False)
    teacher = language_model(32)
    trainer = trl.DistillationTrainer(model=language_model(8, seed=1), teacher_model=teacher, args=args,
                                      train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
                                      processing_class=word_tokenizer(padding_side="left"))
    callback = KddiagTrainerCallback(teacher, data=held_out, every_n_steps=2, trainer=trainer)
    trainer.add_callback(callback)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer.train()
    assert [entry["step"] for entry in kddiag_logs(trainer)] == [2, 4]
    # TRL's own metrics, averaged over its logging steps, are logged with its loss, not flushed by kddiag's logs
    own = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in own] == [2, 4] and all("entropy" in entry for entry in own)
    assert not any("entropy" in entry for entry in kddiag_logs(trainer))


# ---------------------------------------------------------------- the documented example (docs/monitor.md)


def test_the_documented_trainer_example_runs(classification_sets, tmp_path):
    from tests.test_live_metrics import doc_block

    train, held_out = classification_sets
    namespace = {"student": classifier(8, seed=1), "teacher": classifier(32), "train": train, "held_out": held_out,
                 "args": training_args(tmp_path / "run", max_steps=2)}
    exec(doc_block("docs/monitor.md", "## Hugging Face `Trainer` (and TRL)"), namespace)
    assert sorted(os.listdir(tmp_path / "run" / "kddiag")) == ["monitor.html", "monitor.json"]
    assert [entry["step"] for entry in kddiag_logs(namespace["trainer"])] == [2]
