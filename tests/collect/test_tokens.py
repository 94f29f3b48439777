"""Token inputs: a causal LM's examples are its target positions, batched by sequence, sharded anywhere."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from kddiag.accumulate import summarize
from kddiag.collect import collect_summary, model_batches
from kddiag.measure import measure
from kddiag.report.json import _jsonable
from kddiag.inputs import IGNORE_INDEX, ClassInfo, Dataset, LoadedModel, TokenInputs
from kddiag.options import Setting, Settings
from kddiag.outputs import ModelOutputs, SetOutputs

VOCAB, LENGTH = 40, 12


class TinyLM(nn.Module):
    """Embedding, a mixing layer, and an LM head applied at the target positions only (as the Hugging Face
    adapter does): logits (P, V) in row-major order."""

    def __init__(self, seed: int, width: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.mix = nn.Embedding(VOCAB, width), nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)

    def hidden(self, inputs: TokenInputs):
        h = self.embed(inputs.input_ids)
        h = torch.tanh(self.mix(torch.cumsum(h * inputs.attention_mask[..., None], dim=1)))
        return h

    def forward(self, inputs: TokenInputs):
        return self.head(self.hidden(inputs)[inputs.targets != IGNORE_INDEX])


class TinyClassifier(TinyLM):
    def __init__(self, seed: int):
        super().__init__(seed)
        self.head = nn.Linear(16, 3)

    def forward(self, inputs: TokenInputs):
        return self.head(self.hidden(inputs)[:, -1])


def token_set(n: int = 23, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    ids = torch.as_tensor(rng.integers(0, VOCAB, (n, LENGTH)))
    lengths = rng.integers(1, LENGTH + 1, n)  # some sequences of one token: no target position at all
    mask = torch.as_tensor((np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64))
    targets = torch.full((n, LENGTH), IGNORE_INDEX)
    targets[:, :-1] = torch.where(mask[:, 1:] == 1, ids[:, 1:], IGNORE_INDEX)
    x = TokenInputs(ids, mask, targets)
    return Dataset("tokens", x, targets[targets != IGNORE_INDEX].numpy())


def models():
    return {role: LoadedModel("<in-memory>", "module", TinyLM(seed)) for role, seed in (("teacher", 1), ("student", 2))}


def summary_json(summary) -> str:
    measured = measure([summary], settings=Settings(), class_info=ClassInfo())
    return json.dumps(_jsonable(measured.to_dict()))


def test_positions_are_the_examples_in_row_major_order():
    data = token_set()
    loaded = models()
    parts = list(model_batches(data, loaded, set_name="eval", batch_size=4))
    starts = [part.start for part, _ in parts]
    assert starts == sorted(starts) and starts[0] == 0
    logits = np.concatenate([part.logits["teacher"] for part, _ in parts])
    with torch.inference_mode():
        expected = loaded["teacher"].module(data.x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert sum(part.labels.size for part, _ in parts) == data.labels.size == data.x.n_examples
    features = np.concatenate([part.features["teacher"] for part, _ in parts])
    assert features.shape == (data.labels.size, 16)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_streamed_token_summary_equals_the_one_of_outputs_in_memory(batch_size):
    data = token_set()
    loaded = models()
    streamed = collect_summary(data, teacher=loaded["teacher"], student=loaded["student"], set_name="eval",
                               temperature=4.0, alpha=0.9, batch_size=batch_size).summary()
    with torch.inference_mode():
        outputs = {role: ModelOutputs(m.module(data.x).double().numpy()) for role, m in loaded.items()}
    in_memory = summarize(SetOutputs("eval", data.labels, outputs["teacher"], outputs["student"]),
                          temperature=4.0, alpha=0.9)
    assert streamed.n_samples == data.labels.size
    assert streamed.mean("kl") == pytest.approx(in_memory.mean("kl"), rel=1e-5)
    assert streamed.mean("teacher.correct") == in_memory.mean("teacher.correct")


def test_shards_cut_inside_sequences_merge_into_one_pass():
    data = token_set(n=40, seed=3)
    loaded = models()
    n = data.labels.size
    one = collect_summary(data, teacher=loaded["teacher"], student=loaded["student"], set_name="eval",
                          temperature=4.0, alpha=0.9, batch_size=5)
    cut = n // 2 + 1  # not at a sequence boundary, in general
    parts = [collect_summary(data, teacher=loaded["teacher"], student=loaded["student"], set_name="eval",
                             temperature=4.0, alpha=0.9, batch_size=5, rows=rows)
             for rows in (range(0, cut), range(cut, n))]
    parts[0].merge(parts[1])
    assert parts[0].summary().n_samples == one.summary().n_samples == n
    np.testing.assert_array_equal(parts[0].summary().examples["index"], one.summary().examples["index"])


def test_sequence_classifier_inputs_are_one_example_per_sequence():
    rng = np.random.default_rng(1)
    ids = torch.as_tensor(rng.integers(0, VOCAB, (50, LENGTH)))
    data = Dataset("classify", TokenInputs(ids, torch.ones_like(ids)), rng.integers(0, 3, 50))
    loaded = {role: LoadedModel("<in-memory>", "module", TinyClassifier(seed)) for role, seed in
              (("teacher", 1), ("student", 2))}
    summary = collect_summary(data, teacher=loaded["teacher"], student=loaded["student"], set_name="eval",
                              temperature=2.0, alpha=0.5, batch_size=7).summary()
    assert summary.n_samples == 50 and summary.n_classes == 3
    assert "teacher" in summary.feature_roles


def test_breakdowns_by_frequency_and_position_equal_brute_force_sums():
    from kddiag.collect import collect_summaries
    from kddiag.metrics import strata
    from kddiag.metrics.strata import Breakdown

    data = token_set(n=30, seed=5)
    loaded = models()
    buckets = {strata.FREQUENCY: strata.frequency_buckets(data.labels, np.bincount(data.labels, minlength=VOCAB)),
               strata.POSITION: strata.position_buckets(data.x.target_positions())}
    (acc,) = collect_summaries(data, teacher=loaded["teacher"], students=(loaded["student"],), set_name="eval",
                               settings=((2.0, 0.5),), batch_size=4, strata=buckets)
    measured = measure([acc.summary()], settings=Settings(Setting(2.0, "cli"), Setting(0.5, "cli")),
                       class_info=ClassInfo())
    with torch.inference_mode():
        teacher, student = (loaded[r].module(data.x).numpy() for r in ("teacher", "student"))
    teacher_right = teacher.argmax(1) == data.labels
    agree = teacher.argmax(1) == student.argmax(1)
    for breakdown, by in ((measured.outcome.eval.by_token_frequency.value, strata.FREQUENCY),
                          (measured.outcome.eval.by_position.value, strata.POSITION)):
        assert breakdown.count.sum() == data.labels.size
        names = strata.bucket_names(by)
        for k, name in enumerate(breakdown.buckets):
            rows = buckets[by] == names.index(name)
            assert breakdown.count[k] == rows.sum()
            assert breakdown.means["teacher_accuracy"][k] == pytest.approx(teacher_right[rows].mean())
            assert breakdown.means["agreement"][k] == pytest.approx(agree[rows].mean())
        again = Breakdown.from_dict(json.loads(json.dumps(_jsonable(breakdown.to_dict()))))
        assert again.buckets == breakdown.buckets
        np.testing.assert_allclose(again.means["kl_teacher_student"], breakdown.means["kl_teacher_student"])


def test_positions_are_numbered_within_their_sequence():
    data = token_set(n=5, seed=2)
    targets = data.x.targets.numpy()
    expected = [t for row in targets for t, value in enumerate(row) if value != IGNORE_INDEX]
    np.testing.assert_array_equal(data.x.target_positions(), expected)
