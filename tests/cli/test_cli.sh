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

echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
