"""kddiag.readers.text: text and token ids for token-level distillation, against the tokenizers library and loops."""
import json
import logging
import sys
import types
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from kddiag.errors import KddiagError
from kddiag.readers.text import load_text_dataset, next_token_targets
from kddiag.inputs import IGNORE_INDEX, TokenInputs

WORDS = "the cat sat on mat a dog ran far away".split()
SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
CAUSAL, CLASSIFY = "causal-lm", "sequence-classification"


def _save_tokenizer(directory, vocab, *, unk, post_processor=None, **special_tokens):
    """A word-level tokenizer saved as transformers does (tokenizer.json, tokenizer_config.json)."""
    pytest.importorskip("transformers")  # not among the test extras: these tests run where it is installed
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if post_processor is not None:
        backend.post_processor = post_processor
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=unk, **special_tokens).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def word_dir(tmp_path_factory):
    """A word-level tokenizer with a pad token that adds [BOS] … [EOS]; model_max_length 16."""
    pytest.importorskip("transformers")  # and tokenizers, which it brings
    from tokenizers import processors

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}  # [PAD] = 0, [BOS] = 2, [EOS] = 3
    post = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return _save_tokenizer(tmp_path_factory.mktemp("word"), vocab, unk="[UNK]", post_processor=post,
                           pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", model_max_length=16)


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    """GPT-2 style: one '<|endoftext|>' token (id 10) for bos, eos and unk, no pad token, no special tokens
    added, no model_max_length."""
    vocab = {w: i for i, w in enumerate(WORDS + ["<|endoftext|>"])}
    return _save_tokenizer(tmp_path_factory.mktemp("gpt"), vocab, unk="<|endoftext|>", bos_token="<|endoftext|>",
                           eos_token="<|endoftext|>")


def _ids(tokenizer_dir, text):
    """Token ids straight from the tokenizers library (the oracle: no transformers involved)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(text).ids


def _brute_targets(labels, mask):
    n, length = labels.shape
    targets = np.full((n, length), IGNORE_INDEX, dtype=np.int64)
    for i in range(n):
        for t in range(length - 1):
            if mask[i, t] == 1 and mask[i, t + 1] == 1 and labels[i, t + 1] != IGNORE_INDEX:
                targets[i, t] = labels[i, t + 1]
    return targets


def _write_jsonl(path, records, *, blank_after=None):
    lines = [json.dumps(r) for r in records]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _error(path, match, **kwargs):
    kwargs.setdefault("role", "data")
    kwargs.setdefault("task", CAUSAL)
    with pytest.raises(KddiagError, match=match) as caught:
        load_text_dataset(path, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


TEXTS = ["the cat sat", "a dog ran far away", "the cat sat on the mat", "zebra"]


# --- text -----------------------------------------------------------------------------------------------

def test_jsonl_causal_ids_targets_and_labels(tmp_path, word_dir):
    path = _write_jsonl(tmp_path / "val.jsonl", [{"text": t, "extra": 1} for t in TEXTS], blank_after=2)
    data = load_text_dataset(path, role="data", task=CAUSAL, tokenizer_dir=word_dir)
    x = data.x
    assert isinstance(x, TokenInputs) and data.format == "jsonl" and data.name == str(path)
    expected = [_ids(word_dir, t) for t in TEXTS]
    assert expected[0][0] == 2 and expected[0][-1] == 3  # [BOS] … [EOS], as the tokenizer adds them
    length = max(map(len, expected))
    assert x.input_ids.shape == (4, length)
    for i, ids in enumerate(expected):
        assert x.input_ids[i, :len(ids)].tolist() == ids
        assert x.input_ids[i, len(ids):].eq(0).all()  # right-padded with [PAD]
        assert x.attention_mask[i].tolist() == [1] * len(ids) + [0] * (length - len(ids))
    targets = _brute_targets(x.input_ids.numpy(), x.attention_mask.numpy())
    assert np.array_equal(x.targets.numpy(), targets)
    expected_labels = [ids[t] for ids in expected for t in range(1, len(ids))]  # every next token, row-major
    assert data.labels.tolist() == expected_labels and data.labels.dtype == np.int64
    assert x.n_examples == len(data.labels) == sum(len(ids) - 1 for ids in expected)
    assert "pad id 0" in data.preprocessing and "max_length 16 (the tokenizer's model_max_length)" in data.preprocessing
    assert f"4 sequences, {len(expected_labels)} target positions" in data.preprocessing


def test_txt_causal_matches_jsonl(tmp_path, word_dir):
    path = tmp_path / "val.txt"
    path.write_text("the cat sat\n\n   \r\na dog ran far away\r\nthe cat sat on the mat\nzebra",
                    encoding="utf-8-sig")  # with a byte-order mark
    data = load_text_dataset(path, role="data", task=CAUSAL, tokenizer_dir=word_dir)
    jsonl = load_text_dataset(_write_jsonl(tmp_path / "v.jsonl", [{"text": t} for t in TEXTS]), role="data",
                              task=CAUSAL, tokenizer_dir=word_dir)
    assert data.format == "txt"
    for name in ("input_ids", "attention_mask", "targets"):
        assert torch.equal(getattr(data.x, name), getattr(jsonl.x, name))
    assert np.array_equal(data.labels, jsonl.labels)


def test_no_pad_token_pads_with_eos_and_default_max_length(tmp_path, gpt_dir):
    path = _write_jsonl(tmp_path / "val.jsonl", [{"text": t} for t in TEXTS])
    data = load_text_dataset(path, role="data", task=CAUSAL, tokenizer_dir=gpt_dir)
    expected = [_ids(gpt_dir, t) for t in TEXTS]
    assert expected[0] == [0, 1, 2]  # no special tokens added
    ids, mask = data.x.input_ids, data.x.attention_mask
    for i, row in enumerate(expected):
        assert ids[i, :len(row)].tolist() == row and ids[i, len(row):].eq(10).all()  # padded with eos (10)
        assert mask[i].sum() == len(row)
    assert "pad id 10 (no pad token: the eos token '<|endoftext|>')" in data.preprocessing
    assert "max_length 512 (default" in data.preprocessing  # the tokenizer's model_max_length is 1e30
    # eos (10) used as padding is never a target, although the real "zebra" → eos token (10) is a token
    assert np.array_equal(data.x.targets.numpy(), _brute_targets(ids.numpy(), mask.numpy()))
    assert data.labels.tolist() == [r[t] for r in expected for t in range(1, len(r))]


def test_truncation_keeps_special_tokens_and_is_counted(tmp_path, word_dir):
    long = " ".join(WORDS * 3)  # 30 words
    path = _write_jsonl(tmp_path / "val.jsonl", [{"text": long}, {"text": "the cat"}, {"text": long}])
    data = load_text_dataset(path, role="data", task=CAUSAL, tokenizer_dir=word_dir)  # model_max_length 16
    assert data.x.input_ids.shape == (3, 16)
    from transformers import AutoTokenizer

    cut = AutoTokenizer.from_pretrained(word_dir)(long, truncation=True, max_length=16)["input_ids"]
    assert data.x.input_ids[0].tolist() == cut and cut[-1] == 3  # [EOS] kept at the end
    assert "2 of 3 sequences truncated" in data.preprocessing
    data = load_text_dataset(path, role="data", task=CAUSAL, tokenizer_dir=word_dir, max_length=6)
    assert data.x.input_ids.shape == (3, 6) and "max_length 6, 2 of 3 sequences truncated" in data.preprocessing
    assert data.x.input_ids[1].tolist() == _ids(word_dir, "the cat") + [0, 0]
    data = load_text_dataset(path, role="data", task=CAUSAL, tokenizer_dir=word_dir, max_length=100)
    assert data.x.input_ids.shape == (3, 32) and "0 of 3 sequences truncated" in data.preprocessing


def test_long_text_gives_no_warning(tmp_path, word_dir, capfd, caplog):
    path = _write_jsonl(tmp_path / "val.jsonl", [{"text": " ".join(WORDS * 5)}])
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_text_dataset(path, role="data", task=CAUSAL, tokenizer_dir=word_dir)
    out, err = capfd.readouterr()
    assert not caught and not out and not err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_classification_integer_and_string_labels(tmp_path, word_dir):
    records = [{"text": t, "label": k % 2} for k, t in enumerate(TEXTS)]
    data = load_text_dataset(_write_jsonl(tmp_path / "a.jsonl", records), role="data", task=CLASSIFY,
                             tokenizer_dir=word_dir)
    assert data.x.targets is None and data.x.n_examples == 4
    assert data.labels.tolist() == [0, 1, 0, 1] and data.class_info.names is None
    assert data.x.input_ids[3, :3].tolist() == _ids(word_dir, "zebra")
    named = [{"text": t, "label": name} for t, name in zip(TEXTS, ["pos", "neg", "neutral", "neg"])]
    data = load_text_dataset(_write_jsonl(tmp_path / "b.jsonl", named), role="data", task=CLASSIFY,
                             tokenizer_dir=word_dir)
    assert data.class_info.names == ("neg", "neutral", "pos")
    assert data.labels.tolist() == [2, 0, 1, 0]
    assert "sorted order (0=neg, 1=neutral, 2=pos)" in data.preprocessing


# --- pre-tokenized --------------------------------------------------------------------------------------

def _save(path, content):
    if path.suffix == ".npz":
        np.savez(path, **{k: np.asarray(v) for k, v in content.items()})
    else:
        torch.save({k: torch.as_tensor(v) for k, v in content.items()}, path)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_pretokenized_causal(tmp_path, suffix):
    rng = np.random.default_rng(0)
    ids = rng.integers(4, 14, size=(5, 7))
    mask = np.ones((5, 7), dtype=np.int64)
    mask[1, 4:] = 0  # right padding
    mask[2, :2] = 0  # left padding: a padded position never predicts
    labels = ids.copy()
    labels[0, :3] = IGNORE_INDEX  # a masked prompt
    labels[3, 5] = IGNORE_INDEX

    bare = load_text_dataset(_save(tmp_path / f"a{suffix}", {"input_ids": ids}), role="data", task=CAUSAL)
    assert bare.format == suffix.lstrip(".")
    assert bare.x.attention_mask.eq(1).all()
    assert np.array_equal(bare.x.targets.numpy(), _brute_targets(ids, np.ones_like(ids)))
    assert bare.labels.tolist() == ids[:, 1:].ravel().tolist()
    assert "no attention_mask: all ones, no labels: input_ids" in bare.preprocessing
    assert "not checked against a vocabulary" in bare.preprocessing

    full = load_text_dataset(_save(tmp_path / f"b{suffix}", {"input_ids": ids, "attention_mask": mask,
                                                            "labels": labels}),
                             role="data", task=CAUSAL)
    expected = _brute_targets(labels, mask)
    assert np.array_equal(full.x.targets.numpy(), expected)
    assert full.labels.tolist() == expected[expected != IGNORE_INDEX].tolist()
    assert torch.equal(full.x.input_ids, torch.from_numpy(ids)) and torch.equal(full.x.attention_mask,
                                                                               torch.from_numpy(mask))
    assert "attention_mask given, labels given" in full.preprocessing


def test_pretokenized_ids_checked_against_the_vocabulary(tmp_path, word_dir):
    ids = np.arange(4, 12).reshape(2, 4)
    data = load_text_dataset(_save(tmp_path / "ok.pt", {"input_ids": ids}), role="data", task=CAUSAL,
                             tokenizer_dir=word_dir)
    assert "token ids checked against the 14-token vocabulary in" in data.preprocessing
    _error(_save(tmp_path / "big.pt", {"input_ids": ids + 10}), r"must lie in \[0, 14\) .*got 21",
           tokenizer_dir=word_dir)


def test_next_token_targets_against_loop_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.integers(0, 9, size=(4, 6))
        labels[rng.random(labels.shape) < 0.2] = IGNORE_INDEX
        mask = (rng.random(labels.shape) < 0.7).astype(np.int64)
        assert np.array_equal(next_token_targets(labels, mask), _brute_targets(labels, mask))


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_pretokenized_classification(tmp_path, suffix):
    ids = np.arange(12).reshape(3, 4)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    path = _save(tmp_path / f"a{suffix}", {"input_ids": ids, "attention_mask": mask, "labels": [2, 0, 1]})
    data = load_text_dataset(path, role="data", task=CLASSIFY)
    assert data.x.targets is None and data.labels.tolist() == [2, 0, 1]
    assert torch.equal(data.x.attention_mask, torch.from_numpy(mask))
    data = load_text_dataset(_save(tmp_path / f"b{suffix}", {"input_ids": ids, "labels": [0, 0, 1]}),
                             role="data", task=CLASSIFY)
    assert data.x.attention_mask.eq(1).all()


def test_pretokenized_list_of_rows_and_max_length(tmp_path):
    path = tmp_path / "rows.pt"
    torch.save({"input_ids": [torch.tensor([5, 6, 7, 8]), torch.tensor([5, 6, 0, 0])],
                "attention_mask": [[1, 1, 1, 1], [1, 1, 0, 0]]}, path)
    data = load_text_dataset(path, role="data", task=CAUSAL, max_length=3)
    assert data.x.input_ids.tolist() == [[5, 6, 7], [5, 6, 0]]
    assert data.labels.tolist() == [6, 7, 6]
    assert "max_length 3, 1 of 2 sequences truncated" in data.preprocessing


# --- errors: one line naming the file -------------------------------------------------------------------

def test_text_file_errors(tmp_path):
    """Errors found reading the file, before any tokenizer is needed."""
    def jsonl(name, text):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    tok = {"tokenizer_dir": None}
    empty = jsonl("empty.jsonl", "")
    assert _error(empty, "the file is empty", **tok).startswith(f"--data '{empty}': ")
    _error(jsonl("blank.txt", "\n  \n"), r"no examples \(only blank lines\)", **tok)
    _error(jsonl("bad.jsonl", '{"text": "the"}\n\n{"text": "cat"\n'), "line 3 is not valid JSON", **tok)
    _error(jsonl("list.jsonl", '["the cat"]\n'), "line 1 must be a JSON object", **tok)
    _error(jsonl("notext.jsonl", '{"text": "a"}\n{"body": "the cat"}\n'), "line 2 has no 'text' field", **tok)
    _error(jsonl("num.jsonl", '{"text": 3}\n'), "line 1: 'text' must be a string", **tok)
    _error(jsonl("x.txt", "the cat\n"), "holds no labels.*use .jsonl", task=CLASSIFY, **tok)
    _error(jsonl("nolabel.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n'), "line 2 has no 'label'",
           task=CLASSIFY, **tok)
    for label in ("1.5", "true", "null", "[1]"):
        _error(jsonl("float.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": %s}\n' % label),
               "line 2: the label must be an integer class id", task=CLASSIFY, **tok)
    _error(jsonl("neg.jsonl", '{"text": "a", "label": -1}\n'), "line 1: the label must be a class id >= 0",
           task=CLASSIFY, **tok)
    _error(jsonl("mixed.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": 1}\n'),
           "line 2: label 1 is not a class name, but line 1's label is", task=CLASSIFY, **tok)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    _error(latin, "not UTF-8 text", **tok)
    _error(tmp_path / "missing.jsonl", "no such file or folder", **tok)
    _error(jsonl("data.csv", "text\nthe cat\n"), "unknown text data format '.csv'", **tok)
    _error(jsonl("ok.jsonl", '{"text": "the"}\n'), "the task must be one of", task="translation", **tok)
    _error(jsonl("ok.jsonl", '{"text": "the"}\n'), "max_length must be a positive integer", max_length=0, **tok)
    message = _error(jsonl("ok.jsonl", '{"text": "the"}\n'), "the teacher has none", role="transfer-data")
    assert message.startswith("--transfer-data '") and "pre-tokenized" in message


def test_tokenization_errors(tmp_path, word_dir, gpt_dir):
    path = _write_jsonl(tmp_path / "e.jsonl", [{"text": "the cat"}, {"text": "  "}])
    _error(path, r"example 2 \('  '\) gives no tokens", tokenizer_dir=gpt_dir)  # this tokenizer adds nothing
    one = _write_jsonl(tmp_path / "one.jsonl", [{"text": "the"}])
    _error(one, "max_length 1 is too short: the tokenizer keeps 3 tokens", max_length=1, tokenizer_dir=word_dir)
    _error(one, "no target position", tokenizer_dir=gpt_dir)


def test_pretokenized_errors(tmp_path):
    ids = np.arange(4, 12).reshape(2, 4)
    _error(_save(tmp_path / "k.npz", {"tokens": ids}), "no 'input_ids' .*found keys: tokens")
    _error(_save(tmp_path / "1d.pt", {"input_ids": ids[0]}), r"'input_ids' must be 2-D .*got shape \(4,\)")
    _error(_save(tmp_path / "f.npz", {"input_ids": ids * 0.5}), "'input_ids' must hold integers; got dtype float64")
    ragged = tmp_path / "ragged.pt"
    torch.save({"input_ids": [torch.tensor([1, 2, 3]), torch.tensor([1, 2])]}, ragged)
    _error(ragged, "'input_ids' is ragged: sequence 0 has 3 tokens but sequence 1 has 2; pad every sequence")
    objects = tmp_path / "objects.npz"
    np.savez(objects, input_ids=np.array([[1, 2], [3]], dtype=object))
    _error(objects, "object arrays.* never unpickles")
    _error(_save(tmp_path / "m.pt", {"input_ids": ids, "attention_mask": ids[:, :3] * 0 + 1}),
           r"'attention_mask' has shape \(2, 3\) but 'input_ids' \(2, 4\)")
    _error(_save(tmp_path / "m2.pt", {"input_ids": ids, "attention_mask": ids}), "only 0 .* and 1")
    _error(_save(tmp_path / "l.pt", {"input_ids": ids, "labels": ids[:, 0]}),
           r"'labels' must be 2-D \(n_sequences, length\), aligned with 'input_ids' .*got shape \(2,\)")
    _error(_save(tmp_path / "l2.pt", {"input_ids": ids, "labels": ids[:, :2]}),
           r"'labels' has shape \(2, 2\) but 'input_ids' \(2, 4\); labels for a causal LM align")
    _error(_save(tmp_path / "c.npz", {"input_ids": ids, "labels": ids}),
           r"'labels' for sequence classification must be \(2,\).*got shape \(2, 4\)", task=CLASSIFY)
    _error(_save(tmp_path / "c2.npz", {"input_ids": ids}), "no 'labels'; sequence classification", task=CLASSIFY)
    _error(_save(tmp_path / "c3.npz", {"input_ids": ids, "labels": [0, -2]}), "class ids >= 0; got -2",
           task=CLASSIFY)
    _error(_save(tmp_path / "c4.npz", {"input_ids": ids, "labels": [0.0, 1.0]}), "integer class ids", task=CLASSIFY)
    _error(_save(tmp_path / "neg.pt", {"input_ids": ids - 5}), "token ids in 'input_ids' must be >= 0; got -1")
    _error(_save(tmp_path / "lab.pt", {"input_ids": ids, "labels": ids * 0 - 3}), "'labels' at target positions")
    _error(_save(tmp_path / "short.pt", {"input_ids": ids[:, :1]}), "no target position")
    pickled = tmp_path / "pickled.pt"
    torch.save({"input_ids": torch.tensor(ids), "note": Fraction(1, 2)}, pickled)
    _error(pickled, r"not a plain tensor file: it holds pickled Python objects \(fractions.Fraction\)")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.tensor(ids), tensor)
    _error(tensor, "expected a dict with 'input_ids'.*got Tensor")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    _error(junk, r"not a .npz file")
    junk_pt = tmp_path / "junk.pt"
    junk_pt.write_bytes(b"not a torch file")
    _error(junk_pt, "not a readable tensor file")
    (tmp_path / "empty.pt").write_bytes(b"")
    _error(tmp_path / "empty.pt", "the file is empty")


def test_tokenizer_errors(tmp_path):
    path = _write_jsonl(tmp_path / "a.jsonl", [{"text": "the cat"}])
    bare = tmp_path / "teacher"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    message = _error(path, "the teacher directory '.*teacher' has no tokenizer", tokenizer_dir=bare)
    assert "pre-tokenized" in message
    _error(path, "is not a directory", tokenizer_dir=tmp_path / "absent")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    pytest.importorskip("transformers")
    _error(path, "could not read the tokenizer in", tokenizer_dir=broken)


def test_transformers_missing(tmp_path, monkeypatch):
    path = _write_jsonl(tmp_path / "a.jsonl", [{"text": "the cat"}])
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    _error(path, r"needs the transformers package: pip install -e '\.\[transformers\]' in the kddiag checkout", tokenizer_dir=teacher)
    ids = _save(tmp_path / "ids.pt", {"input_ids": np.arange(6).reshape(2, 3)})  # token ids need no tokenizer
    assert "not checked" in load_text_dataset(ids, role="data", task=CAUSAL, tokenizer_dir=teacher).preprocessing


# --- Hugging Face datasets directories ------------------------------------------------------------------

def test_hf_datasets_missing_package_and_bad_folders(tmp_path, monkeypatch):
    split = tmp_path / "validation"
    split.mkdir()
    (split / "state.json").write_text("{}")
    (split / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed, whatever this machine has
    _error(split, "needs the datasets package: pip install datasets")
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["validation"]}')
    _error(tmp_path, "a DatasetDict with several splits .*give one split's directory, e.g. '.*validation'")
    plain = tmp_path / "plain"
    plain.mkdir()
    _error(plain, "not one written by Hugging Face datasets' save_to_disk")


class _FakeTable:
    """What kddiag.readers.text reads of a datasets.Dataset: column_names, columns by name, features."""

    def __init__(self, columns):
        self.columns, self.column_names, self.features = columns, list(columns), {}

    def __getitem__(self, key):
        return self.columns[key]


def _fake_datasets(monkeypatch, table):
    module = types.SimpleNamespace(DatasetDict=type("DatasetDict", (dict,), {}), load_from_disk=lambda path: table)
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hf_datasets_text_and_ragged_token_columns(tmp_path, monkeypatch, word_dir):
    split = tmp_path / "split"
    split.mkdir()
    (split / "state.json").write_text("{}")
    _fake_datasets(monkeypatch, _FakeTable({"text": ["the cat", "a dog ran"], "label": np.array([1, 0])}))
    data = load_text_dataset(split, role="data", task=CLASSIFY, tokenizer_dir=word_dir)
    assert data.format == "hf-datasets" and data.labels.tolist() == [1, 0]
    assert data.x.input_ids[1].tolist() == _ids(word_dir, "a dog ran")
    _fake_datasets(monkeypatch, _FakeTable({"input_ids": [[5, 6, 7], [8, 9]],
                                            "labels": [[5, IGNORE_INDEX, 7], [8, 9]]}))
    data = load_text_dataset(split, role="data", task=CAUSAL)
    assert data.x.input_ids.tolist() == [[5, 6, 7], [8, 9, 0]]
    assert data.x.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert data.x.targets.tolist() == [[IGNORE_INDEX, 7, IGNORE_INDEX], [9, IGNORE_INDEX, IGNORE_INDEX]]
    assert "1 rows of different lengths right-padded" in data.preprocessing
    _fake_datasets(monkeypatch, _FakeTable({"input_ids": [[5, 6], [7, 8]], "label": [0, 1]}))
    data = load_text_dataset(split, role="data", task=CLASSIFY)
    assert data.x.input_ids.tolist() == [[5, 6], [7, 8]] and data.labels.tolist() == [0, 1]


def test_a_tokenizer_that_panics_while_decoding_the_reports_examples_leaves_them_without_text(monkeypatch):
    """The report's hardest examples show their decoded context; a tokenizer whose decoding panics (a Rust
    PanicException, which ``except Exception`` misses) loses only that text, not the run."""
    import torch

    import kddiag.readers.text as text
    from kddiag.inputs import IGNORE_INDEX, Dataset, TokenInputs

    class PanicException(BaseException):  # the name PyO3 gives a Rust panic
        pass

    class Panicking:
        def decode(self, ids, **kwargs):
            raise PanicException("called `Option::unwrap()` on a `None` value")

    class Fine:
        def decode(self, ids, **kwargs):
            return " ".join(f"t{i}" for i in ids)

    ids = torch.arange(12).reshape(2, 6)
    targets = torch.full_like(ids, IGNORE_INDEX)
    targets[:, :-1] = ids[:, 1:]
    data = Dataset("tokens", TokenInputs(ids, torch.ones_like(ids), targets), targets[targets != IGNORE_INDEX].numpy())
    monkeypatch.setattr(text, "_load_tokenizer", lambda *args, **kwargs: Fine())
    assert text.token_contexts(data, [0, 6], "tok") == {0: "t0 ▸ t1", 6: "t6 t7 ▸ t8"}
    monkeypatch.setattr(text, "_load_tokenizer", lambda *args, **kwargs: Panicking())
    assert text.token_contexts(data, [0, 6], "tok") == {}
