"""What each finding says: its title, explanation and advice, from the facts its rule decided on.

One ``word_*`` function per rule in :mod:`kddiag.diagnosis.rules`; each returns a :class:`Wording`.
Numbers come from the facts (measured values and the definitions the results carry), never re-derived.
"""
from __future__ import annotations

from dataclasses import dataclass

from kddiag.diagnosis import rules as r
from kddiag.diagnosis.reading import Context
from kddiag.diagnosis.thresholds import (DATA_BATCHNORM_MEAN_SHIFT_MIN, DATA_BATCHNORM_VARIANCE_RATIO_MIN,
                                         DATA_SHIFT_ACCURACY_DROP_MIN)
from kddiag.diagnosis.findings import Remedy

_MAX_LISTED_MOVES = 20


@dataclass(frozen=True)
class Wording:
    title: str
    explanation: str
    advice: str
    remedy: Remedy | None = None  # the settings change the advice names first


def points(difference: float) -> str:
    """An accuracy difference in percentage points, signed: '+3.0 points'."""
    return f"{100 * difference:+.1f} points"


def _guessed_temperature(context: Context) -> str:
    if not context.settings.temperature.guessed:
        return ""
    if context.teacher_only:
        return (f" τ = {context.temperature:g} was guessed, not given: pass the τ you plan to distil with "
                "(--temperature).")
    return (f" τ = {context.temperature:g} was guessed, not given: pass the value the student was "
            "distilled with (--temperature) before acting on this.")


def word_class_order(f: r.ClassOrderFacts, context: Context) -> Wording:
    if f.moves is None:
        mapping = f"the permutation itself was not reported ({f.permutation.unavailable})"
    else:
        listed = ", ".join(f"student {k} → teacher {t}" for k, t in f.moves[:_MAX_LISTED_MOVES])
        extra = len(f.moves) - _MAX_LISTED_MOVES
        mapping = "the relabelling that restores agreement is " + listed + (f", … ({extra} more)" if extra > 0 else "")
    return Wording(
        "The student's classes are a permutation of the teacher's",
        f"The student agrees with the teacher's top class on {f.agreement.value:.1%} of the "
        f"{f.agreement.dataset} set, but on {f.permuted.value:.1%} once its classes are relabelled: its "
        "outputs are in a different class order, not wrong. Every class-by-class comparison of teacher and "
        "student (agreement, KL, class structure) is meaningless until the order is fixed, so capacity-gap "
        "and structure-not-transferred are not checked.",
        f"Fix the class-index mapping between teacher and student (label maps of the data loaders, order "
        f"of the output heads): {mapping}. Then run kddiag again.")


def _stored_normalization(infos) -> str:
    """What the inputs' statistics say against the normalization the teacher stores."""
    fit = infos[0].teacher_normalization
    seen = "; ".join(f"the {i.role} set {i.teacher_normalization.variance_ratio:.3g}× that variance, mean "
                     f"{i.teacher_normalization.mean_shift:.2g} off" for i in infos)
    said = (f"The teacher stores the normalization it was trained with (mean {_values(fit.mean)}, std "
            f"{_values(fit.std)}): inputs so normalized have per-channel mean about 0 and variance about 1, "
            f"but these do not ({seen}).")
    raw = [i for i in infos if _looks_raw(i.teacher_normalization)]
    if raw:
        said += (f" They look like inputs before that normalization ({', '.join(i.role for i in raw)}: "
                 f"{raw[0].teacher_normalization.raw_variance_ratio:.3g}× its std², mean "
                 f"{raw[0].teacher_normalization.raw_mean_shift:.2g} std off): it was left out.")
    return said


def _values(values) -> str:
    return ", ".join(f"{v:.4g}" for v in values)


def word_data_pipeline(f: r.DataPipelineFacts, context: Context) -> Wording:
    t, tt = f.teacher_eval, f.teacher_transfer
    sentences, it = [], "It" if f.near_chance else "The teacher"
    accuracy_lost = f.near_chance or f.works_on_transfer or (tt.ok and t.value <= tt.value - DATA_SHIFT_ACCURACY_DROP_MIN)
    if f.batchnorm:
        layer = f.batchnorm[0].teacher_batchnorm.layer
        seen = "; ".join(f"the {i.role} set {i.teacher_batchnorm.variance_ratio:.3g}× the variance, mean "
                         f"{i.teacher_batchnorm.mean_shift:.2g} running standard deviations off"
                         for i in f.batchnorm)
        sentences.append(f"The teacher's first BatchNorm layer ('{layer}') sees activations far from the running "
                         f"statistics it kept in training ({seen}). Only linear layers come before it, so the "
                         "inputs are on another scale or offset than in the teacher's training: a missing "
                         "normalization of images in [0, 1] gives about 0.04-0.12× the variance, one applied "
                         "twice 8-25×, raw 0-255 pixels thousands; data of another kind moves it too, usually less.")
    if f.normalization:
        sentences.append(_stored_normalization(f.normalization))
    if f.near_chance:
        sentences.append(f"The teacher is right on only {t.value:.1%} of the eval set, near chance "
                         f"({context.chance:.1%} for {context.n_classes} classes).")
    if f.works_on_transfer:
        keeps = "" if f.student is None else (f", while its student keeps most of its accuracy "
                                              f"({f.student[0].value:.1%} → {f.student[1].value:.1%})")
        sentences.append(f"{it} is right on {tt.value:.1%} of the transfer set but only {t.value:.1%} of the eval "
                         f"set{keeps}: it works where it was trained and fails here.")
    elif tt.ok:
        sentences.append(f"{it} is right on {t.value:.1%} of the eval set against {tt.value:.1%} of the transfer "
                         "set.")
    else:
        sentences.append(f"{it} is right on {t.value:.1%} of the eval set (no transfer set to compare with).")
    title = ("The teacher fails on the inputs it was given: check the data pipeline first" if accuracy_lost else
             "The inputs are not prepared as in the teacher's training: check the data pipeline first")
    if f.fitted is not None:
        sentences.append(f"Its outputs are far flatter on the eval set than on the transfer set (T* "
                         f"{f.fitted[0].value:.2f} against {f.fitted[1].value:.2f}), as a trained model's are on "
                         "inputs unlike those it learned from.")
    if f.inputs is not None:
        described = "; ".join(f"{i.role} values {i.input_range[0]:.3g} to {i.input_range[1]:.3g}, mean "
                              f"{i.input_mean:.3g}" for i in f.inputs)
        sentences.append(f"The two sets' inputs are on different scales ({described}).")
    return Wording(
        title,
        " ".join(sentences) + " Inputs prepared differently from the teacher's training (normalization, image "
        "size, channel order, class order, tokenizer), or a data set other than the one intended, are the usual "
        "cause; every other finding compares the models on these inputs and is only as good as they are.",
        _normalize_first(f.normalization) + "Check that the data is prepared the way the teacher was trained (the "
        "inputs' range and mean are in report.json under inputs.files; give --normalize/--resize/--layout for "
        "images), that the labels use the teacher's class order, and that --data is the intended set. If the "
        "inputs are right, the teacher itself is weak on this data: see teacher-weak.")


def _normalize_first(infos) -> str:
    """The normalization to apply, when the inputs look like they were given without the stored one."""
    raw = [i.teacher_normalization for i in infos if _looks_raw(i.teacher_normalization)]
    if not raw:
        return ""
    fit = raw[0]
    values = ",".join(f"{v:g}" for v in (*fit.mean, *fit.std))
    return (f"Normalize the inputs as the teacher stores, x ← (x − mean)/std (for images: --normalize {values}), "
            "and run kddiag again. ")


def _looks_raw(fit) -> bool:
    """The inputs' statistics are within the rule's bounds of the raw ones (mean ``mean``, variance ``std²``)."""
    return (max(fit.raw_variance_ratio, 1 / fit.raw_variance_ratio) < DATA_BATCHNORM_VARIANCE_RATIO_MIN
            and fit.raw_mean_shift < DATA_BATCHNORM_MEAN_SHIFT_MIN)


def word_teacher_weak(f: r.TeacherWeakFacts, context: Context) -> Wording:
    t = f.teacher
    sentences = []
    if f.compared is not None and f.against_baseline:
        sentences.append(f"The teacher ({t.value:.1%} on the {t.dataset} set) is not clearly more accurate "
                         f"than the baseline ({f.compared.value:.1%}).")
    elif f.compared is not None:
        sentences.append(f"The teacher ({t.value:.1%} on the {t.dataset} set) is less accurate than its own "
                         f"student ({f.compared.value:.1%}).")
    if f.near_chance:
        sentences.append(f"The teacher is right on only {t.value:.1%} of the {t.dataset} set, near chance "
                         f"({context.chance:.1%} for {context.n_classes} classes).")
    matched = "" if not f.smoothing.ok else (
        f" of strength ε ≈ {f.smoothing.value:.2f}, what this teacher's targets amount to at "
        f"τ = {context.temperature:g} (universe.equivalent_smoothing)")
    # near chance with nothing pointing at the inputs (else data-pipeline-suspect): wrong inputs remain possible
    inputs = ("" if not f.near_chance else
              " If this teacher is known to do better, first check that its inputs are prepared as in its "
              "training (normalization, size, channel and class order): wrong inputs on every set look the same.")
    return Wording(
        "The teacher is too weak to teach this student",
        " ".join(sentences) + " Its soft targets then hold little domain or instance knowledge the student "
        "lacks; what KD still gives is the label-smoothing effect of level 1 (Yuan et al. 2020).",
        f"Use a teacher clearly more accurate than the student trained alone. Without one, train the "
        f"student with plain label smoothing{matched}: it gives the same level-1 benefit without a teacher."
        + inputs)


def word_label_smoothed(f: r.LabelSmoothedFacts, context: Context) -> Wording:
    # No setting undoes what LS erased. Chandrasegaran et al. 2022 find lower τ better for LS teachers, but
    # retrained in the case studies, τ = 4 → 1 made 11 of 12 students worse (−1.4 pt on average): no remedy.
    advice = ("Distil from a teacher trained without label smoothing (or with less of it): no distillation "
              "setting restores the class relationships it erased. A lower τ is no cure either: in kddiag's "
              "case studies, moving such teachers from τ = 4 to τ = 1 made their students worse in 11 of 12 runs; "
              "only from very high τ (16) did lowering it help.")
    return Wording(
        "The teacher looks label-smoothed: its class relationships are erased",
        f"The teacher is accurate ({f.accuracy.value:.1%}), yet its wrong-class logits are nearly equal "
        f"(spread {f.spread.value:.2f}) and its wrong-class probabilities nearly flat even at τ = 1 (content "
        f"{f.content.value:.2f}), as label smoothing makes them (Müller et al. 2019). The class relationships "
        "(domain knowledge, level 2) were erased in the teacher, so the student can get smoothing (level 1) "
        "but no class structure from it.",
        advice)


def word_overconfident(f: r.OverconfidentFacts, context: Context) -> Wording:
    sharp, temperature = f.sharp, context.temperature
    mass = "" if not sharp.smoothing.ok else f", mean wrong-class mass {sharp.smoothing.value:.3f}"
    how = "nearly one-hot" if sharp.one_hot else "almost equally confident on every example"
    sentences = [
        f"At τ = {temperature:g} the teacher's targets on the {sharp.saturation.dataset} set are {how} "
        f"({sharp.saturation.value:.0%} of examples with p_y > {f.saturation_cut:g}{mass}): the student gets "
        "little smoothing (level 1), little wrong-class mass to learn class relations from (level 2), and "
        "nearly the same gradient weight on every example (level 3)."]
    if f.memorized is not None:
        sentences.append(f"On held-out data the same teacher is softer by {f.memorized.value:.3f} of ε_eff: it "
                         "memorized the transfer set, so its confidence there says nothing about difficulty.")
    if sharp.fitted is not None:
        sentences.append(f"It is over-confident on held-out data too (T* = {sharp.fitted.value:.2f}).")
    if f.flat is not None:
        sentences.append(f"Its rescaling weights barely vary (CV {f.flat.value:.3f}): it treats easy and hard "
                         "examples alike.")
    band = None if f.whatif is None else f.whatif.informative_range
    if band is not None and not f.higher_helps:
        sentences.append(f"No τ above {temperature:g} makes its targets informative.")
    elif f.whatif is not None and band is None:
        sentences.append(f"No τ on the grid (up to {max(f.whatif.temperatures):g}) makes its targets informative.")
    advice, remedy = [], None
    if f.higher_helps:
        caveat = ", but does not undo the memorization" if f.memorized is not None else ""
        remedy = Remedy(temperature=r.nearest_informative(f.whatif, temperature, above=True))
        advice.append(f"Raising τ to about {remedy.temperature:g} (informative range "
                      f"{band[0]:g}–{band[1]:g} on this set) softens the targets{caveat}.")
    if sharp.fitted is not None:
        calibrated = float(f"{temperature * sharp.fitted.value:.3g}")
        remedy = remedy or Remedy(temperature=calibrated)
        advice.append(f"Dividing the teacher's logits by T* = {sharp.fitted.value:.2f} (calibrating it) is the "
                      f"same as distilling at τ ≈ {calibrated:g}.")
    advice.append("Use an early-stopped or less over-fit teacher (Cho & Hariharan 2019), stronger augmentation "
                  "with the same views for teacher and student, or cross-fitted teacher predictions (each "
                  "transfer example scored by a teacher that did not train on it).")
    return Wording(f"The teacher is over-confident on the {sharp.saturation.dataset} set", " ".join(sentences),
                   " ".join(advice) + _guessed_temperature(context), remedy)


def word_temperature(f: r.TemperatureFacts, context: Context) -> Wording:
    temperature, dataset = context.temperature, f.smoothing.dataset
    band, (lo, hi) = f.whatif.band, f.whatif.informative_range
    if f.direction == "high":
        uniform = (context.n_classes - 1) / context.n_classes
        detail = "" if f.flattened is None else (
            f", and its wrong-class mass is flat there (content {f.flattened[0].value:.3f}) although at τ = 1 it "
            f"is structured ({f.flattened[1].value:.2f})")
        explanation = (
            f"At τ = {temperature:g} the teacher's targets on the {dataset} set are close to uniform (mean "
            f"wrong-class mass {f.smoothing.value:.2f}; uniform is {uniform:.2f}){detail}. The temperature, not "
            "the teacher, erases the class relations (level 2) and the per-example confidence (level 3), "
            "leaving little beyond label smoothing (level 1).")
    else:
        saturated = "" if not f.saturation.ok else f"{f.saturation.value:.0%} saturated, "
        explanation = (
            f"At τ = {temperature:g} the teacher's targets on the {dataset} set are nearly one-hot "
            f"({saturated}mean wrong-class mass {f.smoothing.value:.3f}): the student sees little beyond the hard "
            "label — no smoothing, no class relations, flat gradient weights. At τ = 1 the same teacher's "
            "targets are not saturated and it is not over-confident on held-out data: the τ below 1 sharpened "
            "them, so the setting is at fault, not the teacher.")
    nearest = r.nearest_informative(f.whatif, temperature)
    return Wording(
        f"The distillation temperature τ = {temperature:g} is too {f.direction} for this teacher",
        explanation,
        f"Distil at τ between {lo:g} and {hi:g}, where this teacher's {dataset}-set targets are informative "
        f"({band.min_smoothing:g} ≤ mean wrong-class mass ≤ {band.max_smoothing:.2f}, at most "
        f"{band.max_saturation:.0%} saturated); on the τ grid, {nearest:g} is the closest to the current "
        f"τ = {temperature:g}." + _guessed_temperature(context), Remedy(temperature=nearest))


def word_wrong_on_transfer(f: r.WrongOnTransferFacts, context: Context) -> Wording:
    lower = round(context.alpha / 2, 3)  # the first step: half the weight on the teacher
    sentences = [
        f"The teacher's top class differs from the label on {f.error.value:.1%} of the transfer set. With "
        f"α = {context.alpha:g} those examples pull the student toward the teacher's class and away from the "
        "label, and their rescaling weights (level 3) reflect the disagreement rather than the example's "
        "difficulty."]
    if f.held_out is not None:
        sentences.append(f"The same teacher is right on {f.held_out.value:.1%} of held-out data, more than on "
                         "the data it was distilled on: noisy transfer labels or a pipeline mismatch are the "
                         "likely cause.")
        advice = ("Check the data pipeline first: the transfer set's labels and preprocessing against the "
                  "teacher's (label map, normalization, augmentation); then filter or relabel the examples the "
                  "teacher contradicts most confidently (the report's hardest examples). Where the teacher, not "
                  f"the label, is wrong, lower α (now {context.alpha:g}; {lower:g} as a first step) so the labels "
                  "weigh more.")
    else:
        advice = (f"Lower α (now {context.alpha:g}; {lower:g} as a first step) so the labels weigh more where "
                  "the teacher errs; filter or "
                  "relabel the examples where teacher and label disagree with high teacher confidence (the "
                  "report's hardest examples); and check the data pipeline (label map, preprocessing) for a "
                  "mismatch between the teacher and the transfer set.")
    return Wording("The teacher contradicts the labels on many transfer examples", " ".join(sentences), advice,
                   Remedy(alpha=lower))


def word_capacity_gap(f: r.CapacityFacts, context: Context) -> Wording:
    extra = "" if f.kl is None else f" Their mean KL at τ = {context.temperature:g} is {f.kl.value:.3f} nats."
    extra += "" if f.kd_gain is None else f" KD did not beat the baseline ({points(f.kd_gain.value)})."
    where = " where the teacher is right" if f.where_teacher_correct else ""
    gap = f.teacher.value - f.student.value
    return Wording(
        "The student cannot follow the teacher (capacity gap)",
        f"The student agrees with the teacher's top class on only {f.agreement.value:.1%} of the "
        f"{f.agreement.dataset} set{where}, although the teacher is {100 * gap:.1f} points more accurate "
        f"({f.teacher.value:.1%} vs {f.student.value:.1%}).{extra} A student that cannot follow the teacher even "
        "on the data it was distilled on takes in neither its class structure (level 2) nor its function: "
        "the gap is too large (Cho & Hariharan 2019; Mirzadeh et al. 2020).",
        "Distil from a smaller teacher, or through an intermediate-size teacher assistant (Mirzadeh et al. "
        "2020); an early-stopped checkpoint of this teacher is easier to follow (Cho & Hariharan 2019). "
        "Distil longer if the student's agreement is still rising.")


def word_student_underfit(f: r.UnderfitFacts, context: Context) -> Wording:
    u, lower = f.underfit, round(context.alpha / 2, 3)  # the first step: half the weight on the teacher
    where = " where the teacher is right" if f.where_teacher_correct else ""
    follows = "" if not f.agreement.ok else (
        f" It agrees with the teacher on {f.agreement.value:.1%} of the transfer set{where}.")
    return Wording(
        "The KD student underfits: it fits the transfer labels worse than its baseline",
        f"On the transfer set the KD student is right on {u.student.value:.1%} of the labels, its baseline on "
        f"{u.baseline.value:.1%} ({points(u.shortfall.value)}) and the teacher on {u.teacher.value:.1%}.{follows} "
        "A student of the same size fits these labels about as well as the teacher, and following the teacher "
        "would not lose them: the KD student did not fit its training objective, for too little training or "
        "settings that make the objective slow to fit, not for want of capacity.",
        f"Train the KD student longer, or weigh the labels more: a lower α (now {context.alpha:g}; {lower:g} as "
        f"a first step) or a lower τ (now {context.temperature:g}). Which one helps depends on the pair: compare "
        "each with the current setting for the same training budget.",
        Remedy(alpha=lower) if lower < context.alpha else None)


def word_structure(f: r.StructureFacts, context: Context) -> Wording:
    described = []
    for score, baseline, on_outputs in f.checks:
        kind = "output" if on_outputs else "logit-layer weight"
        text = f"{kind} similarity Spearman {score.value:.2f}"
        described.append(text if baseline is None else f"{text}, baseline {baseline.value:.2f}")
    compared = ("does not match it better than a student trained without KD does"
                if all(baseline is not None for _, baseline, _ in f.checks) else "matches it poorly")
    higher_tau = ("a higher τ" if f.band is None
                  else f"a τ toward the top of the informative range {f.band[0]:g}–{f.band[1]:g}")
    return Wording(
        "The teacher's class structure did not reach the student",
        f"The teacher's wrong-class mass is structured (content {f.content.value:.2f} at τ = 1), but the "
        f"student's class-similarity matrix {compared} ({'; '.join(described)}). The class relationships "
        "(domain knowledge, level 2) were there to learn but did not reach the student.",
        f"Give the soft targets more weight or more time: a higher α (now {context.alpha:g}), {higher_tau}, "
        "or longer distillation.")


def interval(gain) -> str:
    """'−2.2 points (95 % interval −3.5 to −0.9, eval set)'."""
    bounds = "" if gain.ci is None else f"95 % interval {100 * gain.ci[0]:+.1f} to {100 * gain.ci[1]:+.1f}, "
    return f"{points(gain.value)} ({bounds}{gain.dataset} set)"


def gain_sentence(gain) -> str:
    """What KD did for the student against its baseline, for every finding; '' without a baseline."""
    return f"Measured outcome: the KD student is {interval(gain)} against the baseline." if gain.ok else ""


def gain_points(gain) -> str:
    """An accuracy gain in points with its 95 % interval, compact: '+1.6 pt [0.4, 2.8]'."""
    bounds = "" if gain.ci is None else f" [{100 * gain.ci[0]:.1f}, {100 * gain.ci[1]:.1f}]"
    return f"{100 * gain.value:+.1f} pt{bounds}"


def kd_helped_title(gain) -> str:
    """The headline of a 'kd-helped' verdict: 'KD helped: +1.6 pt [0.4, 2.8] over the baseline'."""
    return f"KD helped: {gain_points(gain)} over the baseline"


def word_kd_no_gain(gain, significant: bool, normal, ran: list[str], band, context: Context) -> Wording:
    how = "significantly worse than" if significant else "no better than"
    checked = "; ".join(f"{e.metric.split('.', 1)[-1]} {e.value:.3g} ({e.dataset})" for e in normal[1:])
    tau = ("a τ inside the informative range" if band is None
           else f"τ across the informative range {band[0]:g}–{band[1]:g} (now {context.temperature:g})")
    return Wording(
        f"KD did not beat the baseline ({points(gain.value)}), and no known failure case explains it",
        f"The KD student is {how} the student trained without KD: {interval(gain)}. None of the known "
        f"failure cases shows: {', '.join(ran)} were checked and found normal ({checked}).",
        "First make sure the comparison is fair: the baseline and the KD student trained with the same "
        "recipe, epochs and augmentation, and the eval set held out from both. Then vary what KD adds: a "
        f"lower α (now {context.alpha:g}) weighs the labels more; {tau}; longer distillation. What could "
        "not be checked is listed under not checked: give the missing inputs (transfer set, baseline) to "
        "check it.")


def word_vocabulary_mismatch(comparison) -> Wording:
    return Wording(
        "Teacher and student use different vocabularies",
        f"Their tokenizers differ: {comparison.describe()}. Token-level distillation matches the teacher's and "
        "the student's next-token distributions id by id; with different vocabularies the same id is a "
        "different token, so the soft targets the student was trained on, and every per-token measurement, "
        "pair unrelated tokens. Nothing was measured.",
        "Distil into a student that shares the teacher's tokenizer (save the teacher's tokenizer with the "
        "student, and size the student's embedding and output layer to it), or use a distillation that maps "
        "between vocabularies (e.g. universal logit distillation, which compares sorted probabilities) and "
        "check the student with that mapping. Then run kddiag again.")


def word_teacher_ready(ran: int, not_run: int, band, context: Context) -> Wording:
    skipped = f"; {not_run} need a student or could not run (see not checked)" if not_run else ""
    if band is None:
        tau = f"at the planned τ = {context.temperature:g}"
    else:
        inside = band[0] <= context.temperature <= band[1]
        tau = (f"at a τ inside the range where its targets are informative, {band[0]:g}–{band[1]:g} (the "
               f"planned τ = {context.temperature:g} is {'inside' if inside else 'outside'} it)")
    return Wording(
        "No known problem with this teacher found (teacher-only check, no student given)",
        f"None of the {ran} rules that apply to a teacher alone found a failure case{skipped}; the evidence "
        "lists the main numbers they checked." + _guessed_temperature(context),
        f"Distil {tau}. Then inspect the student with a baseline (a student of the same kind trained "
        "without KD) to check that KD helped.")


def word_healthy(gain, ran: int, not_run: int) -> Wording:
    skipped = f"; {not_run} could not run (see not checked)" if not_run else ""
    if gain.ok:
        return Wording(
            "KD beats the baseline and no failure case was found",
            f"The KD student is {interval(gain)} against the student trained without KD, and none of the "
            f"{ran} rules that could run found a failure case{skipped}; the evidence lists the main numbers "
            "they checked.",
            "Nothing to fix.")
    return Wording(
        "No known failure found; whether KD helped was not checked (no baseline)",
        f"None of the {ran} rules that could run found a failure case{skipped}; the evidence lists the main "
        "numbers they checked. Without a baseline (a student of the same kind trained without KD), kddiag "
        "cannot tell whether distillation helped at all.",
        "Give a baseline (--baseline) to check that KD beats training on the labels alone.")
