#!/usr/bin/env bash
# Build the Bento and turn it into a container image: `make container` (README, "Container").
#
#   VARIANT=cpu|gpu      cpu: plain onnxruntime; gpu: onnxruntime-gpu with the CUDA and cuDNN pip wheels
#   BASE_IMAGE=NAME      a registry base such as python:3.11-slim; empty: an offline Debian base built here
#                        with debootstrap (needs root) and cached as $OFFLINE_BASE
#   IMAGE=NAME:TAG       the image to build (default classifier:$VARIANT)
#   SERVING_CONFIG=FILE  the serving config the image serves, with exactly the models it names (default serving.yaml)
#   DOCKER=PATH          a docker client that builds without the buildx plugin (default: Debian's /usr/bin/docker)
#   REBUILD_BASE=1       build the offline base again even when it is cached
#
# Every build step uses the host network: no traffic goes to a Docker bridge's private addresses.
# The Docker daemon is not started here: starting one is a choice about the machine, so a missing daemon
# stops the script with the command that starts one.
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${VARIANT:-cpu}
BASE_IMAGE=${BASE_IMAGE:-}
OFFLINE_BASE=${OFFLINE_BASE:-imgclf-base:bookworm}
IMAGE=${IMAGE:-classifier:$VARIANT}
SERVING_CONFIG=$(realpath "${SERVING_CONFIG:-serving.yaml}")
export SERVING_CONFIG  # bentoml build packs this config and its models (service/packed.py)
VENV=$(realpath "${VENV:-.venv}")
PY=$VENV/bin/python
BENTOML=$VENV/bin/bentoml
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
export BENTOML_DO_NOT_TRACK=true

# The Docker 28 client installed first on some PATHs builds only through the buildx plugin; Debian's
# docker.io client (20.10) drives BuildKit itself. bentoml finds `docker` on PATH, so put the chosen one first.
if [[ -z ${DOCKER:-} ]]; then
    if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker || true); fi
fi
[[ -n $DOCKER ]] || { echo "error: no docker client; install one (Debian: apt-get install docker.io)" >&2; exit 1; }
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
ln -s "$DOCKER" "$shim/docker"
export PATH=$shim:$PATH

if ! docker info >/dev/null 2>&1; then
    echo "error: no Docker daemon answers; start one with:" \
        "dockerd --bridge=none --iptables=false --ip-masq=false > /tmp/dockerd.log 2>&1 &" >&2
    exit 1
fi

# 1. the models the config names must be in the model store (bentoml build stops with one line naming a missing
# one); the default one is trained as `make demo` does
if ! "$BENTOML" models get digits-resnet18 >/dev/null 2>&1 && grep -q "digits-resnet18" "$SERVING_CONFIG"; then
    echo "== digits-resnet18 is not in the model store: training and exporting it as make demo does"
    "$PY" -m deploy.demo trained runs/digits-resnet18 ||
        "$PY" -m training fit --config configs/digits_resnet18.yaml --out runs/digits-resnet18 --overwrite
    "$PY" -m export runs/digits-resnet18/best.pt --out models/digits-resnet18.onnx --store digits-resnet18
fi

# 2. the base image: a registry one when asked for, else a Debian bookworm root filesystem made offline
offline_base() {
    if [[ -z ${REBUILD_BASE:-} ]] && docker image inspect "$OFFLINE_BASE" >/dev/null 2>&1; then
        echo "== base image $OFFLINE_BASE (cached; REBUILD_BASE=1 rebuilds it)"
        return
    fi
    command -v debootstrap >/dev/null || { echo "error: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }
    [[ $(id -u) == 0 ]] || { echo "error: debootstrap needs root; or pass BASE_IMAGE=python:3.11-slim" >&2; exit 1; }
    local rootfs
    rootfs=$(mktemp -d /var/tmp/imgclf-rootfs.XXXXXX)
    echo "== building base image $OFFLINE_BASE with debootstrap from $DEBIAN_MIRROR"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR"
    # pip and uv in the build must trust what the host trusts (a TLS-inspecting proxy's CA, for instance)
    if [[ -f $CA_BUNDLE ]]; then cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"; fi
    # Debian marks its Python as externally managed (PEP 668); bentoml's Dockerfile pip-installs uv into it
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change "ENV SSL_CERT_FILE=$CA_BUNDLE" --change "ENV PIP_CERT=$CA_BUNDLE" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$OFFLINE_BASE"
    rm -rf "$rootfs"
}
if [[ -z $BASE_IMAGE ]]; then
    offline_base
    BASE_IMAGE=$OFFLINE_BASE
fi

# 3. the Bento, from bentofile.yaml with this variant's runtime package and base image
start=$(date +%s)
bentofile=$shim/bentofile.yaml
"$PY" -m deploy.bentofile --variant "$VARIANT" --base-image "$BASE_IMAGE" --out "$bentofile"
bento=$("$BENTOML" build -f "$bentofile" --output tag . | tail -1)
bento=${bento#__tag__:}
echo "== Bento $bento ($VARIANT, base $BASE_IMAGE, serving $SERVING_CONFIG)"

# 4. the image, built on the host network. bentoml copies the Bento to a temporary build context and refuses a
# Dockerfile template outside the working directory, so the context is made under the directory it runs in.
mkdir "$shim/tmp"
(cd "$shim" && TMPDIR=$shim/tmp "$BENTOML" containerize "$bento" --backend docker --image-tag "$IMAGE" --opt network=host)
seconds=$(($(date +%s) - start))
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
echo "== image $IMAGE: $((size / 1000000)) MB, Bento and image built in ${seconds} s"
echo "   check it:  make container-check IMAGE=$IMAGE"
echo "   serve it:  docker run --rm --network host $IMAGE   (then http://127.0.0.1:3000)"
