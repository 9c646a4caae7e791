#!/usr/bin/env bash
# One worker per GPU (serving.yaml `gpus`), measured on a lent machine with several GPUs; not run on a machine
# without them (the service refuses `gpus` there). About 4 minutes; each step has its own time limit. Reports go
# to runs/multi_gpu/results and to $OUT (the device tool's folder that comes back; else bench/results/multi_gpu).
#
#   1. the service with every worker on GPU 0 (`gpus: [0]`, one worker), the baseline;
#   2. `gpus: all`: one worker per GPU, decoding in processes (the cores divided among the workers);
#   3. the same as 2 with two workers per GPU (round-robin), in case one worker cannot keep its GPU busy.
# The model is ResNet-50 at 224 with random weights, over 500x375 JPEGs, closed loop at 64 and 256 clients; what
# to compare is images/s of step 2 over step 1 against the number of GPUs (`nvidia-smi -L` in machine.txt), and
# each worker's start-up line ("worker i of N: sessions on GPU g") in runs/multi_gpu/serve-*.log.
#
#   bash .gpu/install.sh && bash bench/multi_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BACK=${OUT:-bench/results/multi_gpu}
OUT=runs/multi_gpu/results
MODEL=${MODEL:-resnet50}
DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-64 256}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=true
mkdir -p "$OUT" "$BACK"
# shellcheck source=bench/steps.sh
source bench/steps.sh  # step NAME LIMIT_S COMMAND...
{
  nvidia-smi -L || echo "no nvidia-smi"
  nproc
  $PYTHON -c "import onnxruntime as o, bentoml; print('onnxruntime', o.__version__, o.get_available_providers(), 'bentoml', bentoml.__version__)"
  $PYTHON -c "from core.devices import gpu_ids; print('gpu_ids', gpu_ids())"
  git log -1 --format='%H %s' 2>/dev/null || true
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
gpus=$($PYTHON -c "from core.devices import gpu_ids; print(len(gpu_ids()))" 2>/dev/null || echo 0)
if [ "$gpus" -lt 2 ]; then
  echo "== $gpus GPU(s) here: one worker per GPU needs at least 2; nothing measured" | tee -a "$OUT/machine.txt"
  cp "$OUT/machine.txt" "$BACK"/
  exit 1
fi
common=(--models "$MODEL" --device cuda --images jpeg --duration "$DURATION" --warmup 1.5 --client-processes 4
  --work runs/multi_gpu --no-ensemble --no-fastapi --no-litserve)
# shellcheck disable=SC2086  # the list is meant to split
step one_gpu 100 $PYTHON -m bench.serve_load "${common[@]}" --gpus 0 --layouts 1:0 --concurrency $CONCURRENCY \
  --out "$OUT/one_gpu"
# shellcheck disable=SC2086
step all_gpus 100 $PYTHON -m bench.serve_load "${common[@]}" --gpus all --layouts 0:0 --concurrency $CONCURRENCY \
  --out "$OUT/all_gpus"
# shellcheck disable=SC2086
step two_per_gpu 100 $PYTHON -m bench.serve_load "${common[@]}" --gpus all --layouts "$((2 * gpus)):0" \
  --concurrency $CONCURRENCY --out "$OUT/two_per_gpu"
grep -h "sessions on GPU" runs/multi_gpu/serve-*.log > "$OUT/workers.txt" 2>/dev/null
tar -czf "$BACK/all.tgz" "$OUT" runs/multi_gpu/*.log runs/multi_gpu/*.yaml 2>/dev/null
cp "$OUT"/machine.txt "$OUT"/workers.txt "$OUT"/*.md "$BACK"/ 2>/dev/null
echo "== done in $((SECONDS - start)) s; files in $BACK:"
ls -la "$BACK"
