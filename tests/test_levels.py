"""The knowledge levels (kddiag/levels/): the column catalogue, blocks computing each column once, and a
per-example metric that lives in one level module (top-k agreement)."""
import numpy as np
import pytest

from kddiag.accumulate import summarize
from kddiag.levels import COLUMNS, LEVELS, Block, Column, headlines, outcome
from kddiag.measure import measure
from kddiag.metrics._common import softmax_stats
from kddiag.inputs import ClassInfo
from kddiag.options import Setting, Settings
from kddiag.outputs import ModelOutputs, SetOutputs
from kddiag.types import EVAL, ROLES

SETTINGS = Settings(temperature=Setting(2.0, "cli"), alpha=Setting(0.7, "cli"))


def test_every_column_has_one_name_and_is_kept_somewhere():
    declared = [column for level in LEVELS for column in level.COLUMNS]
    assert len({column.name for column in declared}) == len(declared)  # no level shadows another's column
    for column in COLUMNS.values():
        assert column.needs and column.needs <= set(ROLES), column.name
        assert column.mean or column.sample, column.name  # else the summary would not keep it


def test_every_level_has_headline_rows():
    for level in LEVELS:
        rows, _ = headlines(level.NAME)
        assert rows and all(row.label for row in rows)


def _block(catalogue, n=6, n_classes=4, roles=("teacher", "student")):
    rng = np.random.default_rng(0)
    logits = {role: rng.normal(size=(n, n_classes)) for role in roles}
    labels = rng.integers(0, n_classes, size=n)
    one = {role: softmax_stats(z, labels, temperature=1.0) for role, z in logits.items()}
    return Block(catalogue, labels, logits, one, one["teacher"], one.get("student"), alpha=0.5)


def test_a_block_computes_each_column_once_and_leaves_out_absent_models():
    calls = []

    def counted(block):
        calls.append(1)
        return block.labels * 1.0

    catalogue = {"x": Column("x", counted, mean=True),
                 "twice": Column("twice", lambda block: block["x"] * 2, mean=True),
                 "needs_baseline": Column("needs_baseline", counted, frozenset({"baseline"}), mean=True),
                 "undefined": Column("undefined", lambda block: None, mean=True)}
    block = _block(catalogue)
    values = block.columns(["x", "twice", "needs_baseline", "undefined"])
    assert set(values) == {"x", "twice"}  # no baseline given; 'undefined' is None on this block
    np.testing.assert_array_equal(values["twice"], 2.0 * block.labels)
    assert len(calls) == 1  # 'twice' read 'x' without computing it again


def _set(n_classes, n=400, seed=0):
    """A teacher and a student whose logits share structure; labels from the teacher's scores."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, n_classes)) * 2
    labels = np.argmax(base + rng.gumbel(size=base.shape), axis=1)
    return SetOutputs(EVAL, labels, ModelOutputs(base + 0.3 * rng.normal(size=base.shape)),
                      ModelOutputs(base + 2.0 * rng.normal(size=base.shape)))


def test_top_k_agreement_counts_the_student_prediction_among_the_teacher_top_k():
    data = _set(12)
    got = measure([data], settings=SETTINGS, class_info=ClassInfo()).outcome.eval
    teacher, student = data.teacher.logits, data.student.logits
    top = np.argsort(-teacher, axis=1)[:, :outcome.TOP_K]  # no ties in continuous logits
    expected = np.mean([s in row for s, row in zip(student.argmax(axis=1), top)])
    assert got.top_k_agreement.value == pytest.approx(expected, abs=1e-12)
    assert got.agreement.value < got.top_k_agreement.value < 1.0  # a real spread, not a constant
    low, high = got.top_k_agreement.ci
    assert low <= expected <= high
    assert got.top_k_agreement.name == "outcome.top_k_agreement"


def test_top_k_agreement_counts_ties_for_the_student():
    teacher = np.array([[3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]] * 40)
    student = np.zeros_like(teacher)
    student[:, 7] = 1.0  # class 7: tied with six others below the teacher's best, one class above it
    data = SetOutputs(EVAL, np.zeros(40, dtype=np.int64), ModelOutputs(teacher), ModelOutputs(student))
    summary = summarize(data, temperature=2.0, alpha=0.7)
    assert summary.mean("top_k_agree") == 1.0


def test_top_k_agreement_needs_more_than_k_classes():
    got = measure([_set(outcome.TOP_K)], settings=SETTINGS, class_info=ClassInfo()).outcome.eval
    assert got.top_k_agreement.value is None
    assert got.top_k_agreement.unavailable == outcome.FEW_CLASSES_FOR_TOP_K_AGREEMENT
