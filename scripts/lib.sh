# scripts/lib.sh - what scripts/test and scripts/demo share. Sourced, not run.
#
# rt_install_deps   installs the Debian packages the build, the tests and the
#                   demo need; does nothing (and needs no network) when they
#                   are all present.
# rt_build DIR ARGS configures and builds into DIR with extra cmake ARGS.
# rt_sim_start NAME DIR SEED   starts an emulated BILLmanager, waits until it
#                   is ready and sets ${NAME}_URL, ${NAME}_ADMIN, ${NAME}_PID.

RT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

RT_PACKAGES=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  librabbitmq-dev libmsgpack-dev libcurl4-openssl-dev libconfig-dev libjansson-dev
  libsqlite3-dev libmicrohttpd-dev libcmocka-dev libxxhash-dev libssl-dev
  rabbitmq-server openssl python3 sqlite3 procps prometheus dpkg-dev groff-base man-db systemd binutils
)

rt_log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }

rt_install_deps() {
  local missing=() p
  for p in "${RT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  rt_log "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Installing rabbitmq-server must not start the system service: the tests
  # run a private node on free ports. policy-rc.d 101 tells invoke-rc.d
  # "not now" for the duration of the install only.
  local policy=/usr/sbin/policy-rc.d placed=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    placed=1
  fi
  local rc=0
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || rc=$?
  [ $rc -eq 0 ] && { $sudo env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?; }
  [ $placed -eq 1 ] && $sudo rm -f "$policy"
  if [ $rc -ne 0 ]; then
    rt_log "apt-get failed (exit $rc) installing: ${missing[*]}"
    return $rc
  fi
}

rt_build() {
  local dir=$1
  shift
  cmake -S "$RT_ROOT" -B "$dir" "$@" >"$dir.cmake.log" 2>&1 || {
    cat "$dir.cmake.log" >&2
    return 1
  }
  cmake --build "$dir" -j "$(nproc)" >"$dir.build.log" 2>&1 || {
    grep -E 'error|Error' -A3 "$dir.build.log" | head -60 >&2
    return 1
  }
}

# Waits until FILE exists or DEADLINE seconds pass; returns 1 on time-out.
rt_wait_file() {
  local file=$1 deadline=$((SECONDS + $2))
  while [ ! -s "$file" ]; do
    [ $SECONDS -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# rt_sim_start NAME DIR SEEDFILE: an emulated BILLmanager with its own db.
rt_sim_start() {
  local name=$1 dir=$2 seed=$3
  mkdir -p "$dir"
  rm -f "$dir/ready.json"
  python3 "$RT_ROOT/tests/sim/billsim.py" --db "$dir/sim.db" --port 0 --admin-port 0 \
    --seed "$seed" --ready-file "$dir/ready.json" --log-file "$dir/sim.log" &
  local pid=$!
  if ! rt_wait_file "$dir/ready.json" 30; then
    rt_log "emulator $name did not become ready within 30 s; its log:"
    cat "$dir/sim.log" >&2 || true
    return 1
  fi
  local port admin
  port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$dir/ready.json")
  admin=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin_port"])' "$dir/ready.json")
  printf -v "${name}_URL" 'http://127.0.0.1:%s/billmgr' "$port"
  printf -v "${name}_ADMIN" 'http://127.0.0.1:%s' "$admin"
  printf -v "${name}_PID" '%s' "$pid"
}

rt_sim_stop() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
