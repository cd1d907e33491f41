#!/usr/bin/env bash
# GPU acceptance in one call (<= ~7 minutes on an H100): environment + measured bf16 matmul peak,
# the real --smoke entry point on CUDA, training throughput of ours vs the original loop and the HF
# recipe (musicgen-small architecture, batch 8 x 30 s), peak memory with and without gradient
# checkpointing, fp16 + grad scaler through the entry point, generation real-time factor, and (if
# time is left) the loop-folder regime. Every stage has its own timeout and a failed stage does not
# stop the others; stages are skipped once the total budget is spent.
#
# On an offline GPU machine whose python has torch (+ CUDA) but not our other libraries:
#   bash benchmarks/device_bundle.sh          # here, with network: wheels into .device-wheels/
#   bash benchmarks/gpu_acceptance.sh         # there: OUT=<dir> picks where the results go
# Dry run of every stage on CPU with the tiny model and this checkout's .venv (plumbing only):
#   ACCEPTANCE_DEVICE=cpu ACCEPTANCE_QUICK=1 bash benchmarks/gpu_acceptance.sh
#
# Results in $OUT (default ./gpu-acceptance-out), a compact set because the device returns few files:
# gpu_acceptance.md (tables), gpu_acceptance.json (every number), gpu_acceptance.log (stage logs).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
DEVICE=${ACCEPTANCE_DEVICE:-cuda}
QUICK=${ACCEPTANCE_QUICK:-0}
BUDGET=${ACCEPTANCE_BUDGET_S:-420}
OUT_DIR=${OUT:-./gpu-acceptance-out}
WORK=${ACCEPTANCE_WORK:-/tmp/gpu-acceptance}
RUNS=$WORK/runs
rm -rf "$WORK" && mkdir -p "$WORK/logs" "$WORK/bench" "$RUNS" "$OUT_DIR"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Nothing may reach a network: the machine has none, and a hub lookup would only wait for a timeout.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

elapsed() { echo $(( $(date +%s) - START )); }

# ---- Python: the machine's own (torch + CUDA) plus our locked wheels, or the local .venv ----------
if [[ $QUICK == 1 || $DEVICE == cpu || -n ${UV:-} || -n ${VIRTUAL_ENV:-} ]] && [[ ${ACCEPTANCE_INSTALL:-0} != 1 ]]; then
    PY=${ACCEPTANCE_PYTHON:-$([[ -x .venv/bin/python ]] && echo "$PWD/.venv/bin/python" || command -v python3)}
    echo "using $PY (no wheel install)"
else
    PY=""
    BASE=${ACCEPTANCE_BASE_PYTHON:-python3}
    VENV=${ACCEPTANCE_VENV:-/tmp/accept-venv}
    WHEELS=${ACCEPTANCE_WHEELS:-.device-wheels}
    ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no $WHEELS/*.whl: run benchmarks/device_bundle.sh first" >&2; exit 2; }
    wheels=("$WHEELS"/*.whl)
    # The machine's torchaudio matches its torch build; ours only fills in where it has none.
    if "$BASE" -c "import torchaudio" 2>/dev/null; then
        wheels=("${wheels[@]/*torchaudio-*/}")
    fi
    rm -rf "$VENV"
    if "$BASE" -m venv --system-site-packages "$VENV" > "$WORK/logs/install.log" 2>&1; then
        # The base python may itself be a venv (torch in its own site-packages, which
        # --system-site-packages does not see): list its site dirs after ours, so our wheels win.
        "$BASE" -c "import sys; print('\n'.join(p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))" \
            > "$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_base_site.pth"
        "$VENV/bin/python" -m pip install --quiet --no-index --no-deps --ignore-installed --disable-pip-version-check ${wheels[@]} \
            >> "$WORK/logs/install.log" 2>&1 && PY=$VENV/bin/python
    fi
    if [[ -z ${PY:-} ]]; then
        # No venv or pip on the machine: a wheel is a zip of site-packages content, so unpack them
        # into one folder ahead of the base python's own packages.
        echo "venv/pip install failed (see install.log); unpacking the wheels instead"
        tail -n 5 "$WORK/logs/install.log"
        rm -rf "$VENV" && mkdir -p "$VENV/site"
        for wheel in ${wheels[@]}; do "$BASE" -m zipfile -e "$wheel" "$VENV/site"; done
        export PYTHONPATH=$VENV/site:$PYTHONPATH
        PY=$BASE
    fi
    echo "installed ${#wheels[@]} wheels for $PY in $(elapsed) s"
fi
"$PY" -c "import torch, transformers, peft, accelerate; print('python', __import__('sys').version.split()[0], \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'from', transformers.__file__, \
'peft', peft.__version__, 'accelerate', accelerate.__version__)" || echo "core imports FAILED with $PY"

if [[ $QUICK == 1 ]]; then
    ARCH=tiny; TRAIN_SHAPE=(--batch-size 2 --window-seconds 0.5 --reference-pad-seconds 1)
    STEPS=(--steps 1 --warmup 1 --rounds 1); MEM_STEPS=(--steps 1 --warmup 1 --rounds 1); LOOP_STEPS=("${MEM_STEPS[@]}")
    LOOPS=(--batch-size 2 --window-seconds 0.5 --loop-seconds 0.3 1.5 --clips 4)
    SMOKE_EXTRA=(--train.max-steps 4 --train.eval-every 2 --train.checkpoint-every 2 --train.log-every 1)
    RTF=(--arch tiny --seconds 1 --batch-sizes 1 2)
else
    ARCH=small; TRAIN_SHAPE=(--batch-size 8 --window-seconds 30 --reference-pad-seconds 30)
    STEPS=(--steps 8 --warmup 3 --rounds 1); MEM_STEPS=(--steps 2 --warmup 1 --rounds 1); LOOP_STEPS=(--steps 4 --warmup 2 --rounds 1)
    LOOPS=(--batch-size 8 --window-seconds 10 --clips 16)
    SMOKE_EXTRA=()
    RTF=(--arch small --seconds 4 --batch-sizes 1 4)
fi
# fp16 autocast needs a GPU; the CPU dry run checks the same entry-point path in bf16.
FP16=$([[ $DEVICE == cuda ]] && echo fp16 || echo bf16)
BENCH=(benchmarks/train_throughput.py --device "$DEVICE" --arch "$ARCH" --model-cache "$WORK/models" --output-dir "$WORK/bench")

write_meta() {
    printf '{"mode": "%s", "device": "%s", "quick": %s, "budget_s": %s, "total_s": %s, "python": "%s", "fp16_precision": "%s"}\n' \
        "$([[ $QUICK == 1 ]] && echo quick || echo full)" "$DEVICE" "$([[ $QUICK == 1 ]] && echo true || echo false)" \
        "$BUDGET" "$(elapsed)" "$PY" "$FP16" > "$WORK/meta.json"
}

# ---- Stage runner ----------------------------------------------------------------------------------
# run_stage NAME TIMEOUT_S CMD...: own timeout (cut to what is left of the budget), log to
# $WORK/logs/NAME.log, exit code + time to stages.tsv; a failure prints the log's tail and moves on.
run_stage() {
    local name=$1 limit=$2 left rc t0 note=""
    shift 2
    # ACCEPTANCE_ONLY="env smoke ...": run just those stages (checking one stage's plumbing).
    if [[ -n ${ACCEPTANCE_ONLY:-} && " $ACCEPTANCE_ONLY " != *" $name "* ]]; then return; fi
    left=$(( BUDGET - $(elapsed) ))
    if (( left < 15 )); then
        echo "== [$(elapsed)s] $name: SKIPPED (budget of ${BUDGET}s spent)"
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" 125 0 0 "skipped: budget spent" >> "$WORK/stages.tsv"
        return
    fi
    (( limit > left )) && limit=$left
    echo "== [$(elapsed)s] $name (timeout ${limit}s): $*"
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    (( rc == 124 || rc == 137 )) && note="timed out after ${limit}s"
    (( rc != 0 && rc != 124 && rc != 137 )) && note="failed: $(grep -E 'Error|error:' "$WORK/logs/$name.log" | tail -n 1 | cut -c1-150 | tr '\t|' '  ')"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" $(( $(date +%s) - t0 )) "$limit" "$note" >> "$WORK/stages.tsv"
    echo "   -> exit $rc in $(( $(date +%s) - t0 ))s ${note}"
    if (( rc != 0 )); then tail -n 20 "$WORK/logs/$name.log" | sed 's/^/   | /'; fi
    # $OUT always holds everything finished so far: a call cut short (the machine's start can eat
    # most of a lease) still returns the stages that ran, not nothing
    write_meta
    "$PY" benchmarks/acceptance_stages.py summarize "$WORK" "$OUT_DIR" > /dev/null 2>&1 || true
}

# a. environment and the measured bf16 matmul peak
if [[ $DEVICE == cuda ]]; then run_stage nvidia_smi 20 nvidia-smi; fi
run_stage env 90 "$PY" benchmarks/acceptance_stages.py env "$WORK/env.json" --device "$DEVICE"
# b. the real --smoke entry point (validation, samples and generation metrics on; W&B off by the preset)
run_stage smoke 180 "$PY" experiments/01_baseline.py --smoke --output-dir "$RUNS/smoke" "${SMOKE_EXTRA[@]}"
run_stage smoke_check 30 "$PY" benchmarks/acceptance_stages.py check-run "$RUNS/smoke" "$WORK/smoke_check.json" --samples
# b2. the other model families through the same entry point: MusicGen-Melody (chroma + text prefix) and stereo
run_stage smoke_melody 150 "$PY" experiments/01_baseline.py --smoke --model.name tiny-melody --output-dir "$RUNS/smoke_melody" "${SMOKE_EXTRA[@]}"
run_stage smoke_melody_check 30 "$PY" benchmarks/acceptance_stages.py check-run "$RUNS/smoke_melody" "$WORK/smoke_melody_check.json" --samples
run_stage smoke_stereo 150 "$PY" experiments/01_baseline.py --smoke --model.name tiny-stereo --output-dir "$RUNS/smoke_stereo" "${SMOKE_EXTRA[@]}"
run_stage smoke_stereo_check 30 "$PY" benchmarks/acceptance_stages.py check-run "$RUNS/smoke_stereo" "$WORK/smoke_stereo_check.json" --samples
# c. training throughput: ours, the original loop, the HF recipe with and without its T5 hook
run_stage train_fixed 240 "$PY" "${BENCH[@]}" "${TRAIN_SHAPE[@]}" "${STEPS[@]}" \
    --arms reference ours peer peer_lean --name train_fixed
# d. peak memory of ours with and without gradient checkpointing (same shape)
run_stage memory 120 "$PY" "${BENCH[@]}" "${TRAIN_SHAPE[@]}" "${MEM_STEPS[@]}" --arms ours grad_ckpt --name memory
# e. fp16 autocast + grad scaler through the entry point; the check reads losses and the adapter
run_stage fp16 120 "$PY" experiments/01_baseline.py --smoke --train.mixed-precision "$FP16" --train.max-steps 6 \
    --train.eval-every 1000 --train.checkpoint-every 1000 --train.log-every 1 --output-dir "$RUNS/fp16"
run_stage fp16_check 30 "$PY" benchmarks/acceptance_stages.py check-run "$RUNS/fp16" "$WORK/fp16_check.json"
# f. a loop folder of 2-30 s clips: the peer pads each batch to its longest loop
run_stage train_loops 150 "$PY" "${BENCH[@]}" --regime loops "${LOOPS[@]}" "${LOOP_STEPS[@]}" \
    --arms ours peer peer_lean --name train_loops
# g. generation real-time factor, LoRA adapter unmerged and merged
run_stage generate_rtf 120 "$PY" benchmarks/generate_rtf.py --device "$DEVICE" "${RTF[@]}" --out "$WORK/rtf.json"
# h. (if time is left) what torch.compile of the decoder buys towards the MFU target; its own stage
# because a compile failure (no compiler or headers on the machine) must not cost the other numbers
run_stage train_compile 180 "$PY" "${BENCH[@]}" "${TRAIN_SHAPE[@]}" "${STEPS[@]}" --arms ours compile --name train_compile

write_meta
echo "== [$(elapsed)s] done; summary in $OUT_DIR"
# The summary is printed last: only the end of the output may come back inline.
"$PY" benchmarks/acceptance_stages.py summarize "$WORK" "$OUT_DIR" || python3 benchmarks/acceptance_stages.py summarize "$WORK" "$OUT_DIR"
