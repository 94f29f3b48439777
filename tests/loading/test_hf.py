"""Hugging Face directories (kddiag.loading.hf): tiny models built from configs, saved with save_pretrained.

Oracles: each model's own forward (its ``.logits``, selected at the target positions), its backbone's
last hidden state and its head's weight.
"""
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kddiag.collect import _runner_for  # noqa: E402
from kddiag.errors import KddiagError, UnsafeLoadError  # noqa: E402
from kddiag.loading import load_model  # noqa: E402
from kddiag.loading.hf import CausalLMAdapter, _check_causal_lm, load_hf_model  # noqa: E402
from kddiag.inputs import IGNORE_INDEX, TokenInputs

ROOT = Path(__file__).resolve().parents[2]  # subprocesses import this checkout's kddiag
VOCAB, HIDDEN, N_LABELS = 64, 16, 3
LLAMA_LIKE = dict(hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _configs():
    t = transformers
    return {
        "gpt2": t.GPT2LMHeadModel(t.GPT2Config(n_layer=1, n_head=2, n_embd=HIDDEN, vocab_size=VOCAB, n_positions=32,
                                               bos_token_id=1, eos_token_id=2)),
        "llama": t.LlamaForCausalLM(t.LlamaConfig(**LLAMA_LIKE)),
        # logits changed after the LM head: soft-capped (small cap so that tanh bites), scaled up, scaled down
        "gemma2": t.Gemma2ForCausalLM(t.Gemma2Config(**LLAMA_LIKE, head_dim=8, final_logit_softcapping=0.05)),
        "cohere": t.CohereForCausalLM(t.CohereConfig(**LLAMA_LIKE, logit_scale=3.0)),
        "granite": t.GraniteForCausalLM(t.GraniteConfig(**LLAMA_LIKE, logits_scaling=4.0)),
        "bert": t.BertForSequenceClassification(t.BertConfig(
            hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=VOCAB,
            max_position_embeddings=32, num_labels=N_LABELS)),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (directory written by save_pretrained, the model in eval mode)."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    out = {}
    for name, model in _configs().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save_pretrained(root / name)
        out[name] = (root / name, model.eval())
    return out


@pytest.fixture
def copy_of(saved, tmp_path):
    """A fresh copy of a saved directory, to alter."""
    def copy(name):
        return shutil.copytree(saved[name][0], tmp_path / name)
    return copy


def _tokens(n=3, length=7, seed=0, pad=True):
    """Right-padded sequences; targets at every real position but the first of each sequence."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=generator)
    mask = torch.ones_like(ids)
    if pad:
        mask[n - 1, length - 3:] = 0
        ids[mask == 0] = 0
    targets = torch.where(mask.bool(), ids, IGNORE_INDEX)
    targets[:, 0] = IGNORE_INDEX
    return TokenInputs(ids, mask, targets)


def _edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))


def _one_line(error_info, *words):
    message = str(error_info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


# --- kinds and outputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt, architecture, n_classes", [
    ("gpt2", "hf-causal-lm", "GPT2LMHeadModel", VOCAB),
    ("llama", "hf-causal-lm", "LlamaForCausalLM", VOCAB),
    ("bert", "hf-sequence-classifier", "BertForSequenceClassification", N_LABELS),
])
def test_kind_metadata_and_notes(saved, name, fmt, architecture, n_classes):
    loaded = load_model(saved[name][0], role="student")
    assert loaded.format == fmt and loaded.source == str(saved[name][0])
    assert loaded.metadata["architecture"] == architecture and loaded.metadata["model_type"] == name
    assert not loaded.module.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in loaded.module.parameters())
    if fmt == "hf-causal-lm":
        assert loaded.metadata["vocab_size"] == n_classes
    else:
        assert loaded.metadata["id2label"] == {i: f"LABEL_{i}" for i in range(n_classes)}
    assert "temperature" not in loaded.metadata and "alpha" not in loaded.metadata
    assert "tokenizer_dir" not in loaded.metadata
    n_parameters = sum(p.numel() for p in saved[name][1].parameters())
    assert len(loaded.notes) == 1
    assert architecture in loaded.notes[0] and f"{n_parameters:,} parameters" in loaded.notes[0]


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2", "cohere", "granite"])
def test_causal_lm_gives_the_models_own_logits_at_the_targets(saved, name):
    directory, model = saved[name]
    loaded = load_model(directory, role="teacher")
    inputs = _tokens()
    with torch.inference_mode():
        want = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
        got = loaded.module(inputs)
    keep = inputs.targets != IGNORE_INDEX
    assert got.shape == (inputs.n_examples, VOCAB) == (int(keep.sum()), VOCAB)
    torch.testing.assert_close(got, want[keep], rtol=1e-5, atol=1e-5)  # row-major: boolean indexing's order


def test_sequence_classifier_gives_the_models_logits(saved):
    directory, model = saved["bert"]
    loaded = load_model(directory, role="teacher")
    inputs = TokenInputs(_tokens().input_ids, _tokens().attention_mask)
    with torch.inference_mode():
        want = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
        got = loaded.module(inputs.to("cpu"))
    assert got.shape == (3, N_LABELS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_logits_computed_otherwise_are_refused(saved):
    adapter = CausalLMAdapter(saved["gemma2"][1])
    adapter.softcap = None  # as if the model capped its logits in a way the adapter does not know
    with pytest.raises(KddiagError) as error:
        _check_causal_lm(adapter, "teacher checkpoint 'x'")
    _one_line(error, "teacher checkpoint 'x'", "otherwise than its LM head")


# --- features: the runner's hook finds the head -----------------------------------------------------

def _run(loaded, probe, batch):
    runner = _runner_for("teacher", loaded)
    runner.start(probe, device="cpu", feature_layer=None)
    try:
        with torch.inference_mode():
            return runner, *runner.run(batch)
    finally:
        runner.finish()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_runner_captures_the_lm_heads_input(saved, name):
    directory, model = saved[name]
    loaded = load_model(directory, role="teacher")
    inputs = _tokens(n=4, pad=False)
    targets = torch.full_like(inputs.targets, IGNORE_INDEX)
    positions = torch.tensor([6, 2, 0, 4])  # one target per sequence: examples == sequences
    targets[torch.arange(4), positions] = 5
    batch = TokenInputs(inputs.input_ids, inputs.attention_mask, targets)
    runner, logits, features = _run(loaded, batch[:1], batch)
    with torch.inference_mode():
        hidden = model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        want = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert features.shape == (4, HIDDEN) and logits.shape == (4, VOCAB)
    torch.testing.assert_close(torch.from_numpy(features), hidden[torch.arange(4), positions], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(logits), want[torch.arange(4), positions], rtol=1e-5, atol=1e-5)
    assert runner.weight.shape == (VOCAB, HIDDEN)
    assert (runner.weight == model.get_output_embeddings().weight.detach().double().numpy()).all()


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma2"])
def test_lm_head_is_the_last_linear_called_on_one_row_per_target(saved, name):
    loaded = load_model(saved[name][0], role="teacher")
    adapter = loaded.module
    calls = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args[0].shape)))
             for m in adapter.modules() if isinstance(m, torch.nn.Linear)]
    inputs = _tokens()
    with torch.inference_mode():
        adapter(inputs)
    for hook in hooks:
        hook.remove()
    module, shape = calls[-1]
    assert module is adapter.model.get_output_embeddings() and module.out_features == VOCAB
    assert tuple(shape) == (inputs.n_examples, HIDDEN)


def test_runner_captures_the_classifiers_input(saved):
    directory, model = saved["bert"]
    loaded = load_model(directory, role="teacher")
    batch = TokenInputs(_tokens().input_ids, _tokens().attention_mask)
    runner, logits, features = _run(loaded, batch[:1], batch)
    with torch.inference_mode():
        pooled = model.bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask).pooler_output
        want = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert features.shape == (3, HIDDEN) and logits.shape == (3, N_LABELS)
    torch.testing.assert_close(torch.from_numpy(features), pooled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(logits), want, rtol=1e-5, atol=1e-5)
    assert (runner.weight == model.classifier.weight.detach().double().numpy()).all()


def test_adapters_refuse_other_inputs(saved):
    causal = load_model(saved["gpt2"][0], role="student").module
    with pytest.raises(KddiagError, match="tokenized text"):
        causal(torch.zeros(2, 8))
    with pytest.raises(KddiagError, match="needs token inputs with targets"):
        causal(TokenInputs(_tokens().input_ids, _tokens().attention_mask))


# --- what is refused, in one line -------------------------------------------------------------------

def test_pickled_weights_need_trust_pickle(saved, tmp_path):
    directory, model = saved["gpt2"]
    target = tmp_path / "bin"
    target.mkdir()
    shutil.copy(directory / "config.json", target)
    torch.save(model.state_dict(), target / "pytorch_model.bin")
    with pytest.raises(UnsafeLoadError) as error:
        load_model(target, role="teacher")
    _one_line(error, f"teacher checkpoint '{target}'", "pytorch_model.bin", "--trust-pickle")
    loaded = load_model(target, role="teacher", trust_pickle=True)
    assert loaded.format == "hf-causal-lm" and "pickled weights" in loaded.notes[0]
    inputs = _tokens()
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(inputs), load_model(directory, role="teacher").module(inputs))


def test_remote_code_needs_trust_remote_code(copy_of):
    directory = copy_of("gpt2")
    _edit_config(directory, auto_map={"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    with pytest.raises(UnsafeLoadError) as error:
        load_model(directory, role="student")
    _one_line(error, "student checkpoint", "auto_map", "--trust-remote-code")


REMOTE_CONFIG = """
from transformers import GPT2Config
class TinyConfig(GPT2Config):
    model_type = "tiny-remote"
"""
REMOTE_MODEL = """
import pathlib
from transformers import GPT2LMHeadModel
from .configuration_tiny import TinyConfig
pathlib.Path(__file__).parent.joinpath("ran").touch()  # marks that the shipped code ran
class TinyForCausalLM(GPT2LMHeadModel):
    config_class = TinyConfig
"""


def test_remote_code_runs_only_with_trust_remote_code(copy_of, tmp_path):
    directory = copy_of("gpt2")
    (directory / "configuration_tiny.py").write_text(REMOTE_CONFIG)
    (directory / "modeling_tiny.py").write_text(REMOTE_MODEL)
    _edit_config(directory, model_type="tiny-remote", architectures=["TinyForCausalLM"],
                 auto_map={"AutoConfig": "configuration_tiny.TinyConfig",
                           "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})
    with pytest.raises(UnsafeLoadError):
        load_model(directory, role="teacher")
    assert not list(directory.rglob("ran"))
    cache = tmp_path / "modules"  # transformers copies shipped code there: a fresh process, kept off ~/.cache
    code = ("import sys; from kddiag.loading import load_model; "
            "m = load_model(sys.argv[1], role='teacher', trust_remote_code=True); "
            "print(m.format, type(m.module.model).__name__)")
    done = subprocess.run([sys.executable, "-c", code, str(directory)], capture_output=True, text=True,
                          env={**os.environ, "HF_MODULES_CACHE": str(cache)}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["hf-causal-lm", "TinyForCausalLM"] and done.stderr == ""
    assert list(cache.rglob("ran"))  # the shipped code ran (from transformers' copy) only in that process


@pytest.mark.parametrize("name", ["gpt2", "org/model", "meta-llama/Llama-3.2-1B"])
def test_hub_ids_are_refused(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KddiagError) as error:
        load_model(name, role="teacher")
    _one_line(error, f"teacher checkpoint '{name}'", "never downloads", "save_pretrained")


def test_missing_file_is_not_called_a_hub_id(tmp_path):
    with pytest.raises(KddiagError) as error:
        load_model(tmp_path / "student.pt", role="student")
    _one_line(error, "no such file")
    assert "Hub" not in str(error.value)


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(KddiagError) as error:
        load_model(tmp_path, role="baseline")
    _one_line(error, f"baseline checkpoint '{tmp_path}'", "without config.json")


def test_arch_does_not_apply_to_a_directory(saved):
    with pytest.raises(KddiagError) as error:
        load_model(saved["gpt2"][0], role="student", arch="mlp:64-32-10")
    _one_line(error, "--student-arch")


def test_unsupported_architecture_is_refused(copy_of):
    directory = copy_of("bert")
    _edit_config(directory, architectures=["BertForMaskedLM"])
    with pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    _one_line(error, "BertForMaskedLM", "*ForSequenceClassification", "*ForCausalLM", "*LMHeadModel")


def test_weights_of_another_head_are_refused(copy_of):
    directory = copy_of("gpt2")  # an LM's weights read as a classifier: its head would be random
    _edit_config(directory, architectures=["GPT2ForSequenceClassification"])
    with pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    _one_line(error, "score.weight", "random")


def test_multi_label_classifier_is_refused(copy_of):
    directory = copy_of("bert")
    _edit_config(directory, problem_type="multi_label_classification")
    with pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    _one_line(error, "multi_label_classification", "single-label")


def test_no_weights_is_refused(copy_of):
    directory = copy_of("gpt2")
    (directory / "model.safetensors").unlink()
    with pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    _one_line(error, "no weights", "model.safetensors")


def test_tokenizer_directory_is_named(copy_of):
    directory = copy_of("gpt2")
    (directory / "tokenizer_config.json").write_text("{}")
    assert load_model(directory, role="teacher").metadata["tokenizer_dir"] == str(directory)


def test_loading_is_silent_and_restores_transformers_logging(saved, capfd):
    utils = transformers.utils.logging
    verbosity, progress = utils.get_verbosity(), utils.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("gpt2", "llama", "bert"):
            load_hf_model(saved[name][0], role="teacher")
    assert caught == [] and capfd.readouterr() == ("", "")
    assert utils.get_verbosity() == verbosity and utils.is_progress_bar_enabled() == progress


# --- transformers is optional -----------------------------------------------------------------------

def test_without_transformers_one_line_says_how_to_install(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(KddiagError) as error:
        load_model(saved["gpt2"][0], role="teacher")
    _one_line(error, "needs the transformers package: pip install -e '.[transformers]' in the kddiag checkout")


def test_importing_kddiag_does_not_import_transformers():
    code = ("import sys, kddiag, kddiag.loading, kddiag.loading.hf, kddiag.collect, kddiag.cli; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
