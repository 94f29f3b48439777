"""Top-k teacher logits through inspect: what only the top-k decide equals the full-logits run."""
import numpy as np
import torch

from kddiag.pipeline import inspect
from kddiag.options import InspectOptions


def test_topk_teacher_gives_the_exact_measurements_of_its_full_logits(tmp_path):
    rng = np.random.default_rng(0)
    n, c = 400, 30
    base = rng.normal(0, 3, (n, c))
    teacher, student = base + rng.normal(0, 1, (n, c)), base + rng.normal(0, 2, (n, c))
    y = (base + rng.gumbel(size=(n, c))).argmax(axis=1)
    logprobs = torch.log_softmax(torch.as_tensor(teacher, dtype=torch.float32), 1)
    values, ids = logprobs.topk(8, dim=1)
    np.savez(tmp_path / "t_top8.npz", topk_ids=ids.numpy(), topk_logprobs=values.numpy(), n_classes=np.int64(c))
    np.save(tmp_path / "t_full.npy", logprobs.numpy())
    np.save(tmp_path / "s.npy", student.astype(np.float32))
    np.savez(tmp_path / "y.npz", y=y)
    options = InspectOptions(temperature=4.0, alpha=0.9)
    runs = [inspect(str(tmp_path / name), str(tmp_path / "s.npy"), data=str(tmp_path / "y.npz"), options=options)
            for name in ("t_top8.npz", "t_full.npy")]
    (top, full) = (r.measurements for r in runs)
    for value in ("teacher_accuracy", "agreement", "agreement_where_teacher_correct", "permuted_agreement"):
        assert getattr(top.outcome.eval, value).value == getattr(full.outcome.eval, value).value, value
    for value in ("ece", "mce"):
        np.testing.assert_allclose(getattr(top.universe.eval.teacher, value).value,
                                   getattr(full.universe.eval.teacher, value).value, rtol=1e-5)
    assert top.universe.eval.teacher.nll.value != full.universe.eval.teacher.nll.value  # the tail is a guess
    assert any("top-8 logits of 30 classes" in note for info in runs[0].inputs for note in info.notes)
