#!/usr/bin/env bash
# The whole GPU check in one command, for the lent H100 or H200 (../shared/gpu/README.md): stage with
# bench/gpu_stage.sh, then its last call runs `bash .gpu/install.sh && bash bench/gpu_check.sh`. At most 8 minutes;
# every step has its own time limit, so a slow step is cut and the rest still report. Everything goes to
# runs/gpu_check/results; $OUT (the device tool's folder that comes back, at most 8 files; else bench/results/gpu)
# gets the reports and one tarball. Issue 28's questions first:
#
#   0. installs what bench/gpu_stage.sh added (nvImageCodec, nvJPEG, wrk, py-spy) where it was staged;
#   1. bench.gpu_preprocess: the gpu preprocessing backend (nvImageCodec + core/resample.py's graph) against the
#      host path: the 8-thread check, host CPU per image, pixel and top-1 parity over 300 JPEGs through MODEL
#      (exported here, as step 3 then finds it); then tests/test_gpu_preprocessing.py, which skips without a GPU;
#   2. bench.request_cpu under wrk (a C load generator): img/s and host CPU per request (and beyond its floor: the
#      decoding and the session call's host part, timed in-process), `preprocessing` host and gpu, against FastAPI on
#      the CUDA provider (MODEL, 500x375 JPEGs, WORKERS workers, 64 and 256 connections), with a py-spy profile of
#      the busiest worker at 256;
#   3. bench.serve_load: ResNet-50 at 224 (random weights) on JPEGs, host preprocessing in each layout (worker
#      processes : decoding processes; 4:3 is what `gpus` gives 4 workers on 16 cores) at CONCURRENCY clients,
#      FastAPI on the CUDA provider, model-only fp32 and fp16;
#   4. the same with `preprocessing: gpu`, in the first layout.
# The step limits add up to 480 s (issue 28: within 8 minutes of device time).
# FULL=1 adds what earlier sessions measured (bench/README.md): bench.cuda_shapes and the service on fp16 graphs.
#
# On the CPU, a short run of the same steps checks the script itself:
#   MODEL=digits DEVICE=cpu LAYOUTS="1:0 1:2" DURATION=2 CONCURRENCY="4 16" bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BACK=${OUT:-bench/results/gpu}
OUT=runs/gpu_check/results
MODEL=${MODEL:-resnet50}
DEVICE=${DEVICE:-cuda}
LAYOUTS=${LAYOUTS:-4:0 8:0 4:3}
DURATION=${DURATION:-4}
CONCURRENCY=${CONCURRENCY:-64 256}
WORKERS=${WORKERS:-4}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=true
mkdir -p "$OUT" "$BACK"
# shellcheck source=bench/steps.sh
source bench/steps.sh  # step NAME LIMIT_S COMMAND...
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  nproc
  $PYTHON -c "import onnxruntime as o, bentoml, numpy; print('onnxruntime', o.__version__, o.get_available_providers(), 'bentoml', bentoml.__version__, 'numpy', numpy.__version__)"
  git log -1 --format='%H %s' 2>/dev/null || true
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

# 0. what bench/gpu_stage.sh put beside two onnxruntime-gpu chunks: call 1's (copied to /tmp/stage: wrk, LuaJIT,
# py-spy, whose wheel holds only its binary) and call 5's (the decoder's wheels, pytest)
first=/tmp/stage/c1/extra
for extra in "$first" .gpu/c5/extra; do
  if ls "$extra"/*.whl >/dev/null 2>&1; then
    $PYTHON -m pip install -q --no-index --no-deps "$extra"/*.whl && echo "installed $(ls "$extra"/*.whl | xargs -n1 basename)"
  fi
done
export PATH="$first/bin:$PATH" LD_LIBRARY_PATH="$first/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# LitServe is compared with where it is installed (../shared/gpu/stage.sh does not bring it)
$PYTHON -c "import litserve" 2>/dev/null && litserve="" || litserve="--no-litserve"
gpu_preprocessing=$([ "$DEVICE" = cuda ] && echo gpu || echo host)

step gpu_preprocess 70 $PYTHON -m bench.gpu_preprocess --repeats 20 --parity 300 --model "$MODEL" \
  --work runs/gpu_check --out "$OUT/gpu_preprocess"
# without conftest.py, whose fixtures train with torch: the module needs the service and the GPU only
step gpu_tests 30 $PYTHON -m pytest -q -rs -p no:cacheprovider --noconftest tests/test_gpu_preprocessing.py
if { wrk --version 2>&1 || true; } | grep -q "^wrk"; then  # it exits 1 after printing its version
  # shellcheck disable=SC2086  # the lists are meant to split
  step request_cpu 80 $PYTHON -m bench.request_cpu --targets service fastapi --model "$MODEL" --images photo \
    --connections $CONCURRENCY --workers "$WORKERS" --device "$DEVICE" --preprocessing host --duration "$DURATION" \
    --warmup 2 --work runs/gpu_check --label host --profile --out "$OUT/request_cpu_host"
  # shellcheck disable=SC2086
  step request_cpu_gpu 50 $PYTHON -m bench.request_cpu --targets service --model "$MODEL" --images photo \
    --connections $CONCURRENCY --workers "$WORKERS" --device "$DEVICE" --preprocessing "$gpu_preprocessing" \
    --duration "$DURATION" --warmup 2 --work runs/gpu_check --label "$gpu_preprocessing" --profile \
    --out "$OUT/request_cpu_gpu"
else
  echo "== request_cpu: skipped, no wrk that runs here (bench/gpu_stage.sh stages one)" | tee "$OUT/request_cpu.log"
fi
# shellcheck disable=SC2086
step serve_load 190 $PYTHON -m bench.serve_load --models "$MODEL" --device "$DEVICE" --fp16 --layouts $LAYOUTS \
  --concurrency $CONCURRENCY --duration "$DURATION" --warmup 1.5 --client-processes 4 --work runs/gpu_check \
  --images jpeg --preprocessing host --no-ensemble $litserve --out "$OUT/serve_load"
first_layout=${LAYOUTS%% *}
# shellcheck disable=SC2086
step serve_gpu_preprocess 60 $PYTHON -m bench.serve_load --models "$MODEL" --device "$DEVICE" \
  --preprocessing "$gpu_preprocessing" --images jpeg --layouts "$first_layout" --concurrency $CONCURRENCY \
  --duration "$DURATION" --warmup 1.5 --client-processes 4 --work runs/gpu_check --no-ensemble --no-fastapi \
  --no-litserve --out "$OUT/serve_gpu_preprocess"
if [ "${FULL:-0}" = 1 ]; then
  step cuda_shapes 120 $PYTHON -m bench.cuda_shapes --graph "runs/gpu_check/$MODEL.onnx" \
    --fp16-graph "runs/gpu_check/$MODEL-fp16.onnx" --device "$DEVICE" --out "$OUT/cuda_shapes"
  # shellcheck disable=SC2086
  step serve_fp16 90 $PYTHON -m bench.serve_load --models "$MODEL" --device "$DEVICE" --serve-fp16 \
    --layouts "$first_layout" --concurrency $CONCURRENCY --duration "$DURATION" --warmup 1.5 --client-processes 4 \
    --work runs/gpu_check --no-fastapi --no-litserve --out "$OUT/serve_fp16"
fi
tar -czf "$BACK/all.tgz" "$OUT" runs/gpu_check/*.log runs/gpu_check/*.yaml 2>/dev/null
cp "$OUT"/machine.txt "$OUT"/*.md "$OUT"/serve_load_throughput.png "$BACK"/ 2>/dev/null
echo "== done in $((SECONDS - start)) s; files in $BACK:"
ls -la "$BACK"
