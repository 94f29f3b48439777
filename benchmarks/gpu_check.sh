#!/usr/bin/env bash
# The device path's checks on one GPU, prepared for a session that is lent one (not yet run: none was).
# Sized for one command of under 10 minutes. From the repository root, on a machine with CUDA and kddiag's
# dependencies (nothing is installed: the tree is put on PYTHONPATH). Each step's log goes to
# ${OUT:-.}/gpu-check-STEP.log; a failing or overrunning step does not stop the next.
#   1. the device tests: the torch pass on CUDA tensors against the numpy pass, the same bits whatever
#      the batches, collection keeping the logits on the GPU (tests/metrics/test_fused.py and
#      tests/test_device_statistics.py, their 'cuda' cases);
#   2. bench_stats on the GPU: kddiag's torch pass against the fused floor there (5 rounds kept);
#   3. bench_tokens on the GPU at 32,000 and 128,000 classes (targets ≤ 1.10× and ≤ 1.25× the bare forward
#      passes), with a GPT-2 teacher 8 × 1024 and student 2 × 512.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-.}"
step() {  # step NAME SECONDS COMMAND...
    local name=$1 seconds=$2
    shift 2
    echo "== $name: $*"
    timeout "$seconds" "$@" 2>&1 | tee "$out/gpu-check-$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/gpu-check-device.log"
step tests 150 python3 -m pytest -q -p no:cacheprovider -k cuda tests/metrics/test_fused.py tests/test_device_statistics.py
step stats 120 python3 benchmarks/bench_stats.py --device cuda --float32-input --rounds 5
for vocab in 32000 128000; do
    step "tokens-$vocab" 130 python3 benchmarks/bench_tokens.py --device cuda --vocab "$vocab" --width 1024 \
        --teacher-layers 8 --student-layers 2 --positions 100000 --rounds 2
done
