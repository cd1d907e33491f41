#!/usr/bin/env bash
# The memory estimate on a CUDA GPU in one call (about 4 minutes on an H200 after the wheels install): the autograd saved-tensor
# tests under CUDA bf16 autocast, benchmarks/memory_estimate.py against torch.cuda.max_memory_allocated
# (musicgen-small's architecture, random weights), then a --smoke run with --train.batch-size auto on
# that model (the GPU path: estimate, trial step, recorded number).
#
# On an offline GPU machine whose python has torch (+ CUDA) but not our other libraries:
#   bash benchmarks/device_bundle.sh            # here, with network: wheels into .device-wheels/
#   bash benchmarks/memory_estimate_gpu.sh      # there: OUT=<dir> picks where the results go
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-./gpu-memory-out}
mkdir -p "$OUT_DIR"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

PY=${MEMORY_PYTHON:-}
if [[ -z $PY ]]; then  # the machine's torch, our locked libraries on top (as gpu_acceptance.sh does)
    VENV=/tmp/memory-venv
    rm -rf "$VENV" && python3 -m venv --system-site-packages "$VENV"
    python3 -c "import sys; print('\n'.join(p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))" \
        > "$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_base_site.pth"
    wheels=(.device-wheels/*.whl)
    if python3 -c "import torchaudio" 2>/dev/null; then wheels=("${wheels[@]/*torchaudio-*/}"); fi
    "$VENV/bin/python" -m pip install -q --no-index --no-deps --ignore-installed --disable-pip-version-check ${wheels[@]}
    PY=$VENV/bin/python
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"

echo "== autograd saved tensors under CUDA bf16 autocast"
timeout 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_memory_estimate.py -k cuda 2>&1 | tee "$OUT_DIR/pytest.log"

echo "== estimate vs max_memory_allocated"
timeout 250 "$PY" benchmarks/memory_estimate.py --device cuda --tiny-points 4x10 --small-points 8x30 16x30 \
    --glibc-default-points --out "$OUT_DIR/memory_estimate_cuda" 2>&1 | grep -v "^\[transformers\]" | tee "$OUT_DIR/bench.log"

echo "== --train.batch-size auto on the GPU (musicgen-small architecture, demo loops, 30 s windows)"
timeout 100 "$PY" experiments/01_baseline.py --smoke --model.name .cache/musicgen-lora/benchmark/musicgen-small-random-seed0 \
    --train.batch-size auto --data.window-seconds 30 --train.max-steps 2 --train.eval-every 0 --train.checkpoint-every 0 \
    --metrics.no-enabled --sample.no-base-model --sample.seconds 0.5 --tracking.wandb disabled --output-dir /tmp/auto-run \
    2>&1 | grep -v "^\[transformers\]" | tail -n 25 | tee "$OUT_DIR/auto.log"
"$PY" -c "import json; m = json.load(open('/tmp/auto-run/manifest.json')); c = json.load(open('/tmp/auto-run/config.json')); \
print('config.json batch', c['train']['batch_size']); print(json.dumps(m.get('batch_size'), indent=1))" 2>&1 | tee -a "$OUT_DIR/auto.log"
