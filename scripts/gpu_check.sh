#!/usr/bin/env bash
# The `--train-device cuda` path end to end, in under 5 minutes, on a machine with a CUDA GPU:
#   (a) the default job (ResNet-20 on Fashion-MNIST, jetson-orin) with reduced work, on the GPU;
#   (b) a 2-process torchrun fine-tune on the GPU (DDP; with one GPU both ranks share it);
#   (c) the GPU-only tests (pytest -m gpu).
# One line per check (PASS/FAIL, seconds); exit status 1 if any failed, logs kept then. Where torch
# sees no CUDA GPU it prints one line saying so and exits 0.
#
#   scripts/gpu_check.sh            # from anywhere; uses the repository's .venv
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$PWD
PY=$REPO/.venv/bin/python

if [ "$("$PY" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null)" != "True" ]; then
    echo "gpu_check: skipped, no CUDA GPU visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__ + ",", "CUDA build:", torch.version.cuda or "none")' 2>/dev/null || echo "torch not importable from $PY"))"
    exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
failed=0

# What a finished run's report.json must say: trained on CUDA, and (WORLD > 1) fine-tuned by WORLD
# processes. Prints the problems, exits 1 when there are any.
cat >"$tmp/verify.py" <<'EOF'
import json, sys
run, world = sys.argv[1], int(sys.argv[2])
report = json.load(open(f"{run}/report.json"))
device, finetune = str(report.get("train_device")), report.get("finetune") or {}
problems = [] if device.startswith("cuda") else [f"train_device is {device}"]
if world > 1 and not (finetune.get("world_size") == world and (finetune.get("steps") or 0) > 0):
    problems.append(f"fine-tuned by {finetune.get('world_size')} process(es) in {finetune.get('steps')} steps, "
                    f"not by {world}")
print("; ".join(problems))
sys.exit(1 if problems else 0)
EOF

# check NAME LIMIT_S VERIFY COMMAND...: COMMAND under a time limit (output in $tmp/NAME.log), then
# the shell snippet VERIFY when it succeeded; one PASS/FAIL line with the wall time.
check() {
    local name=$1 limit=$2 verify=$3 start rc why="" secs
    shift 3
    start=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$tmp/$name.log" 2>&1
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        why="timed out after $limit s"
    elif [ "$rc" -ne 0 ]; then
        why="exit $rc: $(grep -v '^[[:space:]]*$' "$tmp/$name.log" | tail -n 1 | cut -c1-160)"
    elif ! why=$(bash -c "$verify" 2>&1); then
        why=${why:-"check failed: $verify"}
    else
        why=""
    fi
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ -z "$why" ]; then
        printf 'PASS  %-26s %6s s\n' "$name" "$secs"
    else
        printf 'FAIL  %-26s %6s s  %s (log: %s)\n' "$name" "$secs" "$why" "$tmp/$name.log"
        failed=1
    fi
}

# (a) The README's default job, less work: a fifth of an epoch of fine-tuning, 30-step probes.
check default-job-cuda 160 "'$PY' '$tmp/verify.py' '$tmp/gpu-default' 1" \
    .venv/bin/compress --target jetson-orin --max-acc-drop 1 --train-device cuda --finetune-epochs 0.2 \
    --probe-finetune-steps 30 --out "$tmp/gpu-default"

# (b) Two processes. The default model on jetson-orin may ship unpruned (launch-bound in the
# estimate), and then nothing is fine-tuned; so the tiny test model, trained briefly, on
# jetson-orin's figures without the per-layer overhead (tests/tiny_specs.py), where pruning pays
# and both ranks distill: the report must say 2 processes fine-tuned.
mkdir -p "$tmp/profiles"
check torchrun-2-finetune-cuda 90 "'$PY' '$tmp/verify.py' '$tmp/gpu-torchrun' 2" \
    bash -c '
        set -e
        PYTHONPATH="$1" "$2" -c "
import sys; from pathlib import Path; from tests import tiny_specs
tmp = Path(sys.argv[1])
yaml = Path(\"edgecompress/profiles/jetson-orin.yaml\").read_text()
(tmp / \"profiles\" / \"jetson-orin-compute.yaml\").write_text(tiny_specs.estimated_without_overhead(yaml))
tiny_specs.trained_weights(tmp / \"tiny.pt\")" "$3"
        PYTHONPATH="$1" exec .venv/bin/torchrun --nproc_per_node 2 -m edgecompress.cli \
            --target jetson-orin-compute --profiles "$3/profiles" --max-acc-drop 3 --train-device cuda \
            --model tests.tiny_specs:model --weights "$3/tiny.pt" --data tests.tiny_specs:data \
            --precision fp32 --batch-size 64 --bn-batches 2 --min-search-interval 0.1 \
            --probe-finetune-steps 3 --finetune-epochs 2 --out "$3/gpu-torchrun"' _ "$REPO" "$PY" "$tmp"

# (c) The tests that need a GPU; on a GPU machine none of them may skip.
check pytest-m-gpu 40 "! grep -E '[0-9]+ skipped' '$tmp/pytest-m-gpu.log'" \
    .venv/bin/pytest -q -m gpu -p no:cacheprovider

[ "$failed" -eq 0 ] && rm -rf "$tmp"
exit "$failed"
