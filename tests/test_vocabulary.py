"""Teacher and student vocabularies compared id by id before any forward pass, and the finding it gives."""
from kddiag.diagnosis.engine import RULES, vocabulary_mismatch
from kddiag.diagnosis.ids import PROBLEMS, VOCABULARY_MISMATCH
from kddiag.vocabulary import Vocabulary, compare_vocabularies

BASE = {"<pad>": 0, "<eos>": 1, "a": 2, "b": 3, "c": 4}
SPECIAL = {"eos_token": "<eos>", "pad_token": "<pad>"}


def vocab(tokens, special=SPECIAL):
    return Vocabulary(tokens, special, "dir")


def test_the_same_vocabulary_is_the_same():
    comparison = compare_vocabularies(vocab(BASE), vocab(dict(BASE)))
    assert comparison.same and comparison.n_differing == 0
    assert comparison.describe() == "the vocabularies are the same"


def test_a_larger_student_vocabulary_differs_at_its_extra_ids():
    comparison = compare_vocabularies(vocab(BASE), vocab({**BASE, "d": 5, "e": 6}))
    assert not comparison.same and comparison.n_differing == 2
    assert comparison.first_differing == ((5, None, "d"), (6, None, "e"))
    assert "5 tokens, the student's 7" in comparison.describe()


def test_swapped_ids_and_special_tokens_are_named():
    swapped = {**BASE, "a": 3, "b": 2}
    comparison = compare_vocabularies(vocab(BASE), vocab(swapped, {"eos_token": "</s>", "pad_token": "<pad>"}))
    assert comparison.n_differing == 2 and comparison.first_differing[0] == (2, "a", "b")
    assert comparison.special == (("eos_token", "<eos>", "</s>"),)
    assert "id 2: 'a' vs 'b'" in comparison.describe() and "eos_token" in comparison.describe()


def test_the_mismatch_diagnosis_is_one_level_0_finding_and_nothing_else_checked():
    diagnosis = vocabulary_mismatch(compare_vocabularies(vocab(BASE), vocab({**BASE, "a": 9})))
    assert diagnosis.verdict == PROBLEMS
    (finding,) = diagnosis.findings
    assert finding.id == VOCABULARY_MISMATCH and finding.levels == ("outcome",)
    assert {rule for rule, _ in diagnosis.not_checked} == {rule.id for rule in RULES}
    assert finding.evidence[0].value == 2.0  # id 2 lost its token, id 9 gained one
