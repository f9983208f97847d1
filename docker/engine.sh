#!/usr/bin/env bash
# docker/engine.sh: a container engine for this project on a machine that reaches no container registry
# (only Debian's archive and PyPI), set up by the project itself. `make test-containers` drives it; a person
# can too. Run as root (or through sudo): it installs Debian packages and starts a daemon.
#
#   docker/engine.sh install    Debian's docker.io (the Docker engine users run); if its daemon cannot start
#                               here, Debian's podman serving the Docker Engine API instead (runc, ulimits
#                               nofile 20000 / nproc 32768, a healthcheck runner: podman has no systemd timers here)
#   docker/engine.sh up         start the engine's API socket; prints the DOCKER_HOST line to export
#   docker/engine.sh base       debootstrap Debian bookworm (python3, venv) into a folder and import it as the
#                               local image trafficlip/base:bookworm, the BASE of the three Dockerfiles
#   docker/engine.sh build [train|airflow|mlflow|postgres|redis|s3|stand-ins ...]
#                               build the images (all by default) with BASE set to the local base: the product's
#                               trafficlip-train:0.1.0, trafficlip-airflow:0.1.0, trafficlip-mlflow:3.17.2, and the
#                               compose stack test's stand-ins (docker/stack-test/) for the images compose.yaml
#                               pulls: trafficlip-test-postgres:17 (Debian trixie's PostgreSQL 17),
#                               trafficlip-test-redis:7 (bookworm's Redis 7.0), trafficlip-test-s3:moto (moto's
#                               S3 server for MinIO); `build stand-ins` builds those three only; prints each
#                               image's build time and size (also in $TRAFFICLIP_ENGINE_HOME/build-report.txt)
#   docker/engine.sh down       stop the engine (images, volumes and containers stay)
#   docker/engine.sh status     what is installed, running and built
#   docker/engine.sh env        the DOCKER_HOST line only (eval "$(docker/engine.sh env)")
#   docker/engine.sh teardown   stop the engine and remove everything it made: containers, images, volumes, its
#                               data root, the base's folder and the wheelhouse (the Debian packages stay installed)
#
# Every subcommand is idempotent: `up` on a running engine, `base` with the image present, `install` with the
# engine installed say so and do nothing more (`base --force` rebuilds the base).
#
# The engine is private to the project: its own socket (unix:///run/trafficlip-engine/engine.sock), its own data
# root (/var/lib/trafficlip-engine), so it never touches another Docker on the machine; export DOCKER_HOST to use it.
#
# Builds. The images build from PyPI and Debian's archive as in production; only BASE differs. Two things make
# builds work and fast here, neither of which enters an image:
# - the host's CA bundle (TRAFFICLIP_BUILD_CA, default /etc/ssl/certs/ca-certificates.crt) is passed as the build
#   secret `ca_bundle`, which pip trusts during the build (HTTPS may pass through a re-signing proxy);
# - torch and torchvision (several GB with their CUDA libraries) are fetched once, with the host's pip, into a
#   wheelhouse (pip download: from this machine's disk where pip finds them there), which a throwaway HTTP server
#   on 127.0.0.1 serves to the builds (build argument WHEELHOUSE, the build on the host network): the training and
#   the Airflow image install torch from it instead of downloading it twice. TORCH_VERSION / TORCHVISION_VERSION
#   default to what the project's .venv has; TRAFFICLIP_WHEELHOUSE=none builds without one (from PyPI).
# - Airflow's constraints file lives on GitHub, which a registry-only network does not reach: the Airflow image is
#   built with the constraints of the project's .venv (`pip freeze`, the versions the tests ran), served the same
#   way (AIRFLOW_CONSTRAINTS); without a .venv, Airflow's official file.
#
# Settings (environment): TRAFFICLIP_ENGINE=docker|podman (skip the try of docker.io), TRAFFICLIP_ENGINE_HOME,
# TRAFFICLIP_ENGINE_RUN, TRAFFICLIP_BASE_IMAGE, TRAFFICLIP_BUILD_CA, TRAFFICLIP_WHEELHOUSE,
# TRAFFICLIP_ENGINE_SERVE_PORT (the builds' file server on 127.0.0.1, default 38765), DEBIAN_MIRROR, TORCH_VERSION,
# TORCHVISION_VERSION.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
STATE=${TRAFFICLIP_ENGINE_HOME:-/var/lib/trafficlip-engine}
RUNDIR=${TRAFFICLIP_ENGINE_RUN:-/run/trafficlip-engine}
SOCKET=$RUNDIR/engine.sock
export DOCKER_HOST=unix://$SOCKET
BASE_IMAGE=${TRAFFICLIP_BASE_IMAGE:-trafficlip/base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${TRAFFICLIP_BUILD_CA:-/etc/ssl/certs/ca-certificates.crt}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n 1)
SERVE_PORT=${TRAFFICLIP_ENGINE_SERVE_PORT:-38765}
MLFLOW_VERSION=3.17.2
declare -A IMAGE=([train]="trafficlip-train:$VERSION" [airflow]="trafficlip-airflow:$VERSION"
                  [mlflow]="trafficlip-mlflow:$MLFLOW_VERSION"
                  [postgres]="trafficlip-test-postgres:17" [redis]="trafficlip-test-redis:7"
                  [s3]="trafficlip-test-s3:moto")
declare -A CONTEXT=([train]="$ROOT" [airflow]="$ROOT" [mlflow]="$ROOT/docker" [postgres]="$HERE/stack-test"
                    [redis]="$HERE/stack-test" [s3]="$HERE/stack-test")
declare -A DOCKERFILE=([train]="$HERE/train.Dockerfile" [airflow]="$HERE/airflow.Dockerfile"
                       [mlflow]="$HERE/mlflow.Dockerfile" [postgres]="$HERE/stack-test/postgres.Dockerfile"
                       [redis]="$HERE/stack-test/redis.Dockerfile" [s3]="$HERE/stack-test/s3.Dockerfile")
# the product's images, and the compose stack test's stand-ins for the images that can only be pulled
PRODUCT_IMAGES=(train airflow mlflow)
STANDIN_IMAGES=(postgres redis s3)

say() { printf '== %s\n' "$*"; }
die() { printf 'engine.sh: %s\n' "$*" >&2; exit 1; }

need_root() {
  [[ $(id -u) == 0 ]] || die "run as root (sudo $0 $*): it installs Debian packages and starts the engine's daemon"
}

engine_kind() { cat "$STATE/engine" 2>/dev/null || true; }

apt_install() {
  say "apt-get install $*"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" > "$STATE/apt.log" 2>&1; then
    apt-get update -q >> "$STATE/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >> "$STATE/apt.log" 2>&1 \
      || { tail -n 20 "$STATE/apt.log" >&2; die "apt-get install $* failed (the whole log: $STATE/apt.log)"; }
  fi
}

# the Docker API answers on our socket
answering() { curl -sf --max-time 5 --unix-socket "$SOCKET" http://engine/_ping > /dev/null 2>&1; }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for_api() {  # $1: the daemon's pid file, $2: its log
  local waited=0
  until answering; do
    pid_alive "$1" || { tail -n 30 "$2" >&2; return 1; }
    (( waited++ < 120 )) || { tail -n 30 "$2" >&2; return 1; }
    sleep 0.5
  done
}

podman_conf() {
  # runc (crun fails on this kind of host's cgroup layout); default ulimits the host allows (a higher default is
  # refused); storage under the engine's own data root
  mkdir -p "$STATE/podman"
  cat > "$STATE/podman/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
events_logger = "file"
cgroup_manager = "cgroupfs"
EOF
  cat > "$STATE/podman/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$STATE/podman/storage"
runroot = "$RUNDIR/podman"
EOF
}

podman_env() { export CONTAINERS_CONF=$STATE/podman/containers.conf CONTAINERS_STORAGE_CONF=$STATE/podman/storage.conf; }

start_daemon() {
  mkdir -p "$STATE" "$RUNDIR"
  case $(engine_kind) in
    docker)
      say "starting dockerd (data root $STATE/docker, log $STATE/dockerd.log)"
      setsid dockerd --host "unix://$SOCKET" --data-root "$STATE/docker" --exec-root "$RUNDIR/exec" \
        --pidfile "$RUNDIR/dockerd.pid" > "$STATE/dockerd.log" 2>&1 < /dev/null &
      echo $! > "$RUNDIR/engine.pid"
      wait_for_api "$RUNDIR/engine.pid" "$STATE/dockerd.log"
      ;;
    podman)
      podman_conf; podman_env
      say "starting podman system service (storage $STATE/podman, log $STATE/podman.log)"
      setsid podman system service --time=0 "unix://$SOCKET" > "$STATE/podman.log" 2>&1 < /dev/null &
      echo $! > "$RUNDIR/engine.pid"
      wait_for_api "$RUNDIR/engine.pid" "$STATE/podman.log" || return 1
      # compose's `depends_on: condition: service_healthy` needs healthchecks run: podman schedules them with
      # systemd timers, which do not run here, so this loop runs each running container's healthcheck
      setsid bash -c 'while :; do
          for id in $(podman ps -q --filter health=starting) $(podman ps -q --filter health=healthy) \
                    $(podman ps -q --filter health=unhealthy); do podman healthcheck run "$id" >/dev/null 2>&1 || true; done
          sleep 5; done' > /dev/null 2>&1 < /dev/null &
      echo $! > "$RUNDIR/healthchecks.pid"
      ;;
    *) die "no engine installed: run $0 install first" ;;
  esac
}

stop_daemon() {
  local pidfile
  for pidfile in "$RUNDIR/healthchecks.pid" "$RUNDIR/engine.pid"; do
    if pid_alive "$pidfile"; then
      local pid; pid=$(cat "$pidfile")
      kill "$pid"
      local waited=0
      while kill -0 "$pid" 2>/dev/null && (( waited++ < 120 )); do sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
  done
}

cmd_install() {
  need_root install
  mkdir -p "$STATE"
  local kind; kind=$(engine_kind)
  if [[ -n $kind ]] && command -v "${kind/docker/dockerd}" > /dev/null; then
    say "engine already installed: $kind ($STATE/engine); nothing to do"
    return
  fi
  command -v debootstrap > /dev/null || apt_install debootstrap
  command -v curl > /dev/null || apt_install curl
  command -v docker-compose > /dev/null || apt_install docker-compose
  if [[ ${TRAFFICLIP_ENGINE:-docker} == docker ]]; then
    command -v dockerd > /dev/null || apt_install docker.io
    echo docker > "$STATE/engine"
    if answering; then
      say "the engine (docker) is already running on $SOCKET"
      return
    fi
    if start_daemon; then
      say "docker.io's daemon starts here: the engine is docker ($(dockerd --version))"
      stop_daemon
      return
    fi
    say "docker.io's daemon does not start here (the end of its log is above): falling back to podman"
    stop_daemon
  fi
  apt_install podman runc containernetworking-plugins golang-github-containernetworking-plugin-dnsname
  echo podman > "$STATE/engine"
  start_daemon || die "podman system service does not start either (see $STATE/podman.log)"
  say "the engine is podman $(podman --version | awk '{print $3}'), serving the Docker Engine API"
  stop_daemon
}

cmd_up() {
  need_root up
  [[ -n $(engine_kind) ]] || die "no engine installed: run $0 install first"
  if answering; then
    say "the engine ($(engine_kind)) is already up"
  else
    start_daemon || die "the engine ($(engine_kind)) did not start; its log: $STATE/$(engine_kind | sed 's/docker/dockerd/').log"
    say "the engine ($(engine_kind)) is up"
  fi
  echo "export DOCKER_HOST=$DOCKER_HOST"
}

ensure_up() { answering || cmd_up > /dev/null; }

# the client for the Docker API on our socket: the machine's docker CLI (any version speaks to the older engine)
docker_cli() {
  if [[ $(engine_kind) == podman ]]; then podman_env; podman "$@"; else docker "$@"; fi
}

image_exists() { docker_cli image inspect "$1" > /dev/null 2>&1; }

cmd_base() {
  need_root base
  ensure_up
  if image_exists "$BASE_IMAGE" && [[ ${1:-} != --force ]]; then
    say "$BASE_IMAGE is already there ($0 base --force makes it again)"
    return
  fi
  command -v debootstrap > /dev/null || apt_install debootstrap
  local rootfs="$STATE/rootfs-bookworm" started=$SECONDS
  rm -rf "$rootfs"
  say "debootstrap Debian bookworm (minbase, python3, python3-venv, ca-certificates) into $rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$MIRROR" \
    > "$STATE/debootstrap.log" 2>&1 || { tail -n 20 "$STATE/debootstrap.log" >&2; die "debootstrap failed ($STATE/debootstrap.log)"; }
  # the same package sources as the official Debian images (updates and security included), no apt caches
  rm -f "$rootfs/etc/apt/sources.list"
  cat > "$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  say "importing it as $BASE_IMAGE"
  tar -C "$rootfs" -c . | docker_cli import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" > /dev/null
  rm -rf "$rootfs"
  docker_cli run --rm "$BASE_IMAGE" python3 -c 'import ssl, sys, venv; print("python", sys.version.split()[0])' \
    || die "a container of $BASE_IMAGE does not run python3"
  say "$BASE_IMAGE made in $((SECONDS - started)) s"
}

venv_python() { [[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python"; }

dist_version() {  # the installed version of a distribution in the project's venv (no local +tag)
  local py; py=$(venv_python) || return 0
  "$py" -c "import importlib.metadata as m; print(m.version('$1').split('+')[0])" 2>/dev/null || true
}

# the wheelhouse and the constraints file, served on 127.0.0.1 for the builds; sets SERVE_URL, SERVE_PID
serve_build_inputs() {
  local serve="$STATE/serve"
  mkdir -p "$serve"
  SERVE_URL=""
  if [[ ${TRAFFICLIP_WHEELHOUSE:-} != none && -n $TORCH_VERSION ]]; then
    local house="$STATE/wheelhouse/torch-$TORCH_VERSION-vision-$TORCHVISION_VERSION"
    if [[ ! -f $house/.complete ]]; then
      say "wheelhouse: pip download torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION and their dependencies into $house"
      rm -rf "$house"
      "${PIP[@]}" download --quiet --dest "$house" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
        > "$STATE/wheelhouse.log" 2>&1 || { tail -n 20 "$STATE/wheelhouse.log" >&2; die "pip download failed ($STATE/wheelhouse.log)"; }
      touch "$house/.complete"
    fi
    ln -sfn "$house" "$serve/wheels"
  fi
  local py; py=$(venv_python) || true
  if [[ -n $py ]]; then
    "$py" -m pip freeze --exclude-editable | grep -E '^[A-Za-z0-9_.-]+==' > "$serve/constraints.txt"
  else
    rm -f "$serve/constraints.txt"
  fi
  # a fixed port: the URLs are build arguments, part of the layers' cache keys, so a port that changed from one
  # build to the next would rebuild the torch layer every time
  local port=$SERVE_PORT
  if curl -s --max-time 2 "http://127.0.0.1:$port/" > /dev/null; then
    die "127.0.0.1:$port is taken (the build's file server needs it): set TRAFFICLIP_ENGINE_SERVE_PORT to a free port"
  fi
  (cd "$serve" && exec setsid python3 -m http.server "$port" --bind 127.0.0.1) > "$STATE/serve.log" 2>&1 < /dev/null &
  SERVE_PID=$!
  local waited=0
  until curl -sf --max-time 2 "http://127.0.0.1:$port/" > /dev/null; do
    kill -0 "$SERVE_PID" 2>/dev/null && (( waited++ < 60 )) || die "the build's file server did not start ($STATE/serve.log)"
    sleep 0.5
  done
  SERVE_URL="http://127.0.0.1:$port"
}

build_cli() {  # a client that builds with BuildKit (build secrets, RUN --mount)
  if [[ $(engine_kind) == podman ]]; then
    podman_env; BUILD=(podman build)
  elif docker buildx version > /dev/null 2>&1; then
    BUILD=(docker build)
  elif [[ -x /usr/bin/docker ]]; then
    # Debian's docker.io client has BuildKit built in; a newer docker CLI without the buildx plugin has not
    BUILD=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
  else
    die "no docker client that builds with BuildKit (install docker-buildx, or docker.io's client)"
  fi
}

cmd_build() {
  need_root build
  ensure_up
  image_exists "$BASE_IMAGE" || cmd_base
  local names=("$@"); [[ ${#names[@]} -gt 0 ]] || names=("${PRODUCT_IMAGES[@]}" "${STANDIN_IMAGES[@]}")
  [[ ${names[*]} == stand-ins ]] && names=("${STANDIN_IMAGES[@]}")
  local name
  for name in "${names[@]}"; do
    [[ -n ${IMAGE[$name]:-} ]] || die "unknown image $name (train, airflow, mlflow; stand-ins: postgres, redis, s3)"
  done
  TORCH_VERSION=${TORCH_VERSION:-$(dist_version torch)}
  TORCHVISION_VERSION=${TORCHVISION_VERSION:-$(dist_version torchvision)}
  PIP=(python3 -m pip); [[ -n $(venv_python) ]] && PIP=("$(venv_python)" -m pip)
  serve_build_inputs
  trap 'kill "$SERVE_PID" 2>/dev/null || true' EXIT
  build_cli
  local common=(--network host --build-arg "BASE=$BASE_IMAGE")
  [[ -f $CA_BUNDLE ]] && common+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
  if [[ -n $TORCH_VERSION ]]; then
    common+=(--build-arg "TORCH_VERSION=$TORCH_VERSION" --build-arg "TORCHVISION_VERSION=$TORCHVISION_VERSION")
  fi
  [[ -L $STATE/serve/wheels ]] && common+=(--build-arg "WHEELHOUSE=$SERVE_URL/wheels/")
  local report="$STATE/build-report.txt"
  : > "$report.new"
  for name in "${names[@]}"; do
    local args=("${common[@]}") started=$SECONDS
    if [[ $name == airflow && -f $STATE/serve/constraints.txt ]]; then
      args+=(--build-arg "AIRFLOW_CONSTRAINTS=$SERVE_URL/constraints.txt")
    fi
    say "building ${IMAGE[$name]} (${DOCKERFILE[$name]#"$ROOT"/}; log $STATE/build-$name.log)"
    if ! "${BUILD[@]}" "${args[@]}" -f "${DOCKERFILE[$name]}" -t "${IMAGE[$name]}" "${CONTEXT[$name]}" \
        > "$STATE/build-$name.log" 2>&1; then
      tail -n 40 "$STATE/build-$name.log" >&2
      die "building ${IMAGE[$name]} failed (the whole log: $STATE/build-$name.log)"
    fi
    local size; size=$(docker_cli image inspect -f '{{.Size}}' "${IMAGE[$name]}")
    printf '%-28s built in %4d s, %6d MB\n' "${IMAGE[$name]}" $((SECONDS - started)) $((size / 1000000)) | tee -a "$report.new"
  done
  mv "$report.new" "$report"
  # a rebuilt image leaves its previous build untagged: remove those (the build cache stays), or every
  # change to tasks/ would keep another 7 GB image on the disk
  docker_cli image prune --force > /dev/null || true
}

cmd_down() {
  if pid_alive "$RUNDIR/engine.pid" || pid_alive "$RUNDIR/healthchecks.pid"; then
    stop_daemon
    say "the engine ($(engine_kind)) is stopped (images and volumes kept; $0 up starts it again)"
  else
    rm -f "$RUNDIR/engine.pid" "$RUNDIR/healthchecks.pid"
    say "the engine is not running"
  fi
}

cmd_status() {
  local kind; kind=$(engine_kind)
  echo "engine:   ${kind:-not installed} (state in $STATE)"
  if answering; then echo "running:  yes, export DOCKER_HOST=$DOCKER_HOST"; else echo "running:  no"; return 0; fi
  local image
  local name
  for image in "$BASE_IMAGE" $(for name in "${PRODUCT_IMAGES[@]}" "${STANDIN_IMAGES[@]}"; do echo "${IMAGE[$name]}"; done); do
    if image_exists "$image"; then
      echo "image:    $image $(( $(docker_cli image inspect -f '{{.Size}}' "$image") / 1000000 )) MB"
    else
      echo "image:    $image (not built)"
    fi
  done
}

cmd_teardown() {
  need_root teardown
  if [[ -n $(engine_kind) ]]; then
    answering || start_daemon || true
    if answering; then
      say "removing every container, image and volume of the engine"
      local ids
      ids=$(docker_cli ps -aq); [[ -z $ids ]] || docker_cli rm -f $ids > /dev/null
      ids=$(docker_cli volume ls -q); [[ -z $ids ]] || docker_cli volume rm -f $ids > /dev/null
      ids=$(docker_cli images -aq); [[ -z $ids ]] || docker_cli rmi -f $ids > /dev/null 2>&1 || true
    fi
    stop_daemon
  fi
  # everything lived under the engine's own data root: gone with it (the Debian packages stay installed)
  rm -rf "$STATE" "$RUNDIR"
  say "torn down: $STATE and $RUNDIR removed"
}

case ${1:-} in
  install) shift; cmd_install "$@" ;;
  up) shift; cmd_up "$@" ;;
  base) shift; need_root base; [[ -n $(engine_kind) ]] || die "no engine installed: run $0 install first"; cmd_base "$@" ;;
  build) shift; [[ -n $(engine_kind) ]] || die "no engine installed: run $0 install first"; cmd_build "$@" ;;
  down) shift; cmd_down ;;
  status) shift; cmd_status ;;
  env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
  teardown) shift; cmd_teardown ;;
  -h|--help|help|"") sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; [[ -n ${1:-} ]] ;;
  *) die "unknown subcommand ${1} (install, up, base, build, down, status, env, teardown; --help)" ;;
esac
