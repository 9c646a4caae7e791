#!/usr/bin/env bash
# The whole GPU serving check in one command, for the lent H100 (../shared/gpu/README.md): call 5 of stage.sh
# runs `bash .gpu/install.sh && bash bench/gpu_check.sh`. About 7 minutes; every step has its own time limit,
# so a slow step is cut and the rest still report. Everything goes to runs/gpu_check/results; $OUT (the device
# tool's folder that comes back, at most 8 files; else bench/results/gpu) gets the reports and one tarball.
#
#   1. bench.serve_load: ResNet-50 at 224 (random weights), the service in each layout (worker processes :
#      decoding processes) at 16 and 64 clients, open loop, /ensemble of 2, first requests after /readyz,
#      real against padded images, FastAPI on the CUDA provider, model-only fp32 and fp16 by batch size;
#   2. bench.cuda_shapes: what a change of batch shape costs one session, against a session per size, with
#      each cuDNN algorithm search, NHWC, CUDA graphs, fp16;
#   3. the service again with the fp16 graphs, in the first layout;
#   4. bench.gpu_preprocess: the gpu preprocessing backend (nvImageCodec + core/resample.py's graph) against the
#      host path, pixel parity and host CPU per image (needs nvidia-nvimgcodec-cu13 and nvidia-nvjpeg: stage.sh);
#   5. on a GPU, the service on JPEGs with `preprocessing: gpu`, one worker and four.
#
# On the CPU, a short run of the same steps checks the script itself:
#   MODEL=digits DEVICE=cpu LAYOUTS="1:0 1:2" DURATION=2 CONCURRENCY="4 16" bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
BACK=${OUT:-bench/results/gpu}
OUT=runs/gpu_check/results
MODEL=${MODEL:-resnet50}
DEVICE=${DEVICE:-cuda}
LAYOUTS=${LAYOUTS:-1:0 1:12 4:0 4:3}
DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-16 64}
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

# LitServe is compared with where it is installed (../shared/gpu/stage.sh does not bring it)
$PYTHON -c "import litserve" 2>/dev/null && litserve="" || litserve="--no-litserve"
# shellcheck disable=SC2086  # the lists are meant to split
step serve_load 330 $PYTHON -m bench.serve_load --models "$MODEL" --device "$DEVICE" --fp16 --layouts $LAYOUTS \
  --concurrency $CONCURRENCY --duration "$DURATION" --warmup 1.5 --client-processes 4 --work runs/gpu_check \
  $litserve --out "$OUT/serve_load"
step cuda_shapes 120 $PYTHON -m bench.cuda_shapes --graph "runs/gpu_check/$MODEL.onnx" \
  --fp16-graph "runs/gpu_check/$MODEL-fp16.onnx" --device "$DEVICE" --out "$OUT/cuda_shapes"
first_layout=${LAYOUTS%% *}
# shellcheck disable=SC2086
step serve_fp16 90 $PYTHON -m bench.serve_load --models "$MODEL" --device "$DEVICE" --serve-fp16 --layouts "$first_layout" \
  --concurrency $CONCURRENCY --duration "$DURATION" --warmup 1.5 --client-processes 4 --work runs/gpu_check \
  --no-fastapi --no-litserve --out "$OUT/serve_fp16"
step gpu_preprocess 60 $PYTHON -m bench.gpu_preprocess --repeats 20 --out "$OUT/gpu_preprocess"
if [ "$DEVICE" = cuda ]; then
  # shellcheck disable=SC2086
  step serve_gpu_preprocess 120 $PYTHON -m bench.serve_load --models "$MODEL" --device cuda --preprocessing gpu \
    --images jpeg --layouts 1:0 4:0 --concurrency $CONCURRENCY --duration "$DURATION" --warmup 1.5 \
    --client-processes 4 --work runs/gpu_check --no-ensemble --no-fastapi --no-litserve --out "$OUT/serve_gpu_preprocess"
fi
tar -czf "$BACK/all.tgz" "$OUT" runs/gpu_check/*.log runs/gpu_check/*.yaml 2>/dev/null
cp "$OUT"/machine.txt "$OUT"/*.md "$OUT"/serve_load_throughput.png "$BACK"/ 2>/dev/null
echo "== done in $((SECONDS - start)) s; files in $BACK:"
ls -la "$BACK"
