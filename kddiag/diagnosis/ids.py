"""The stable ids of the diagnosis's findings (report.json, --fail-on), in one place."""
HEALTHY = "healthy"
DATA_PIPELINE_SUSPECT = "data-pipeline-suspect"  # the teacher fails on the eval inputs: check them first
CLASS_ORDER_MISMATCH = "class-order-mismatch"
TEACHER_WEAK = "teacher-weak"
TEACHER_LABEL_SMOOTHED = "teacher-label-smoothed"
TEACHER_OVERCONFIDENT = "teacher-overconfident"
TEMPERATURE_MISMATCH = "temperature-mismatch"
TEACHER_WRONG_ON_TRANSFER = "teacher-wrong-on-transfer"
CAPACITY_GAP = "capacity-gap"
STUDENT_UNDERFIT = "student-underfit"  # the KD student fits the transfer labels worse than a baseline of its size
STRUCTURE_NOT_TRANSFERRED = "structure-not-transferred"
KD_NO_GAIN = "kd-no-gain"  # KD did not beat the baseline and no cause rule explains it
VOCABULARY_MISMATCH = "vocabulary-mismatch"  # teacher and student tokenizers differ: nothing per token is comparable
BETTER_SETTING = "better-setting"  # a remedy probe of this pair found a setting that beat the current one
SETTINGS_NOT_THE_LIMIT = "settings-not-the-limit"  # no setting the probes tried beat the current one
PROBES_TOO_SHORT = "probes-too-short"  # the probes' control was still learning: no setting can be ranked

FINDING_IDS = (HEALTHY, TEACHER_OVERCONFIDENT, TEACHER_LABEL_SMOOTHED, TEMPERATURE_MISMATCH, CAPACITY_GAP,
               TEACHER_WEAK, TEACHER_WRONG_ON_TRANSFER, CLASS_ORDER_MISMATCH, STRUCTURE_NOT_TRANSFERRED, KD_NO_GAIN,
               DATA_PIPELINE_SUSPECT, VOCABULARY_MISMATCH, STUDENT_UNDERFIT, BETTER_SETTING,
               SETTINGS_NOT_THE_LIMIT, PROBES_TOO_SHORT)

# The verdict of a diagnosis (Diagnosis.verdict)
PROBLEMS = "problems"  # at least one finding names a problem (kd-no-gain included)
KD_HELPED = "kd-helped"  # KD beat the baseline beyond the noise; what the rules still see is room to improve
GAIN_NOT_CHECKED = "gain-not-checked"  # no failure case found; no baseline, so whether KD helped is unknown
TEACHER_READY = "teacher-ready"  # a teacher-only check (no student) found no problem with the teacher
NO_VERDICT = "none"  # no rule could run
VERDICTS = (PROBLEMS, KD_HELPED, HEALTHY, GAIN_NOT_CHECKED, TEACHER_READY, NO_VERDICT)
