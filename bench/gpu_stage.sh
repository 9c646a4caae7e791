#!/usr/bin/env bash
# Stage everything bench/gpu_check.sh needs on the lent GPU machine, which reaches no package registry:
# ../shared/gpu/stage.sh (onnxruntime-gpu in five chunks, bentoml, fastapi), then what this project adds, beside two
# of its chunks: in call 5's, the gpu preprocessing backend's decoder (nvidia-nvimgcodec-cu13 and nvidia-nvjpeg
# wheels, about 29 MB) and pytest (for tests/test_gpu_preprocessing.py); in call 1's, wrk, the C load generator of
# bench/request_cpu.py, with its LuaJIT library, and py-spy (3 MB), which profiles a worker under that load (call 5
# has no room for them once the working tree rides along: it came to 64.04 MiB on 2026-12-07).
#
#   bash bench/gpu_stage.sh          # from the project root; writes .gpu/ (git-ignored locally)
#
# Then the five calls of ../shared/gpu/stage.sh's header, unchanged (call 1 copies .gpu/c1, extra/ with it, to
# /tmp/stage), the last one being
#   carry [".gpu/c5", ".gpu/install.sh"]   command: bash .gpu/install.sh && bash bench/gpu_check.sh
# (gpu_check.sh installs both extra/ folders itself). A call carries at most 64 MiB with the working tree: this script
# stops if call 1's or call 5's would not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/gpu/stage.sh
first=.gpu/c1/extra last=.gpu/c5/extra
mkdir -p "$first/bin" "$first/lib" "$last"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# the versions the CPU tests ran (a newer decoder wheel may not fit beside the last chunk)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$last" nvidia-nvimgcodec-cu13==0.9.0.20 nvidia-nvjpeg==13.3.2.43
# pytest for tests/test_gpu_preprocessing.py (its other dependencies, packaging and pygments, come with bentoml's)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$last" pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$first" py-spy==0.4.3
wrk=$(command -v wrk || true)
if [ -n "$wrk" ]; then
  cp "$wrk" "$first/bin/"
  # wrk links LuaJIT, which a bare machine lacks; libc, libssl and libcrypto are there (Python uses them)
  cp -L "$(ldd "$wrk" | awk '/libluajit/ {print $3}')" "$first/lib/"
else
  echo "no wrk here (apt-get install wrk): gpu_check.sh will skip its host-CPU step"
fi
# each call carries the working tree too (its tracked files and the untracked ones git does not ignore)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb | tail -1 | cut -f1)
for call in "1 .gpu/whl .gpu/c1" "5 .gpu/c5 .gpu/install.sh"; do
  read -r n paths <<<"$call"
  # shellcheck disable=SC2086  # the paths are meant to split
  size=$(( $(du -cb $paths | tail -1 | cut -f1) + tree ))
  echo "call $n carries $((size / 1024)) KiB with the working tree (at most 65536)"
  [ "$size" -le $((64 * 1048576)) ] || { echo "call $n is too large"; exit 1; }
done
