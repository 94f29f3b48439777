"""The stable ids of the diagnosis's findings (report.json, --fail-on), in one place."""
HEALTHY = "healthy"
CLASS_ORDER_MISMATCH = "class-order-mismatch"
TEACHER_WEAK = "teacher-weak"
TEACHER_LABEL_SMOOTHED = "teacher-label-smoothed"
TEACHER_OVERCONFIDENT = "teacher-overconfident"
TEMPERATURE_MISMATCH = "temperature-mismatch"
TEACHER_WRONG_ON_TRANSFER = "teacher-wrong-on-transfer"
CAPACITY_GAP = "capacity-gap"
STRUCTURE_NOT_TRANSFERRED = "structure-not-transferred"

FINDING_IDS = (HEALTHY, TEACHER_OVERCONFIDENT, TEACHER_LABEL_SMOOTHED, TEMPERATURE_MISMATCH, CAPACITY_GAP,
               TEACHER_WEAK, TEACHER_WRONG_ON_TRANSFER, CLASS_ORDER_MISMATCH, STRUCTURE_NOT_TRANSFERRED)
