#!/usr/bin/env bash
# The command lines of remotetaskd and remotetaskctl, run as real processes:
# exit statuses and the lines an operator reads.
#   test_cli.sh REMOTETASKD REMOTETASKCTL SOURCE_DIR
set -u
daemon=$1 ctl=$2 src=$3
tmp=$(mktemp -d "${RT_TEST_TMP:-/tmp}/cli.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

# expect NAME WANT_STATUS WANT_TEXT CMD...: runs CMD, checks its exit status
# and that its output (stdout+stderr) holds WANT_TEXT.
expect() {
  local name=$1 want=$2 text=$3
  shift 3
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  if [ "$rc" -eq "$want" ] && grep -qF -- "$text" <<<"$out"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    printf 'FAIL %s: exit %s (wanted %s), output:\n%s\n(wanted text: %s)\n' \
      "$name" "$rc" "$want" "$out" "$text"
  fi
}

# A copy of an example whose password files exist, private, in $tmp.
printf 'amqp-secret\n' >"$tmp/amqp.password"
printf 'billmgr-secret\n' >"$tmp/billmgr.password"
chmod 600 "$tmp/amqp.password" "$tmp/billmgr.password"
for role in client server; do
  sed -E -e "s#^([[:space:]]*)(\#[[:space:]]*)?password_file[[:space:]]*=.*amqp[^\"]*\"#\1password_file = \"$tmp/amqp.password\"#" \
    -e "s#^([[:space:]]*)(\#[[:space:]]*)?password_file[[:space:]]*=.*billmgr[^\"]*\"#\1password_file = \"$tmp/billmgr.password\"#" \
    -e "s#^([[:space:]]*state_dir[[:space:]]*=).*#\1 \"$tmp/state\";#" \
    "$src/config/$role.conf.example" >"$tmp/$role.conf"
  expect "remotetaskd -n accepts the $role example" 0 "configuration OK" "$daemon" -n -c "$tmp/$role.conf"
done

# A broken file: the error names the file and the line.
cp "$tmp/client.conf" "$tmp/broken.conf"
printf 'amqp: { prefetch = ; };\n' >>"$tmp/broken.conf"
line=$(wc -l <"$tmp/broken.conf")
expect "remotetaskd -n rejects a syntax error with its line" 1 "$tmp/broken.conf:$line" \
  "$daemon" -n -c "$tmp/broken.conf"
expect "remotetaskd -n says nothing is OK on error" 1 "" "$daemon" -n -c "$tmp/missing.conf"
out=$("$daemon" -n -c "$tmp/broken.conf" 2>&1)
if grep -q "configuration OK" <<<"$out"; then
  failed=$((failed + 1)); echo "FAIL a broken file printed configuration OK"
else
  passed=$((passed + 1))
fi

# A value out of bounds: file, line and setting.
sed -E 's#^([[:space:]]*)\#?[[:space:]]*prefetch[[:space:]]*=.*#\1prefetch = 0;#' "$tmp/client.conf" >"$tmp/bounds.conf"
if grep -q 'prefetch = 0;' "$tmp/bounds.conf"; then
  line=$(grep -n 'prefetch = 0;' "$tmp/bounds.conf" | head -1 | cut -d: -f1)
  expect "an out-of-bounds prefetch names file, line and setting" 1 \
    "$tmp/bounds.conf:$line: amqp.prefetch" "$daemon" -n -c "$tmp/bounds.conf"
else
  failed=$((failed + 1)); echo "FAIL the client example has no prefetch line to change"
fi

# A password file readable by others is refused, and the password never shown.
chmod 644 "$tmp/amqp.password"
expect "a world-readable password file is refused" 1 "readable by group or others" \
  "$daemon" -n -c "$tmp/client.conf"
if "$daemon" -n -c "$tmp/client.conf" 2>&1 | grep -q "amqp-secret"; then
  failed=$((failed + 1)); echo "FAIL the password reached the error line"
else
  passed=$((passed + 1))
fi
chmod 600 "$tmp/amqp.password"

# Command lines.
expect "remotetaskd rejects an unknown option" 2 "usage" "$daemon" --frobnicate
expect "remotetaskd --version" 0 "remotetaskd" "$daemon" --version
expect "remotetaskctl needs --command" 2 "--command is required" "$ctl" -c "$tmp/client.conf"
expect "remotetaskctl rejects an unknown command" 2 'unknown command "frob"' \
  "$ctl" -c "$tmp/client.conf" --command frob
expect "remotetaskctl rejects a bad --elid" 2 '--elid: "12x" is not a task id' \
  "$ctl" -c "$tmp/client.conf" --command check --elid 12x
expect "remotetaskctl check fails on a broken file, naming it" 1 "$tmp/broken.conf" \
  "$ctl" -c "$tmp/broken.conf" --command check

# check NAME CMD...: CMD must succeed.
check() {
  local name=$1
  shift
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    printf 'FAIL %s\n' "$name"
  fi
}

# ---- remotetaskctl without -c (issue 11, item 5) ---------------------------
# BILLmanager's documentation runs "remotetaskctl --command checkevent" with
# no -c: the configuration is then the one *.conf of the configuration
# directory ($REMOTETASK_CONF_DIR here, RT_CONF_DIR by default).

expect "remotetaskctl --help names the default configuration directory" 0 \
  "the only *.conf in" "$ctl" --help
mkdir -p "$tmp/conf0" "$tmp/conf1" "$tmp/conf2"
# Not configuration files: other names, hidden files, editor backups, a
# directory named like one.
touch "$tmp/conf0/notes.txt" "$tmp/conf0/.hidden.conf" "$tmp/conf0/old.conf~"
mkdir "$tmp/conf0/dir.conf"
cp -r "$tmp/conf0/." "$tmp/conf1/"
expect "no *.conf: exit 2, naming the directory and -c" 2 \
  "no configuration file (*.conf) in \"$tmp/conf0\": pass -c FILE" \
  env REMOTETASK_CONF_DIR="$tmp/conf0" "$ctl" --command check
expect "an unreadable directory: exit 2, naming it and -c" 2 \
  "the configuration directory \"$tmp/missing\" cannot be read" \
  env REMOTETASK_CONF_DIR="$tmp/missing" "$ctl" --command checkevent
# One file (the broken one, whose error names the file it read).
cp "$tmp/broken.conf" "$tmp/conf1/only.conf"
expect "one *.conf: it is the configuration (check names it)" 1 "$tmp/conf1/only.conf:" \
  env REMOTETASK_CONF_DIR="$tmp/conf1" "$ctl" --command check
# A symbolic link to a file counts as the file.
ln -s "$tmp/broken.conf" "$tmp/conf0/linked.conf"
expect "one *.conf that is a link: it is the configuration" 1 "$tmp/conf0/linked.conf:" \
  env REMOTETASK_CONF_DIR="$tmp/conf0" "$ctl" --command check
rm "$tmp/conf0/linked.conf"
# Several: exit 2, listing them.
cp "$tmp/client.conf" "$tmp/conf2/b.conf"
cp "$tmp/server.conf" "$tmp/conf2/a.conf"
expect "several *.conf: exit 2, listing them and saying -c" 2 \
  "holds 2 configuration files: a.conf, b.conf; pass -c FILE" \
  env REMOTETASK_CONF_DIR="$tmp/conf2" "$ctl" --command checkevent
expect "-c wins over the directory" 1 "$tmp/broken.conf:" \
  env REMOTETASK_CONF_DIR="$tmp/conf2" "$ctl" -c "$tmp/broken.conf" --command check
expect "a wrong command line is exit 2 before the directory is looked at" 2 \
  'unknown command "frob"' env REMOTETASK_CONF_DIR="$tmp/conf2" "$ctl" --command frob

# ---- core dumps off (issue 13, item 5) ---------------------------------------
# Both programs hold passwords: each sets RLIMIT_CORE to 0 (soft and hard;
# ASan sets only the soft limit of its own) and makes itself not dumpable.
# The dumpable flag is seen from outside in the owner of /proc/PID/status:
# root for a process that is not dumpable, the process's own uid
# otherwise (proc(5)). Seen as root it would be root either way, so the
# programs run here as an unprivileged user, beside a control process of
# the same user (sleep) that shows the other case.

nobody=65534
# setpriv execs the program: $! of "${asuser[@]}" PROG & is PROG's pid.
asuser=(setpriv --reuid=$nobody --regid=$nobody --clear-groups)
# wait_for NAME CMD...: runs CMD every 100 ms until it succeeds, for up
# to 30 s (CMD's arguments are expanded once: what changes must be looked
# at inside CMD).
wait_for() {
  local name=$1 i
  shift
  for i in $(seq 300); do
    "$@" && return 0
    sleep 0.1
  done
  failed=$((failed + 1))
  printf 'FAIL %s did not happen within 30 s\n' "$name"
  return 1
}
owner() { stat -c %u "/proc/$1/status" 2>/dev/null; }
owned_by() { [ "$(owner "$1")" = "$2" ]; }
core_limits() { awk '/^Max core file size/ { print $5, $6 }' "/proc/$1/limits" 2>/dev/null; }

if [ "$(id -u)" != 0 ] || ! command -v setpriv >/dev/null; then
  failed=$((failed + 1))
  echo "FAIL the core dump checks run the programs as uid $nobody: they need root and setpriv (util-linux)"
else
  # Whatever this part starts is stopped on any exit, before $tmp goes.
  started=""
  trap 'kill $started 2>/dev/null; rm -rf "$tmp"' EXIT
  chmod 0711 "$tmp"
  home=$tmp/asuser
  mkdir -p "$home/state"
  cp "$tmp/amqp.password" "$tmp/billmgr.password" "$home/"
  sed -e "s#$tmp/amqp.password#$home/amqp.password#; s#$tmp/billmgr.password#$home/billmgr.password#" \
    -e "s#$tmp/state#$home/state#" \
    -e "s@^[#[:space:]]*control_socket[[:space:]]*=.*@control_socket = \"$home/ctl.sock\";@" \
    "$tmp/client.conf" >"$home/client.conf"
  chown -R $nobody:$nobody "$home"
  chmod 0700 "$home"

  "${asuser[@]}" sleep 120 &
  control=$!
  started="$started $control"
  wait_for "the control process runs as uid $nobody" owned_by $control $nobody
  check "a dumpable process of uid $nobody owns its /proc/PID/status (got $(owner $control))" \
    test "$(owner $control)" = $nobody
  check "the hard core limit here is not 0 already (got \"$(core_limits $control)\")" \
    test "$(core_limits $control | cut -d' ' -f2)" != 0
  kill $control 2>/dev/null
  wait $control 2>/dev/null

  # The daemon: it runs (no broker or API here: it retries) and answers on
  # its socket.
  "${asuser[@]}" "$daemon" -c "$home/client.conf" >"$tmp/asuser.log" 2>&1 &
  dpid=$!
  started="$started $dpid"
  if wait_for "remotetaskd as uid $nobody makes its control socket" test -S "$home/ctl.sock"; then
    check "remotetaskd is not dumpable: /proc/PID/status is root's (got $(owner $dpid))" \
      test "$(owner $dpid)" = 0
    check "remotetaskd's core limit is 0, soft and hard (got \"$(core_limits $dpid)\")" \
      test "$(core_limits $dpid)" = "0 0"
  fi
  kill -TERM $dpid 2>/dev/null
  wait $dpid
  rc=$?
  check "remotetaskd as uid $nobody stops with status 0 (got $rc)" test $rc -eq 0
  check "remotetaskd's sanitizers still work when it is not dumpable: no report, no failure" \
    bash -c '! grep -E "Sanitizer|runtime error" "$1"' _ "$tmp/asuser.log"

  # remotetaskctl, caught while it waits for a daemon that accepted and
  # never answers.
  python3 - "$home/fake.sock" "$home/accepted" <<'PY' &
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
s.listen(1)
c, _ = s.accept()
open(sys.argv[2], "w").close()
time.sleep(60)
PY
  fake=$!
  started="$started $fake"
  sed -i "s@^control_socket = .*@control_socket = \"$home/fake.sock\";@" "$home/client.conf"
  wait_for "the fake daemon listens" test -S "$home/fake.sock"
  "${asuser[@]}" "$ctl" -c "$home/client.conf" --command checkevent --timeout 50 >/dev/null 2>&1 &
  cpid=$!
  started="$started $cpid"
  if wait_for "remotetaskctl as uid $nobody connects" test -e "$home/accepted"; then
    check "remotetaskctl is not dumpable: /proc/PID/status is root's (got $(owner $cpid))" \
      test "$(owner $cpid)" = 0
    check "remotetaskctl's core limit is 0, soft and hard (got \"$(core_limits $cpid)\")" \
      test "$(core_limits $cpid)" = "0 0"
  fi
  kill $cpid $fake 2>/dev/null
  wait $cpid $fake 2>/dev/null
fi

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
