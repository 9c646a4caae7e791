# Sourced by the GPU scripts (gpu_check.sh, multi_gpu.sh): `step NAME LIMIT_S COMMAND...` runs a command under a
# time limit, logs it to $OUT/NAME.log and notes how it ended, so a slow step is cut and the rest still report.
# The caller sets OUT (and creates it) before sourcing.
start=$SECONDS
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s) at +$((SECONDS - start))s: $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? after +$((SECONDS - start))s" | tee -a "$OUT/$name.log"
}
