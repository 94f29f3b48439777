"""kddiag inspect on Hugging Face model directories and text files, end to end and offline: a causal LM pair
(target positions are the examples, the vocabulary the classes), a sequence-classifier pair, and a
vocabulary mismatch caught before any forward pass."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from kddiag.cli import main

transformers = pytest.importorskip("transformers")  # the 'transformers' extra; CI installs it

WORDS = "the cat dog sat ran on a mat far away big small red".split()
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def save_tokenizer(directory, words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + list(words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                           special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                            eos_token="[EOS]", model_max_length=16).save_pretrained(directory)
    return len(vocab)


def causal_lm(directory, width, seed, words=WORDS):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = save_tokenizer(directory, words)
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=width, vocab_size=vocab, n_positions=32, bos_token_id=2,
                        eos_token_id=3, pad_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def classifier(directory, width, seed):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    vocab = save_tokenizer(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * width, max_position_embeddings=32, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def sentences(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    for name, seed in (("held", 0), ("train", 1)):
        texts = sentences(60, seed)
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps({"text": t, "label": len(t.split()) % 3})
                                                      for t in texts) + "\n")
    return root


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_causal_lm_pair_from_save_pretrained_directories_and_jsonl(tmp_path, text_files):
    teacher, student = causal_lm(tmp_path / "teacher", 32, 0), causal_lm(tmp_path / "student", 16, 1)
    result = run("inspect", teacher, student, "--data", text_files / "held.jsonl", "--transfer-data",
                 text_files / "train.jsonl", "--temperature", "2", "--json", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    files = {f["role"]: f for f in report["inputs"]["files"]}
    assert files["teacher"]["format"] == "hf-causal-lm"
    assert report["inputs"]["n_classes"] == len(SPECIALS) + len(WORDS)
    n_positions = report["inputs"]["datasets"]["eval"]["n_samples"]
    assert n_positions > 60  # target positions, not sequences
    assert report["metrics"]["outcome"]["agreement"]["eval"]["value"] is not None
    instance, domain = report["metrics"]["instance"], report["metrics"]["domain"]
    assert instance["difficulty_source"]["transfer"]["value"] == "token_frequency"  # no baseline: rare tokens are hard
    assert 1 <= domain["dark_knowledge_alternatives_at_temperature"]["transfer"]["value"] <= len(WORDS) + len(SPECIALS)
    assert 0 < domain["top_k_nontarget_share_at_temperature"]["transfer"]["value"] <= 1
    assert report["verdict"] in ("problems", "gain-not-checked")
    assert (tmp_path / "out" / "report.html").exists()


def test_sequence_classifier_pair(tmp_path, text_files):
    teacher, student = classifier(tmp_path / "teacher", 32, 0), classifier(tmp_path / "student", 16, 1)
    result = run("inspect", teacher, student, "--data", text_files / "held.jsonl", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["inputs"]["n_classes"] == 3 and report["inputs"]["datasets"]["eval"]["n_samples"] == 60


def test_a_vocabulary_mismatch_is_found_before_any_forward_pass(tmp_path, text_files, monkeypatch):
    import kddiag.collect

    teacher = causal_lm(tmp_path / "teacher", 16, 0)
    student = causal_lm(tmp_path / "student", 16, 1, words=list(reversed(WORDS)))
    monkeypatch.setattr(kddiag.collect, "collect_summaries", lambda *a, **k: pytest.fail("a forward pass ran"))
    result = run("inspect", teacher, student, "--data", text_files / "held.jsonl", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [f["id"] for f in report["findings"]] == ["vocabulary-mismatch"]
    assert "id 4: 'the' vs 'red'" in report["findings"][0]["explanation"]


def test_a_model_name_that_is_not_a_local_directory_is_refused(text_files):
    result = run("inspect", "gpt2", "distilgpt2", "--data", text_files / "held.jsonl")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "download" in result.stderr


def test_hardest_token_positions_are_listed_with_their_decoded_context(tmp_path, text_files):
    import kddiag
    from kddiag.report.html import render_html

    teacher, student = causal_lm(tmp_path / "teacher", 16, 0), causal_lm(tmp_path / "student", 16, 1)
    report = kddiag.inspect(str(teacher), str(student), data=str(text_files / "held.jsonl"))
    contexts = report.example_inputs["eval"]
    hardest = report.measurements.instance.eval.hardest_examples.value
    assert set(contexts) == {item.index for item in hardest}
    for text in contexts.values():
        before, _, following = text.partition(" ▸ ")
        assert following and all(word in WORDS + SPECIALS for word in before.replace("… ", "").split())
    assert "context ▸ next token" in render_html(report)


@pytest.mark.parametrize("kind", ["causal-lm", "classifier"])
def test_probe_fine_tunes_a_fresh_hugging_face_student_on_the_transfer_text(tmp_path, text_files, kind):
    build = causal_lm if kind == "causal-lm" else classifier
    teacher, student = build(tmp_path / "teacher", 32, 0), build(tmp_path / "student", 16, 1)
    result = run("inspect", teacher, student, "--data", text_files / "held.jsonl", "--transfer-data",
                 text_files / "train.jsonl", "--temperature", "2", "--alpha", "0.5", "--probe", "--probe-steps",
                 "6", "--probe-seeds", "1", "--probe-lr", "0.001", "--probe-batch-size", "8", "--json")
    assert result.exit_code == 0, result.output
    probe = json.loads(result.stdout)["probe"]
    assert probe["probed"], probe
    assert probe["design"]["n_transfer"] > 60 if kind == "causal-lm" else probe["design"]["n_transfer"] == 60
    assert [a["label"] for a in probe["arms"]][:4] == ["control (τ 2, α 0.5)", "τ 1", "τ 3", "α 0.25"]
    assert all(0 <= a["accuracy"] <= 1 for a in probe["arms"])
