"""A small probabilistic grammar whose words fall into known groups: the token-level twin of kddiag's
synthetic class hierarchy (:func:`kddiag.readers.arrays.make_class_hierarchy`).

Sentences such as ``the small dog eats a red plum .`` or ``two farmers carry some ropes near the river .``:
a subject noun phrase (animals or people), a verb chosen by the subject's group and inflected for its
number (singular ``eats``, plural ``eat``), an object whose group the verb selects (animals eat foods,
people use tools, anyone sees anything), and an optional prepositional phrase with a place.

The grammar is a deterministic automaton: each word leads from a state to one next state, so the
prefix of a sentence fixes the state and the true next-word distribution is known exactly
(:func:`next_word_distribution`). That gives the Bayes-optimal next-token accuracy
(:func:`bayes_accuracy`), the ceiling every model of this text stays under: after ``the`` any of some
forty words may follow, so next-token accuracy is far below 100 % even for a perfect model.

Word groups (:data:`GROUPS`, :func:`word_groups`): determiners, adjectives, nouns by semantic group
(animal, person, food, tool, place), verbs by the subject group they take (animal, person, both),
prepositions, the full stop, and the tokenizer's special tokens in a group of their own.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")  # ids 0-3 of every tokenizer written here
PAD, UNK, BOS, EOS = range(4)
MAX_LENGTH = 32  # tokens per sentence with [BOS] and [EOS]: the longest sentence has 16

# (singular, plural) noun forms by semantic group, most frequent first (Zipf-like weights 1/rank)
NOUNS = {
    "animal": (("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("bird", "birds"), ("cow", "cows"),
               ("fox", "foxes")),
    "person": (("man", "men"), ("woman", "women"), ("child", "children"), ("farmer", "farmers"),
               ("baker", "bakers"), ("teacher", "teachers")),
    "food": (("plum", "plums"), ("cake", "cakes"), ("pear", "pears"), ("carrot", "carrots"), ("pie", "pies"),
             ("banana", "bananas")),
    "tool": (("hammer", "hammers"), ("knife", "knives"), ("rope", "ropes"), ("spoon", "spoons"),
             ("brush", "brushes"), ("pen", "pens")),
}
PLACES = ("garden", "house", "field", "kitchen", "park", "river")
# places by the subject's group, most frequent first: a dependency 5 to 10 tokens long
PLACE_ORDER = {"animal": ("field", "river", "garden", "park", "house", "kitchen"),
               "person": ("house", "kitchen", "park", "garden", "field", "river")}
ADJECTIVES = ("small", "big", "red", "tall", "young", "green", "happy", "brown", "quiet", "blue")
PREPOSITIONS = ("in", "near", "behind", "under", "on")
# verb (3rd person singular, plural) -> the object group it selects: a noun group, 'any' or None (intransitive)
VERBS = {
    "animal": ((("eats", "eat"), "food", 0.35), (("chases", "chase"), "animal", 0.2), (("bites", "bite"), "tool", 0.1)),
    "person": ((("uses", "use"), "tool", 0.2), (("carries", "carry"), "tool", 0.15), (("holds", "hold"), "tool", 0.1),
               (("cooks", "cook"), "food", 0.2)),
    "both": ((("sees", "see"), "any", 0.1), (("likes", "like"), "any", 0.05), (("sleeps", "sleep"), None, 0.1),
             (("runs", "run"), None, 0.1)),
}
# determiner -> number it fixes ('sg', 'pl' or None) and its weight at the start of a noun phrase
DETERMINERS = (("the", None, 0.5), ("a", "sg", 0.2), ("two", "pl", 0.1), ("some", "pl", 0.1), ("every", "sg", 0.1))
SUBJECT_GROUPS = (("animal", 0.5), ("person", 0.5))
P_ADJECTIVE, MAX_ADJECTIVES = 0.35, 2
P_SINGULAR_AFTER_THE = 0.6
P_PP_AFTER_OBJECT, P_PP_AFTER_INTRANSITIVE = 0.35, 0.6
GROUPS = ("special", "determiner", "adjective", "noun:animal", "noun:person", "noun:food", "noun:tool",
          "noun:place", "verb:animal", "verb:person", "verb:both", "preposition", "punctuation")


def _zipf(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1)
    return weights / weights.sum()


def vocabulary() -> tuple[str, ...]:
    """Every word of the grammar (no special tokens), grouped, in a fixed order."""
    words = [d for d, _, _ in DETERMINERS] + list(ADJECTIVES)
    for group in NOUNS:
        words += [form for pair in NOUNS[group] for form in pair]
    words += list(PLACES)
    for group in VERBS:
        words += [form for forms, _, _ in VERBS[group] for form in forms]
    return tuple(words + list(PREPOSITIONS) + ["."])


@lru_cache(maxsize=1)
def word_groups() -> dict[str, str]:
    """word (or special token) -> its group name in :data:`GROUPS`."""
    groups = {s: "special" for s in SPECIALS}
    groups.update({d: "determiner" for d, _, _ in DETERMINERS})
    groups.update({a: "adjective" for a in ADJECTIVES})
    for group, pairs in NOUNS.items():
        groups.update({form: f"noun:{group}" for pair in pairs for form in pair})
    groups.update({p: "noun:place" for p in PLACES})
    for group, verbs in VERBS.items():
        groups.update({form: f"verb:{group}" for forms, _, _ in verbs for form in forms})
    groups.update({p: "preposition" for p in PREPOSITIONS})
    groups["."] = "punctuation"
    return groups


# --- the automaton ---------------------------------------------------------------------------------
# A state is a tuple; options(state) lists (word, probability, next state), each word at most once.

START = ("np", "subject", None, None, None, 0)  # noun phrase: role, number, object group, subject group, adjectives


def _options(state: tuple) -> list[tuple[str, float, tuple]]:
    kind = state[0]
    if kind == "np":  # a determiner opens the subject or object noun phrase
        _, role, _, group, subject, _ = state
        total = sum(w for _, _, w in DETERMINERS)
        return [(d, w / total, ("det", role, n, group, subject, 0)) for d, n, w in DETERMINERS]
    if kind == "det":  # adjectives, then the noun
        _, role, number, group, subject, n_adj = state
        out = []
        p_adj = P_ADJECTIVE if n_adj < MAX_ADJECTIVES else 0.0
        if p_adj:
            out += [(adjective, p_adj * w, ("det", role, number, group, subject, n_adj + 1))
                    for adjective, w in zip(ADJECTIVES, _zipf(len(ADJECTIVES)))]
        numbers = {"sg": ((0, 1.0),), "pl": ((1, 1.0),),
                   None: ((0, P_SINGULAR_AFTER_THE), (1, 1 - P_SINGULAR_AFTER_THE))}[number]
        if role == "subject":
            groups = SUBJECT_GROUPS
        else:
            groups = tuple((g, 1 / len(NOUNS)) for g in NOUNS) if group == "any" else ((group, 1.0),)
        for noun_group, p_group in groups:
            pairs = NOUNS[noun_group]
            for pair, w in zip(pairs, _zipf(len(pairs))):
                for form, p_number in numbers:
                    nxt = (("subject", noun_group, "sg" if form == 0 else "pl") if role == "subject"
                           else ("end", P_PP_AFTER_OBJECT, subject))
                    out.append((pair[form], (1 - p_adj) * p_group * w * p_number, nxt))
        return out
    if kind == "subject":  # the verb, by the subject's group, inflected for its number
        _, group, number = state
        verbs = VERBS[group] + VERBS["both"]
        total = sum(w for _, _, w in verbs)
        return [(forms[0 if number == "sg" else 1], w / total,
                 ("np", "object", None, obj, group, 0) if obj else ("end", P_PP_AFTER_INTRANSITIVE, group))
                for forms, obj, w in verbs]
    if kind == "end":  # full stop, or a prepositional phrase with a place
        _, p_pp, subject = state
        out = [(".", 1 - p_pp, ("stop",))]
        if p_pp:
            out += [(p, p_pp * w, ("pp", subject)) for p, w in zip(PREPOSITIONS, _zipf(len(PREPOSITIONS)))]
        return out
    if kind == "pp":
        return [("the", 1.0, ("place", state[1]))]
    if kind == "place":  # which places are likely depends on the subject, far back
        order = PLACE_ORDER[state[1]]
        return [(p, w, ("end", 0.0, state[1])) for p, w in zip(order, _zipf(len(order)))]
    if kind == "stop":
        return [("[EOS]", 1.0, ("done",))]
    raise ValueError(f"unknown grammar state {state!r}")


@lru_cache(maxsize=None)
def _cached_options(state: tuple) -> tuple[tuple[str, ...], np.ndarray, tuple[tuple, ...]]:
    options = _options(state)
    words = tuple(o[0] for o in options)
    if len(set(words)) != len(words):
        raise AssertionError(f"grammar state {state!r} offers a word twice: the automaton must be deterministic")
    probs = np.array([o[1] for o in options])
    return words, probs / probs.sum(), tuple(o[2] for o in options)


def generate(n_sentences: int, *, seed: int) -> list[str]:
    """``n_sentences`` sentences drawn from the grammar, words separated by spaces; deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n_sentences):
        state, words = START, []
        while True:
            options, probs, states = _cached_options(state)
            k = rng.choice(len(options), p=probs)
            if options[k] == "[EOS]":
                break
            words.append(options[k])
            state = states[k]
        sentences.append(" ".join(words))
    return sentences


def next_word_distribution(prefix: list[str] | tuple[str, ...]) -> dict[str, float]:
    """The true distribution of the next word (or ``[EOS]``) after the words of ``prefix``."""
    state = START
    for word in prefix:
        options, _, states = _cached_options(state)
        state = states[options.index(word)]
    options, probs, _ = _cached_options(state)
    return dict(zip(options, probs.tolist()))


def bayes_accuracy(sentences: list[str]) -> float:
    """Share of next-token targets (each word and the final ``[EOS]``) that the true distribution's mode names:
    the best next-token accuracy any model can expect on text from this grammar."""
    hits = total = 0
    for sentence in sentences:
        words = sentence.split() + ["[EOS]"]
        state = START
        for word in words:
            options, probs, states = _cached_options(state)
            hits += options[int(np.argmax(probs))] == word
            total += 1
            if word != "[EOS]":
                state = states[options.index(word)]
    return hits / total


def unique_continuation_share(sentences: list[str]) -> float:
    """Share of next-token targets whose prefix is followed by one token only within ``sentences``: the most
    a model that memorized exactly this text can make one-hot (the other prefixes, such as ``the`` at the
    start, go on in several ways in the text itself)."""
    from collections import defaultdict

    continuations: dict[tuple[str, ...], set[str]] = defaultdict(set)
    rows = [sentence.split() + ["[EOS]"] for sentence in sentences]
    for words in rows:
        for i, word in enumerate(words):
            continuations[tuple(words[:i])].add(word)
    counts = [len(continuations[tuple(words[:i])]) == 1 for words in rows for i in range(len(words))]
    return sum(counts) / len(counts)


# --- files kddiag reads ----------------------------------------------------------------------------

def save_word_tokenizer(directory: str | Path, words: tuple[str, ...] | None = None) -> dict[str, int]:
    """A word-level tokenizer (``[BOS] words [EOS]``, ids: the specials, then ``words`` in order) saved with
    ``save_pretrained`` into ``directory``; returns its vocabulary ``{token: id}``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = vocabulary() if words is None else tuple(words)
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                           special_tokens=[("[BOS]", BOS), ("[EOS]", EOS)])
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]",
                            eos_token="[EOS]", model_max_length=MAX_LENGTH).save_pretrained(str(directory))
    return vocab


def class_info_json(vocab: dict[str, int]) -> dict:
    """kddiag's ``--classes`` content for a tokenizer's vocabulary: ``{"names", "groups"}`` indexed by token id
    (special tokens, and any word outside the grammar, in the group 'special')."""
    groups = word_groups()
    names = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    return {"names": names, "groups": [groups.get(name, "special") for name in names]}


def write_classes(path: str | Path, vocab: dict[str, int]) -> Path:
    """Write :func:`class_info_json` of ``vocab`` to ``path`` (JSON) for ``kddiag inspect --classes``."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(class_info_json(vocab)) + "\n", encoding="utf-8")
    return path
