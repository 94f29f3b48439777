"""The token-lm case study's pieces: the grammar against brute force, its tokenizer and class groups as kddiag
reads them, and the per-token training loss (no model is trained to convergence here)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from case_studies import _grammar as grammar

transformers = pytest.importorskip("transformers")  # the 'transformers' extra


def test_the_grammar_is_deterministic_and_uses_its_vocabulary():
    a, b = grammar.generate(200, seed=3), grammar.generate(200, seed=3)
    assert a == b and a != grammar.generate(200, seed=4)
    words = set(grammar.vocabulary())
    assert len(words) == len(grammar.vocabulary())  # every word once: one group per word
    assert {w for s in a for w in s.split()} <= words
    assert all(s.endswith(" .") for s in a)
    assert max(len(s.split()) for s in grammar.generate(2000, seed=0)) + 2 <= grammar.MAX_LENGTH


def test_next_word_distribution_matches_the_empirical_one():
    sentences = grammar.generate(20000, seed=1)
    after = Counter(s.split()[2] for s in sentences if s.split()[:2] == ["the", "dogs"])
    true = grammar.next_word_distribution(["the", "dogs"])
    assert set(true) == {"eat", "chase", "bite", "see", "like", "sleep", "run"}  # plural, animal verbs
    total = sum(after.values())
    for word, p in true.items():
        assert after[word] / total == pytest.approx(p, abs=0.05)


def test_bayes_accuracy_and_the_one_hot_ceiling_by_brute_force():
    sentences = ["a dog eats a plum .", "a dog eats a cake .", "two men sleep ."]
    hits = total = 0
    for s in sentences:
        words = s.split() + ["[EOS]"]
        for i, word in enumerate(words):
            dist = grammar.next_word_distribution(words[:i])
            hits += max(dist, key=dist.get) == word
            total += 1
    assert grammar.bayes_accuracy(sentences) == pytest.approx(hits / total)
    # 19 targets (7 + 7 + 5); the prefixes '' (a or two: 3 targets) and 'a dog eats a' (plum or cake: 2)
    # go on in two ways within these three sentences, every other prefix in one
    assert grammar.unique_continuation_share(sentences) == pytest.approx((19 - 3 - 2) / 19)


def test_the_saved_tokenizer_gives_the_ids_the_study_trains_on(tmp_path):
    from transformers import AutoTokenizer

    from case_studies.token_lm import encode, permuted_words

    vocab = grammar.save_word_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    sentences = grammar.generate(5, seed=0)
    ids, mask = encode(vocab, sentences)
    for row, m, sentence in zip(ids, mask, sentences):
        assert row[m.bool()].tolist() == tokenizer(sentence)["input_ids"]
    other = {t: i for i, t in enumerate(grammar.SPECIALS + permuted_words(0))}
    assert len(other) == len(vocab) + 3 and sorted(other) != sorted(vocab)
    assert any(other[w] != vocab[w] for w in grammar.vocabulary())


def test_classes_json_is_read_by_kddiag_with_one_group_per_token(tmp_path):
    from kddiag.loading import load_class_info

    vocab = grammar.save_word_tokenizer(tmp_path)
    path = grammar.write_classes(tmp_path / "classes.json", vocab)
    info = load_class_info(path)
    assert len(info.names) == len(vocab) == len(info.groups)
    content = json.loads(path.read_text())
    assert content["groups"][:4] == ["special"] * 4
    assert content["groups"][vocab["dog"]] == "noun:animal" and content["groups"][vocab["eats"]] == "verb:animal"
    assert len(set(info.groups)) == len(grammar.GROUPS)


def test_train_lm_masks_padding_and_alpha_zero_is_cross_entropy():
    from case_studies.token_lm import Model, LMRecipe, encode, new_gpt, next_token_targets, train_lm

    vocab = {t: i for i, t in enumerate(grammar.SPECIALS + grammar.vocabulary())}
    ids, mask = encode(vocab, ["a dog sleeps .", "two green cats run on the river ."])
    targets = next_token_targets(ids, mask)
    assert targets[0].tolist()[:5] == [vocab["a"], vocab["dog"], vocab["sleeps"], vocab["."], grammar.EOS]
    assert (targets[0, 5:] == -100).all() and targets[1, -1] == -100
    recipe = LMRecipe(epochs=3, lr=1e-2, batch_size=2)
    plain = train_lm(new_gpt(Model(1, 16), len(vocab), seed=0), ids, mask, recipe=recipe, seed=0)
    ignored_teacher = torch.from_numpy(np.random.default_rng(0).normal(size=(*ids.shape, len(vocab)))).float()
    same = train_lm(new_gpt(Model(1, 16), len(vocab), seed=0), ids, mask, recipe=recipe, seed=0,
                    teacher_logits=ignored_teacher, temperature=4.0, alpha=0.0)
    for a, b in zip(plain.parameters(), same.parameters()):
        torch.testing.assert_close(a, b)


def test_the_classifier_examples_hide_the_subject_and_label_its_group_and_number(tmp_path):
    from case_studies.token_lm import SUBJECT_CLASSES, subject_examples, write_jsonl
    from case_studies.token_lm import encode
    from kddiag.readers.text import load_text_dataset

    texts, labels = subject_examples(["the small dogs eat a plum .", "a teacher sees the cat ."])
    assert texts == ["the small [UNK] eat a plum .", "a [UNK] sees the cat ."]  # only the subject is hidden
    assert [SUBJECT_CLASSES[y] for y in labels] == ["animal pl", "person sg"]
    sentences = grammar.generate(300, seed=5)
    texts, labels = subject_examples(sentences)
    assert all(t.count("[UNK]") == 1 for t in texts) and set(labels) == {0, 1, 2, 3}
    directory = tmp_path / "tok"
    grammar.save_word_tokenizer(directory)
    data = load_text_dataset(write_jsonl(tmp_path / "c.jsonl", texts, labels), role="data",
                             task="sequence-classification", tokenizer_dir=directory)
    assert data.labels.tolist() == labels  # what kddiag reads is what the case study trained on
    vocab = {token: i for i, token in enumerate(grammar.SPECIALS + grammar.vocabulary())}
    ids, mask = encode(vocab, texts)
    assert torch.equal(data.x.input_ids[:, :ids.shape[1]] * data.x.attention_mask[:, :ids.shape[1]], ids * mask)
