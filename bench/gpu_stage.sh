#!/usr/bin/env bash
# Stage everything bench/gpu_check.sh needs on the lent GPU machine, which reaches no package registry:
# ../shared/gpu/stage.sh (onnxruntime-gpu in five chunks, bentoml, fastapi), then, in the last call's chunk, what
# this project adds: the gpu preprocessing backend's decoder (nvidia-nvimgcodec-cu13 and nvidia-nvjpeg wheels, about
# 29 MB), wrk, the C load generator of bench/request_cpu.py, with its LuaJIT library, and py-spy (3 MB), which
# profiles a worker under that load.
#
#   bash bench/gpu_stage.sh          # from the project root; writes .gpu/ (git-ignored locally)
#
# Then the five calls of ../shared/gpu/stage.sh's header, the last one being
#   carry [".gpu/c5", ".gpu/install.sh"]   command: bash .gpu/install.sh && bash bench/gpu_check.sh
# (gpu_check.sh installs .gpu/c5/extra itself). A call carries at most 64 MiB: this script stops if the last
# call's files would not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/gpu/stage.sh
extra=.gpu/c5/extra
mkdir -p "$extra/bin" "$extra/lib"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# the versions the CPU tests ran (a newer decoder wheel may not fit beside the last chunk)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$extra" nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$extra" py-spy==0.4.3
wrk=$(command -v wrk || true)
if [ -n "$wrk" ]; then
  cp "$wrk" "$extra/bin/"
  # wrk links LuaJIT, which a bare machine lacks; libc, libssl and libcrypto are there (Python uses them)
  cp -L "$(ldd "$wrk" | awk '/libluajit/ {print $3}')" "$extra/lib/"
else
  echo "no wrk here (apt-get install wrk): gpu_check.sh will skip its host-CPU step"
fi
# the call carries the working tree too (its tracked files, about 1.3 MB)
size=$(( $(du -cb .gpu/c5 .gpu/install.sh | tail -1 | cut -f1) + $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) ))
echo "last call carries $((size / 1048576)) MiB with the working tree (at most 64)"
[ "$size" -le $((64 * 1048576)) ] || { echo "too large for one call"; exit 1; }
