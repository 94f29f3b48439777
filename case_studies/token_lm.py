"""Token-level LMs: kddiag's diagnosis, calibrated on MLP classifiers, on tiny GPT-2 pairs (out of family).

Claim: The failure cases of distillation seen with classifiers show up in next-token distillation of
causal language models as well: KD from an early-stopped teacher at a moderate τ beats the same student
trained on the text alone; a teacher that memorized a small transfer set gives it (near) one-hot
targets and distils worse than the early-stopped one; a τ far too high makes the targets near uniform
and the student worse than at a moderate τ; a far too small student gains nothing from KD. kddiag,
whose thresholds were set on MLPs, should name each cause (`healthy`, `teacher-overconfident`, `temperature-mismatch`,
`capacity-gap`) and catch a student saved with another tokenizer (`vocabulary-mismatch`). A tiny BERT
sequence-classifier pair on the same text, distilled the DistilBERT way (per sequence), gains from KD too,
and kddiag, reading it through the same Hugging Face path, should call it `healthy`.

Source: Hinton, Vinyals and Dean 2015 (arXiv 1503.02531) and Kim and Rush 2016 (word-level KD, arXiv
1606.07947) for per-token KD; Cho and Hariharan 2019 (arXiv 1910.01348) and Mirzadeh et al. 2020 (arXiv
1902.03393) for over-trained teachers and the capacity gap; Tang et al. 2020 (arXiv 2002.03532) for the
three levels kddiag measures; issue 11 item 6.

Setup: text from a probabilistic grammar with known word groups (case_studies/_grammar.py: 97 words
in 12 groups + 4 special tokens; subject-verb agreement, verbs selecting the object's group, places
depending on the subject 5-10 tokens back). The grammar branches, so even the true next-word
distribution names the next token only about 48% of the time (the Bayes-optimal accuracy, computed
exactly). Word-level tokenizer; every target token position is one example and the 101-token
vocabulary the classes (kddiag's Hugging Face path, ``--classes`` giving the word groups). Transfer set
300 sentences, 500 held out. Teacher GPT-2 with 2 layers of width 64, trained on 3,000 sentences (the
transfer set and 2,700 more) and stopped after 6 epochs; students GPT-2 with 1 layer of width 16 (80
epochs: CE alone over-fits by then), distilled per token with (1 − α)·CE + α·τ²·KL(p_τ‖q_τ) over the target
positions (padding masked), mini-batch Adam; baseline = the same student, same initialization, CE only.
Scenarios: healthy (τ = 2, α = 0.5); memorizing teacher (400 epochs on the 300 transfer sentences
alone; its student at τ = 1, α = 0.5); τ = 75; a width-4 student (against a width-4 CE baseline); a
student trained and saved with a permuted, extended tokenizer. Models saved with ``save_pretrained``
(safetensors) beside their tokenizer and inspected from those folders and the text files, as a user
would (``--temperature``, ``--alpha``, ``--classes``).

Sequence classification (its own family in the benchmark, ``seq-classifier``): each sentence with its
subject noun replaced by [UNK], labelled with that noun's group and number (4 classes: animal or person,
singular or plural), which the rest of the sentence tells only in part (the verb's group and inflection,
the place). ``BertForSequenceClassification`` teacher (2 layers, width 64, 10 epochs on the 3,000
sentences) and students (1 layer, width 32, 80 epochs on the 300 transfer sentences; KD at τ = 2,
α = 0.5, per sequence), Adam at 1e-3 with gradients clipped to norm 1 (without the clip, a third of
these students never leave the majority class); `.jsonl` files with ``text`` and ``label``.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from case_studies import _grammar as grammar
from case_studies._harness import Check, Context, Rows, compare, outcome_row, require_extra, run_study
from case_studies._training import distillation_loss, fit_minibatches

FAMILY = "token-lm"  # kept with every verdict: the benchmark scores each model family apart

N_TRANSFER, N_EXTRA, N_HELD = 300, 2700, 500  # sentences


@dataclass(frozen=True)
class Model:
    """A GPT-2 shape: layers, width (heads of 16 dimensions, at least one)."""

    n_layer: int
    n_embd: int


@dataclass(frozen=True)
class LMRecipe:
    """Mini-batch Adam over whole sentences."""

    epochs: int
    lr: float = 3e-3
    batch_size: int = 64


TEACHER, STUDENT, TINY_STUDENT = Model(2, 64), Model(1, 16), Model(1, 4)
EARLY_TEACHER = LMRecipe(epochs=6, lr=3e-3)  # stopped while held-out loss still falls
MEMORIZING_TEACHER = LMRecipe(epochs=400, lr=3e-3)  # on the transfer set alone: fits (memorizes) it
STUDENT_RECIPE = LMRecipe(epochs=80, lr=3e-3)  # CE alone over-fits 300 sentences by then
TEMPERATURE, ALPHA = 2.0, 0.5
HIGH_TEMPERATURE = 75.0
CLASSIFIER_TEACHER, CLASSIFIER_STUDENT = Model(2, 64), Model(1, 32)
CLASSIFIER_TEACHER_RECIPE = LMRecipe(epochs=10, lr=1e-3)
CLASSIFIER_STUDENT_RECIPE = LMRecipe(epochs=80, lr=1e-3)
CLASSIFIER_FAMILY = "seq-classifier"
SUBJECT_CLASSES = ("animal sg", "animal pl", "person sg", "person pl")  # the masked subject's group and number
SCENARIOS = {  # scenario -> true cause
    "healthy": "healthy",
    "memorizing-teacher": "teacher-overconfident",
    "tau-75": "temperature-mismatch",
    "tiny-student": "capacity-gap",
    "permuted-vocabulary": "vocabulary-mismatch",
    "classifier-healthy": "healthy",
}


# --- data -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Texts:
    """One draw of the grammar's text: the students' transfer set, the teacher's extra text, held-out text."""

    transfer: list[str]
    extra: list[str]
    held: list[str]


def draw_texts(seed: int, *, quick: bool = False) -> Texts:
    scale = 2 if quick else 1
    return Texts(transfer=grammar.generate(N_TRANSFER // scale, seed=10 * seed + 1),
                 extra=grammar.generate(N_EXTRA // scale, seed=10 * seed + 2),
                 held=grammar.generate(N_HELD // scale, seed=10 * seed + 3))


def encode(vocab: dict[str, int], sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[BOS] words [EOS]`` ids (n, longest) right-padded with [PAD], and the attention mask; the same ids
    the saved tokenizer gives (checked in tests/test_token_case_study.py)."""
    rows = [[grammar.BOS] + [vocab[w] for w in s.split()] + [grammar.EOS] for s in sentences]
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), grammar.PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return ids, mask


def next_token_targets(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n, L): the token at t + 1 at position t, -100 at the last real token and on padding."""
    targets = torch.full_like(ids, -100)
    keep = mask[:, :-1].bool() & mask[:, 1:].bool()
    targets[:, :-1] = torch.where(keep, ids[:, 1:], torch.full_like(ids[:, 1:], -100))
    return targets


def write_text(path: Path, sentences: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return path


# --- models -----------------------------------------------------------------------------------------

def new_gpt(shape: Model, vocab_size: int, *, seed: int):
    """A freshly initialized ``GPT2LMHeadModel`` (no dropout), seeded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_positions=grammar.MAX_LENGTH, n_embd=shape.n_embd,
                        n_layer=shape.n_layer, n_head=max(1, shape.n_embd // 16), n_inner=4 * shape.n_embd,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=grammar.BOS,
                        eos_token_id=grammar.EOS, pad_token_id=grammar.PAD)
    return GPT2LMHeadModel(config)


def train_lm(model, ids: torch.Tensor, mask: torch.Tensor, *, recipe: LMRecipe, seed: int,
             teacher_logits: torch.Tensor | None = None, temperature: float = 1.0, alpha: float = 0.0):
    """Train ``model`` in place: per target token (1 − α)·CE + α·τ²·KL(softmax(z/τ) ‖ softmax(s/τ)), the
    mean over the target positions of a batch (padding and the last token masked); α = 0: CE alone.

    ``teacher_logits``: (n, L, vocab) on the same ``ids``. Batches are drawn with ``seed``.
    """
    targets = next_token_targets(ids, mask)

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        keep = targets[batch] != -100
        logits = model(input_ids=ids[batch], attention_mask=mask[batch]).logits[keep]
        rho = (None if teacher_logits is None or alpha == 0
               else torch.softmax(teacher_logits[batch][keep] / temperature, dim=-1))
        return distillation_loss(logits, targets[batch][keep], rho, temperature=temperature, alpha=alpha)

    return fit_minibatches(model, len(ids), batch_loss, epochs=recipe.epochs, batch_size=recipe.batch_size,
                           lr=recipe.lr, seed=seed)


def lm_logits(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n, L, vocab) logits, float32."""
    model.eval()
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def token_accuracy(model, ids: torch.Tensor, mask: torch.Tensor) -> float:
    """Next-token accuracy over the target positions (every word and the final [EOS])."""
    targets = next_token_targets(ids, mask)
    keep = targets != -100
    predicted = lm_logits(model, ids, mask).argmax(dim=-1)
    return float((predicted[keep] == targets[keep]).double().mean())


def save_pair_member(model, directory: Path, words: tuple[str, ...] | None = None) -> Path:
    """``save_pretrained`` (safetensors) and the word-level tokenizer into ``directory``."""
    from transformers.utils import logging

    if directory.exists():
        shutil.rmtree(directory)
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # no "Writing model shards" bar per save
    try:
        model.save_pretrained(str(directory))
    finally:
        if shown:
            logging.enable_progress_bar()
    grammar.save_word_tokenizer(directory, words)
    return directory


# --- kddiag's verdicts ----------------------------------------------------------------------------

def inspect_pair(ctx: Context, scenario: str, *, teacher: Path, student: Path, baseline: Path | None,
                 held: Path, transfer: Path, classes: Path, temperature: float, alpha: float,
                 family: str = FAMILY):
    """``kddiag.inspect`` on the saved folders and text files (``Context.inspect`` reads datasets and
    checkpoint settings, not text files and --temperature), its verdict recorded with the family."""
    import kddiag
    from kddiag.options import InspectOptions

    options = InspectOptions(temperature=temperature, alpha=alpha, classes=str(classes))
    report = kddiag.inspect(str(teacher), str(student), data=str(held), transfer_data=str(transfer),
                            baseline=None if baseline is None else str(baseline), options=options)
    return ctx.record(scenario, SCENARIOS[scenario], report, family=family)


# --- one seed ---------------------------------------------------------------------------------------

def run_seed(ctx: Context) -> Rows:
    require_extra("token-lm", missing_extra())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small train 5-25x faster on one thread, above all beside other jobs
    try:
        return _run_seed(ctx)
    finally:
        torch.set_num_threads(threads)


def _run_seed(ctx: Context) -> Rows:
    texts = draw_texts(ctx.seed, quick=ctx.quick)
    root = ctx.out_dir / "checkpoints" / ctx.study / f"seed{ctx.seed}"
    vocab = {token: i for i, token in enumerate(grammar.SPECIALS + grammar.vocabulary())}
    files = {"held": write_text(root / "held.txt", texts.held),
             "transfer": write_text(root / "transfer.txt", texts.transfer),
             "classes": grammar.write_classes(root / "classes.json", vocab)}
    held, transfer = encode(vocab, texts.held), encode(vocab, texts.transfer)

    def fit(shape: Model, data, recipe: LMRecipe, *, teacher: bool = False, **kd):
        model = new_gpt(shape, len(vocab), seed=ctx.seed if teacher else ctx.seed + 100)  # students: one init
        return train_lm(model, *data, recipe=ctx_recipe(ctx, recipe), seed=ctx.seed, **kd)

    def save(model, name: str, words=None) -> Path:
        return save_pair_member(model, root / name, words)

    def accuracy(model) -> float:
        return token_accuracy(model, *held)

    def inspect(scenario: str, student: Path, *, teacher: Path, baseline: Path | None, temperature: float):
        inspect_pair(ctx, scenario, teacher=teacher, student=student, baseline=baseline, held=files["held"],
                     transfer=files["transfer"], classes=files["classes"], temperature=temperature, alpha=ALPHA)

    def follow_advice(scenario: str, teacher_logits: torch.Tensor, *, shape: Model = STUDENT,
                      temperature: float) -> None:
        """Retrain the scenario's student as kddiag's top finding advises (when it names a setting)."""
        ctx.follow_advice(scenario, rows[scenario]["KD student accuracy"],
                          lambda t, a: accuracy(fit(shape, transfer, STUDENT_RECIPE, teacher_logits=teacher_logits,
                                                    temperature=t, alpha=a)),
                          temperature=temperature, alpha=ALPHA)

    rows: Rows = {"Bayes-optimal (held-out)": {"teacher accuracy": grammar.bayes_accuracy(texts.held)}}
    # healthy: a teacher stopped early on more text (the transfer set and the extra text), τ = 2
    teacher = fit(TEACHER, encode(vocab, texts.transfer + texts.extra), EARLY_TEACHER, teacher=True)
    paths = {"teacher": save(teacher, "teacher"), "baseline": None}
    baseline = fit(STUDENT, transfer, STUDENT_RECIPE)
    paths["baseline"] = save(baseline, "baseline")
    kd = dict(temperature=TEMPERATURE, alpha=ALPHA, teacher_logits=lm_logits(teacher, *transfer))
    student = fit(STUDENT, transfer, STUDENT_RECIPE, **kd)
    rows["healthy"] = outcome_row(accuracy(teacher), accuracy(baseline), accuracy(student))
    inspect("healthy", save(student, "healthy-student"), teacher=paths["teacher"], baseline=paths["baseline"],
            temperature=TEMPERATURE)
    follow_advice("healthy", kd["teacher_logits"], temperature=TEMPERATURE)

    # memorizing teacher: trained long on the transfer set alone; its student at τ = 1
    memorizer = fit(TEACHER, transfer, MEMORIZING_TEACHER, teacher=True)
    memorizer_student = fit(STUDENT, transfer, STUDENT_RECIPE, teacher_logits=lm_logits(memorizer, *transfer),
                            temperature=1.0, alpha=ALPHA)
    rows["memorizing-teacher"] = {**outcome_row(accuracy(memorizer), accuracy(baseline),
                                                accuracy(memorizer_student)),
                                  "teacher accuracy on the transfer text": token_accuracy(memorizer, *transfer),
                                  "one-hot ceiling (transfer)": grammar.unique_continuation_share(texts.transfer)}
    inspect("memorizing-teacher", save(memorizer_student, "memorizing-teacher-student"),
            teacher=save(memorizer, "memorizing-teacher"), baseline=paths["baseline"], temperature=1.0)
    follow_advice("memorizing-teacher", lm_logits(memorizer, *transfer), temperature=1.0)

    # τ far too high: the healthy teacher and baseline
    hot = fit(STUDENT, transfer, STUDENT_RECIPE, **{**kd, "temperature": HIGH_TEMPERATURE})
    rows["tau-75"] = outcome_row(accuracy(teacher), accuracy(baseline), accuracy(hot))
    inspect("tau-75", save(hot, "tau-75-student"), teacher=paths["teacher"], baseline=paths["baseline"],
            temperature=HIGH_TEMPERATURE)
    follow_advice("tau-75", kd["teacher_logits"], temperature=HIGH_TEMPERATURE)

    # capacity gap: a width-4 student, against a width-4 CE baseline
    tiny_baseline = fit(TINY_STUDENT, transfer, STUDENT_RECIPE)
    tiny = fit(TINY_STUDENT, transfer, STUDENT_RECIPE, **kd)
    rows["tiny-student"] = outcome_row(accuracy(teacher), accuracy(tiny_baseline), accuracy(tiny))
    inspect("tiny-student", save(tiny, "tiny-student"), teacher=paths["teacher"],
            baseline=save(tiny_baseline, "tiny-baseline"), temperature=TEMPERATURE)
    follow_advice("tiny-student", kd["teacher_logits"], shape=TINY_STUDENT, temperature=TEMPERATURE)

    # another tokenizer: the same words in another id order, and 3 extra words; a CE student trained in it
    words = permuted_words(ctx.seed)
    own = {token: i for i, token in enumerate(grammar.SPECIALS + words)}
    foreign = new_gpt(STUDENT, len(own), seed=ctx.seed + 100)
    train_lm(foreign, *encode(own, texts.transfer), recipe=ctx_recipe(ctx, STUDENT_RECIPE), seed=ctx.seed)
    rows["permuted-vocabulary"] = {"teacher accuracy": accuracy(teacher),
                                   "KD student accuracy": token_accuracy(foreign, *encode(own, texts.held))}
    inspect("permuted-vocabulary", save(foreign, "permuted-vocabulary-student", words), teacher=paths["teacher"],
            baseline=None, temperature=TEMPERATURE)
    rows["classifier-healthy"] = classifier_pair(ctx, texts, vocab, root)
    return rows


# --- the sequence-classifier pair -------------------------------------------------------------------

def subject_examples(sentences: list[str]) -> tuple[list[str], list[int]]:
    """Each sentence with its subject noun replaced by [UNK], and the class of that noun in
    :data:`SUBJECT_CLASSES` (its group and number)."""
    groups = grammar.word_groups()
    plural = {pair[1] for group in ("animal", "person") for pair in grammar.NOUNS[group]}
    texts, labels = [], []
    for sentence in sentences:
        words = sentence.split()
        k = next(i for i, word in enumerate(words) if groups.get(word, "").startswith("noun:"))
        labels.append(2 * (groups[words[k]] == "noun:person") + (words[k] in plural))
        texts.append(" ".join(words[:k] + ["[UNK]"] + words[k + 1:]))
    return texts, labels


def write_jsonl(path: Path, texts: list[str], labels: list[int]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)),
                    encoding="utf-8")
    return path


def new_bert(shape: Model, vocab_size: int, *, seed: int):
    """A freshly initialized ``BertForSequenceClassification`` over :data:`SUBJECT_CLASSES` (no dropout), seeded."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=shape.n_embd, num_hidden_layers=shape.n_layer,
                        num_attention_heads=max(1, shape.n_embd // 16), intermediate_size=4 * shape.n_embd,
                        max_position_embeddings=grammar.MAX_LENGTH, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=grammar.PAD,
                        id2label=dict(enumerate(SUBJECT_CLASSES)))
    return BertForSequenceClassification(config)


def train_classifier(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, *, recipe: LMRecipe,
                     seed: int, teacher_logits: torch.Tensor | None = None, temperature: float = 1.0,
                     alpha: float = 0.0):
    """Train ``model`` in place on whole sequences: (1 − α)·CE + α·τ²·KL(softmax(z/τ) ‖ softmax(s/τ)) per
    sequence, mini-batch Adam, gradients clipped to norm 1; α = 0: CE alone."""
    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=ids[batch], attention_mask=mask[batch]).logits
        rho = None if teacher_logits is None else torch.softmax(teacher_logits[batch] / temperature, dim=-1)
        return distillation_loss(logits, labels[batch], rho, temperature=temperature, alpha=alpha)

    return fit_minibatches(model, len(ids), batch_loss, epochs=recipe.epochs, batch_size=recipe.batch_size,
                           lr=recipe.lr, seed=seed, max_grad_norm=1.0)


def classifier_accuracy(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> float:
    return float((lm_logits(model, ids, mask).argmax(dim=-1) == labels).double().mean())


def classifier_pair(ctx: Context, texts: Texts, vocab: dict[str, int], root: Path) -> dict[str, float]:
    """Teacher, CE baseline and KD student classifying the masked subject; inspected from their folders and
    the ``.jsonl`` files; returns the scenario's row."""
    import json

    data = {name: subject_examples(sentences) for name, sentences in
            (("transfer", texts.transfer), ("teacher", texts.transfer + texts.extra), ("held", texts.held))}
    tensors = {name: (*encode(vocab, x), torch.tensor(y))
               for name, (x, y) in data.items()}
    files = {name: write_jsonl(root / f"classifier-{name}.jsonl", *data[name]) for name in ("transfer", "held")}
    classes = root / "classifier-classes.json"
    classes.write_text(json.dumps({"names": list(SUBJECT_CLASSES),
                                   "groups": [name.split()[0] for name in SUBJECT_CLASSES]}) + "\n")

    def fit(shape: Model, data, recipe: LMRecipe, *, seed: int, **kd):
        return train_classifier(new_bert(shape, len(vocab), seed=seed), *data, recipe=ctx_recipe(ctx, recipe),
                                seed=ctx.seed, **kd)

    teacher = fit(CLASSIFIER_TEACHER, tensors["teacher"], CLASSIFIER_TEACHER_RECIPE, seed=ctx.seed)
    baseline = fit(CLASSIFIER_STUDENT, tensors["transfer"], CLASSIFIER_STUDENT_RECIPE, seed=ctx.seed + 100)
    student = fit(CLASSIFIER_STUDENT, tensors["transfer"], CLASSIFIER_STUDENT_RECIPE, seed=ctx.seed + 100,
                  teacher_logits=lm_logits(teacher, *tensors["transfer"][:2]), temperature=TEMPERATURE, alpha=ALPHA)
    accuracy = {name: classifier_accuracy(model, *tensors["held"]) for name, model in
                (("teacher", teacher), ("baseline", baseline), ("student", student))}
    paths = {name: save_pair_member(model, root / f"classifier-{name}")
             for name, model in (("teacher", teacher), ("baseline", baseline), ("student", student))}
    inspect_pair(ctx, "classifier-healthy", teacher=paths["teacher"], student=paths["student"],
                 baseline=paths["baseline"], held=files["held"], transfer=files["transfer"], classes=classes,
                 temperature=TEMPERATURE, alpha=ALPHA, family=CLASSIFIER_FAMILY)
    return outcome_row(accuracy["teacher"], accuracy["baseline"], accuracy["student"])


EXTRA_WORDS = ("yes", "no", "maybe")


def permuted_words(seed: int) -> tuple[str, ...]:
    """The grammar's words in a seeded random order, then :data:`EXTRA_WORDS`: another tokenizer's vocabulary."""
    words = grammar.vocabulary()
    order = np.random.default_rng(seed).permutation(len(words))
    return tuple(words[k] for k in order) + EXTRA_WORDS


def ctx_recipe(ctx: Context, recipe: LMRecipe) -> LMRecipe:
    """The recipe, its epochs shortened in quick mode (a smoke test)."""
    from dataclasses import replace

    return replace(recipe, epochs=max(2, recipe.epochs // 4)) if ctx.quick else recipe


def missing_extra() -> str | None:
    """Why this study cannot run here (the transformers extra is not installed), else None."""
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return "needs transformers and tokenizers: pip install -e '.[transformers]' in the kddiag checkout"
    return None


# --- the claim checks -------------------------------------------------------------------------------

def checks(per_seed: list[Rows]) -> list[Check]:
    student, baseline, teacher = "KD student accuracy", "baseline (CE) accuracy", "teacher accuracy"
    return [
        compare("healthy: KD (τ = 2, α = 0.5) beats the CE student", per_seed,
                ("healthy", student), ("healthy", baseline), relation=">"),
        compare("memorizing teacher: it is more accurate on its transfer text than on held-out text", per_seed,
                ("memorizing-teacher", "teacher accuracy on the transfer text"), ("memorizing-teacher", teacher),
                relation=">"),
        compare("memorizing teacher: its student (τ = 1) distils worse than the early-stopped teacher's (τ = 2)",
                per_seed, ("memorizing-teacher", student), ("healthy", student), relation="<"),
        compare(f"τ = {HIGH_TEMPERATURE:g} distils worse than τ = {TEMPERATURE:g}", per_seed,
                ("tau-75", student), ("healthy", student), relation="<"),
        compare("tiny student (width 4): KD does not help it", per_seed,
                ("tiny-student", student), ("tiny-student", baseline), relation="<="),
        compare("sequence classifier: KD (τ = 2, α = 0.5) beats the CE student", per_seed,
                ("classifier-healthy", student), ("classifier-healthy", baseline), relation=">"),
    ]


def main(*, seeds=(0, 1, 2), quick: bool = False, out_dir=None) -> dict:
    """Run the study over ``seeds``; write its JSON, Markdown and HTML reports; return the result."""
    return run_study("token-lm", __doc__, run_seed=run_seed, checks=checks, seeds=seeds, quick=quick,
                     out_dir=out_dir)


if __name__ == "__main__":
    main()
