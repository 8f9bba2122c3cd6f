#!/usr/bin/env bash
# The Debian package: built with cpack from a configured build tree,
# unpacked with dpkg -x into a scratch folder, and checked file by file.
#
#   test_deb.sh BUILD_DIR SOURCE_DIR
#
# What it checks:
#   - cpack -G DEB builds exactly one remotetask_VERSION_ARCH.deb;
#   - its control data: name, version, maintainer scripts, and Depends
#     holding adduser and the package of every library the two programs
#     link (librabbitmq4, libcurl4, ...: what dpkg-shlibdeps computed);
#   - every installed file is where it belongs, with its mode;
#   - the unpacked programs run (remotetaskd --version, remotetaskctl --help);
#   - the manual pages format without a single groff or man warning, and
#     document every setting of config/config_table.c's table with its default
#     and bounds, every command and option of remotetaskctl, every option
#     of remotetaskd;
#   - the systemd unit passes systemd-analyze verify and keeps an exposure
#     level of at most 2.0 in systemd-analyze security, with the hardening
#     options it promises; the sysusers snippet creates the user;
#   - the maintainer scripts parse, and postinst creates the user only when
#     it is missing (run against stubs, never against this machine);
#   - postinst links BILLmanager's documented path of remotetaskctl,
#     /usr/local/mgr5/sbin/remotetaskctl, to the package's binary only when
#     /usr/local/mgr5/sbin exists, never replaces a file that is not that
#     link, and postrm removes the link only while it is ours (both run
#     against a fake root through DPKG_ROOT, as dpkg sets it).
#
# Needs (Debian packages): cmake (cpack), dpkg-dev (dpkg-shlibdeps),
# binutils (objdump), groff-base, man-db, systemd (systemd-analyze,
# systemd-sysusers), python3. A missing tool is a failure, never a skip.
# Prints "N passed, M failed"; exits 1 when anything failed.
set -u

if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD_DIR SOURCE_DIR" >&2
  exit 2
fi
build=$(cd "$1" && pwd) || exit 2
src=$(cd "$2" && pwd) || exit 2

tmp=$(mktemp -d "${RT_TEST_TMP:-/tmp}/deb.XXXXXX") || exit 2
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

pass() { passed=$((passed + 1)); }
fail() {
  failed=$((failed + 1))
  printf 'FAIL %s\n' "$*"
}
# check NAME CMD...: CMD must succeed.
check() {
  local name=$1
  shift
  if "$@"; then pass; else fail "$name"; fi
}
# quiet NAME CMD...: CMD must succeed and print nothing (on either stream).
quiet() {
  local name=$1 out rc
  shift
  out=$("$@" 2>&1)
  rc=$?
  if [ "$rc" -eq 0 ] && [ -z "$out" ]; then
    pass
  else
    fail "$name: exit $rc, output:"
    printf '%s\n' "$out" | sed 's/^/    /'
  fi
}
finish() {
  printf '%d passed, %d failed\n' "$passed" "$failed"
  [ "$failed" -eq 0 ]
  exit $?
}

# ---- tools ---------------------------------------------------------------

missing=0
for tool in cpack:cmake dpkg-deb:dpkg dpkg-shlibdeps:dpkg-dev objdump:binutils \
  groff:groff-base man:man-db systemd-analyze:systemd systemd-sysusers:systemd \
  python3:python3 gzip:gzip; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    fail "tool ${tool%%:*} is missing: install the Debian package ${tool#*:}"
    missing=1
  fi
done
[ "$missing" -eq 0 ] || finish
[ -f "$build/CPackConfig.cmake" ] || {
  fail "$build/CPackConfig.cmake is missing: configure the tree with dist/ included"
  finish
}

# ---- build the package ----------------------------------------------------

version=$(sed -n 's/^project(remotetask VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
[ -n "$version" ] || fail "cannot read the project version from $src/CMakeLists.txt"
if ! (cd "$build" && cpack -G DEB --config CPackConfig.cmake -B "$tmp/pkg") >"$tmp/cpack.log" 2>&1; then
  fail "cpack -G DEB failed:"
  sed 's/^/    /' "$tmp/cpack.log"
  finish
fi
shopt -s nullglob
debs=("$tmp"/pkg/*.deb)
shopt -u nullglob
if [ ${#debs[@]} -ne 1 ]; then
  fail "cpack made ${#debs[@]} .deb files, wanted 1"
  finish
fi
deb=${debs[0]}
arch=$(dpkg --print-architecture)
check "the package is named remotetask_${version}_$arch.deb (got ${deb##*/})" \
  test "${deb##*/}" = "remotetask_${version}_$arch.deb"

# ---- control data ----------------------------------------------------------

field() { dpkg-deb -f "$deb" "$1"; }
check "Package is remotetask" test "$(field Package)" = remotetask
check "Version is $version" test "$(field Version)" = "$version"
check "Architecture is $arch" test "$(field Architecture)" = "$arch"
check "Maintainer is set" test -n "$(field Maintainer)"
check "Description is set" test -n "$(field Description)"
depends=$(field Depends)
# depends_on PKG: PKG is one of the comma-separated entries of Depends.
depends_on() {
  printf '%s\n' "$depends" | tr ',' '\n' | sed 's/^ *//; s/[ (].*//' | grep -qx -- "$1"
}
for p in adduser libc6 librabbitmq4 libcurl4 libjansson4 libsqlite3-0 libconfig9; do
  check "Depends names $p (Depends: $depends)" depends_on "$p"
done

mkdir -p "$tmp/control"
dpkg-deb -e "$deb" "$tmp/control"
for script in postinst prerm postrm; do
  check "control script $script is there, mode 0755" \
    test "$(stat -c %a "$tmp/control/$script" 2>/dev/null)" = 755
  check "control script $script parses (sh -n)" sh -n "$tmp/control/$script"
done
check "no configuration file is shipped, so no conffiles" test ! -s "$tmp/control/conffiles"

# ---- the files -------------------------------------------------------------

root=$tmp/root
dpkg -x "$deb" "$root"

# has TYPE MODE PATH: PATH in the unpacked tree is a file (f), directory (d)
# or symbolic link (l); MODE in octal, or - for any.
has() {
  local type=$1 mode=$2 path=$3 p=$root$3 ok=0
  case $type in
  f) [ -f "$p" ] && [ ! -L "$p" ] && ok=1 ;;
  d) [ -d "$p" ] && [ ! -L "$p" ] && ok=1 ;;
  l) [ -L "$p" ] && ok=1 ;;
  esac
  if [ "$ok" -eq 1 ] && { [ "$mode" = - ] || [ "$(stat -c %a "$p")" = "$mode" ]; }; then
    pass
  else
    fail "$path: wanted type $type mode $mode, found: $(ls -ld "$p" 2>&1)"
  fi
}
has f 755 /usr/sbin/remotetaskd
has f 755 /usr/sbin/remotetaskctl
has f 644 /lib/systemd/system/remotetaskd@.service
has f 644 /usr/lib/sysusers.d/remotetask.conf
has f 644 /usr/share/man/man8/remotetaskd.8.gz
has f 644 /usr/share/man/man8/remotetaskctl.8.gz
has f 644 /usr/share/man/man5/remotetask.conf.5.gz
has f 644 /usr/share/doc/remotetask/examples/client.conf.example
has f 644 /usr/share/doc/remotetask/examples/server.conf.example
has d - /etc/remotetask
has f 750 /usr/lib/remotetask/remotetask-taskevent
has f 644 /usr/local/mgr5/etc/xml/billmgr_mod_remotetask.xml
has l - /usr/local/mgr5/addon/remotetask-taskevent
check "the addon link points at /usr/lib/remotetask/remotetask-taskevent" \
  test "$(readlink "$root/usr/local/mgr5/addon/remotetask-taskevent")" = \
  /usr/lib/remotetask/remotetask-taskevent
check "/etc/remotetask ships empty (the operator's files are never overwritten)" \
  test -z "$(ls -A "$root/etc/remotetask" 2>/dev/null)"
for f in config/client.conf.example config/server.conf.example dist/remotetask-taskevent \
  dist/billmgr_mod_remotetask.xml; do
  case $f in
  config/*) dest=/usr/share/doc/remotetask/examples/${f#config/} ;;
  dist/remotetask-taskevent) dest=/usr/lib/remotetask/remotetask-taskevent ;;
  dist/*.xml) dest=/usr/local/mgr5/etc/xml/${f#dist/} ;;
  esac
  check "$dest is $f unchanged" cmp -s "$src/$f" "$root$dest"
done
for page in man8/remotetaskd.8 man8/remotetaskctl.8 man5/remotetask.conf.5; do
  check "$page.gz is docs/man/${page#*/} compressed" \
    cmp -s <(gzip -dc "$root/usr/share/man/$page.gz") "$src/docs/man/${page#*/}"
done

# ---- the programs ------------------------------------------------------------

out=$("$root/usr/sbin/remotetaskd" --version 2>&1)
check "unpacked remotetaskd --version prints \"remotetaskd $version\" (got \"$out\")" \
  test "$out" = "remotetaskd $version"
check "unpacked remotetaskctl --help runs and lists its commands" \
  bash -c '"$1" --help | grep -q -- "--command"' _ "$root/usr/sbin/remotetaskctl"

# Every library the programs link comes from a package that Depends names.
declare -A seen=()
for bin in remotetaskd remotetaskctl; do
  for soname in $(objdump -p "$root/usr/sbin/$bin" | awk '$1 == "NEEDED" { print $2 }'); do
    [ -n "${seen[$soname]:-}" ] && continue
    seen[$soname]=1
    lib=$(ldconfig -p | awk -v s="$soname" '$1 == s { print $NF; exit }')
    pkg=""
    for path in "$lib" "/usr$lib" "${lib#/usr}"; do
      [ -n "$path" ] || continue
      pkg=$(dpkg -S "$path" 2>/dev/null | head -n 1 | cut -d: -f1) && [ -n "$pkg" ] && break
    done
    if [ -z "$pkg" ]; then
      fail "$bin links $soname, which no installed package holds"
    else
      check "$bin links $soname from $pkg, which Depends names" depends_on "$pkg"
    fi
  done
done

# ---- manual pages --------------------------------------------------------------

for page in man8/remotetaskd.8 man8/remotetaskctl.8 man5/remotetask.conf.5; do
  gz=$root/usr/share/man/$page.gz
  quiet "groff -man -ww finds nothing to say about $page" \
    bash -c 'gzip -dc "$1" | groff -man -z -ww -Tutf8' _ "$gz"
  quiet "man --warnings finds nothing to say about $page" \
    bash -c 'LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$1" >/dev/null' _ "$gz"
done

# The pages against the code: every setting of the configuration table with
# its default and bounds, every command and option of both programs.
mkdir -p "$tmp/man"
for page in man8/remotetaskd.8 man8/remotetaskctl.8 man5/remotetask.conf.5; do
  gzip -dc "$root/usr/share/man/$page.gz" >"$tmp/man/${page#*/}"
done
python3 - "$src" "$tmp/man" >"$tmp/doccheck.log" 2>&1 <<'PY'
import os
import re
import sys

src, man = sys.argv[1], sys.argv[2]
problems = []
checked = 0


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def blocks(page):
    """Maps the tag of every .TP entry (its first word, escapes removed) to
    the entry's text with \\- turned into -."""
    out = {}
    lines = read(os.path.join(man, page)).split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith(".TP") and i + 1 < len(lines):
            tag = re.sub(r"\\f[BIRP]", "", lines[i + 1])
            tag = re.sub(r"^\.(B|BR|BI|I|IR)\s+", "", tag).replace("\\-", "-").strip('" ')
            body = []
            j = i + 1
            while j < len(lines) and not re.match(r"\.(TP|SH|SS|PP)\b", lines[j]):
                body.append(lines[j])
                j += 1
            key = tag.split()[0] if tag.split() else ""
            out.setdefault(key, "")
            out[key] += "\n".join(body).replace("\\-", "-") + "\n"
            i = j
        else:
            i += 1
    return out


def need(cond, what):
    global checked
    checked += 1
    if not cond:
        problems.append(what)


# remotetask.conf(5) against the table of config/config_table.c and the
# headers it includes.
conf = blocks("remotetask.conf.5")
tc = read(os.path.join(src, "config/config_table.c"))
table = tc[tc.index("const struct item config_items[]"):]
table = table[: table.index("};")]
table = re.sub(r"/\*.*?\*/", "", table, flags=re.S)
items = re.findall(r"\b(STR|INT|BOOL|ENUM|LIST|GROUP)\((.*?)\)\s*,", table, flags=re.S)
need(len(items) > 40, "config_table.c's table was not found (%d items)" % len(items))
# The caps (CONFIG_MAX_*) come from config/'s headers, which the table's file
# includes one through the other (config_int.h, config.h); bounds the table
# takes from the module that owns them (the journal's are the store's) from
# the headers of common/ it includes: every numeric macro of each.
limits = {}
headers = re.findall(r'#include "(\w+\.h)"', tc)
seen = set()
while headers:
    hdr = headers.pop(0)
    if hdr in seen:
        continue
    seen.add(hdr)
    if os.path.exists(os.path.join(src, "config", hdr)):
        text = read(os.path.join(src, "config", hdr))
        headers += re.findall(r'#include "(\w+\.h)"', text)
    elif os.path.exists(os.path.join(src, "common", hdr)):
        text = read(os.path.join(src, "common", hdr))
    else:
        continue
    limits.update(re.findall(r"#define\s+(\w+)\s+(\d+)\b", text))
for kind, args in items:
    a = [x.strip() for x in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", args)]
    path = a[0].strip('"')
    if kind == "GROUP":
        continue
    b = conf.get(path)
    need(b is not None, "remotetask.conf(5) has no entry for %s" % path)
    if b is None:
        continue
    if kind == "STR":
        default = a[3]
        if default == "NULL":
            need("ITEM_REQUIRED" not in a[2] or "Required" in b,
                 "%s: required, the page does not say so" % path)
        else:
            need('Default \\fB%s\\fR' % default in b,
                 "%s: default %s not in the page" % (path, default))
        hi = a[5]
        if hi.isdigit() and hi not in ("4096",) and a[1] != "IT_SECRET":
            need(hi in b, "%s: length bound %s not in the page" % (path, hi))
    elif kind == "INT":
        default, lo, hi = (limits.get(x, x) for x in (a[2], a[3], a[4]))
        need("Default \\fB%s\\fR" % default in b, "%s: default %s not in the page" % (path, default))
        need("%s to %s" % (lo, hi) in b or re.search(r"%s to \\fB[a-z_.]+\\fR" % lo, b),
             "%s: bounds %s to %s not in the page" % (path, lo, hi))
    elif kind == "BOOL":
        default = "true" if a[1] == "1" else "false"
        need("Default \\fB%s\\fR" % default in b, "%s: default %s not in the page" % (path, default))
    elif kind == "ENUM":
        default, values = a[2], a[3].strip('"').split("|")
        need("Default \\fB%s\\fR" % default in b, "%s: default %s not in the page" % (path, default))
        for v in values:
            need('\\fB"%s"\\fR' % v in b, "%s: value \"%s\" not in the page" % (path, v))
    elif kind == "LIST":
        cap = {"client.departments": "CONFIG_MAX_DEPARTMENTS",
               "client.performers": "CONFIG_MAX_PERFORMERS",
               "server.clients": "CONFIG_MAX_CLIENTS",
               "amqp.uri": "CONFIG_MAX_AMQP_NODES"}.get(path)
        need(cap is not None and "at most %s entries" % limits.get(cap, "?") in b,
             "%s: its cap is not in the page" % path)

# remotetaskctl(8) against ctl/remotetaskctl.c, remotetaskd(8) against
# bridge/main.c: every command and every long option.
ctl = blocks("remotetaskctl.8")
ctl_text = read(os.path.join(man, "remotetaskctl.8")).replace("\\-", "-")
ctl_src = read(os.path.join(src, "ctl/remotetaskctl.c"))
cmds = re.findall(r'\{"([a-z]+)", ctl_\w+,', ctl_src)
need(len(cmds) >= 2, "ctl/remotetaskctl.c's command table was not found")
for c in cmds + ["check", "taskevent", "checkevent", "status", "resync", "dlq"]:
    need(c in ctl, "remotetaskctl(8) has no entry for the command %s" % c)
for sub in ["dlq list", "dlq replay", "dlq purge"]:
    need(re.search(r"^\.B %s\b" % sub, ctl_text, flags=re.M),
         "remotetaskctl(8) has no entry for %s" % sub)
for opt in re.findall(r'\{"([a-z-]+)", (?:required|no)_argument', ctl_src):
    need("--" + opt in ctl_text, "remotetaskctl(8) does not document --%s" % opt)
need("PARAM_elid" in ctl_text, "remotetaskctl(8) does not document PARAM_elid")
d_text = read(os.path.join(man, "remotetaskd.8")).replace("\\-", "-")
d_src = read(os.path.join(src, "bridge/main.c"))
for opt in re.findall(r'\{"([a-z-]+)", (?:required|no)_argument', d_src):
    need("--" + opt in d_text, "remotetaskd(8) does not document --%s" % opt)
for sig in ["SIGTERM", "SIGINT", "SIGHUP"]:
    need(sig in d_text, "remotetaskd(8) does not document %s" % sig)
for page, text in (("remotetaskd(8)", d_text), ("remotetaskctl(8)", ctl_text)):
    need(".SH EXIT STATUS" in text, "%s has no EXIT STATUS section" % page)

for p in problems:
    print(p)
print("%d checks, %d problems" % (checked, len(problems)))
sys.exit(1 if problems else 0)
PY
if [ $? -eq 0 ]; then
  pass
else
  fail "the manual pages disagree with the code:"
  sed 's/^/    /' "$tmp/doccheck.log"
fi

# ---- systemd ---------------------------------------------------------------------

unit=$root/lib/systemd/system/remotetaskd@.service
for directive in 'User=remotetask' 'Type=simple' 'Restart=on-failure' 'RestartSec=5' \
  'TimeoutStopSec=30' 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ProtectHome=yes' \
  'PrivateTmp=yes' 'PrivateDevices=yes' 'ProtectKernelTunables=yes' \
  'ProtectKernelModules=yes' 'ProtectKernelLogs=yes' 'ProtectControlGroups=yes' \
  'RestrictNamespaces=yes' 'LockPersonality=yes' 'MemoryDenyWriteExecute=yes' \
  'SystemCallArchitectures=native' 'SystemCallFilter=@system-service' \
  'CapabilityBoundingSet=' 'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK' \
  'StateDirectory=remotetask remotetask/%i' 'RuntimeDirectory=remotetask remotetask/%i' \
  'RuntimeDirectoryPreserve=yes' 'ExecStartPre=/usr/sbin/remotetaskd -n -c /etc/remotetask/%i.conf' \
  'ExecStart=/usr/sbin/remotetaskd -c /etc/remotetask/%i.conf' \
  'ExecReload=/bin/kill -HUP $MAINPID' 'LimitCORE=0'; do
  check "the unit says $directive" grep -qxF -- "$directive" "$unit"
done
check "the unit has no placeholder left" bash -c '! grep -q "@[A-Z_]*@" "$1"' _ "$unit"

# systemd-analyze verify in a root made of the unpacked package, the
# system's targets and slices, and kill (ExecReload): it then checks the
# unit's syntax, that its programs exist in the package, and that its
# Documentation= pages are the package's (MANPATH). It reports problems on
# stderr, some of them with exit status 0: any output is a failure.
vroot=$tmp/vroot
cp -a "$root" "$vroot"
mkdir -p "$vroot/usr/lib/systemd/system" "$vroot/bin"
for f in /lib/systemd/system/*.target /lib/systemd/system/*.slice; do
  [ -e "$vroot$f" ] || cp -a "$f" "$vroot/usr/lib/systemd/system/"
done
cp "$(type -P kill)" "$vroot/bin/kill"
quiet "systemd-analyze verify remotetaskd@test.service" \
  env MANPATH="$vroot/usr/share/man" systemd-analyze verify --root="$vroot" remotetaskd@test.service
# The exposure level (0 best .. 10 worst), in tenths for --threshold.
quiet "systemd-analyze security rates remotetaskd@test.service at most 2.0" \
  bash -c 'systemd-analyze security --offline=yes --root="$1" --threshold=20 \
    remotetaskd@test.service >"$2" 2>&1 || { cat "$2"; exit 1; }' _ "$vroot" "$tmp/security.log"
out=$(systemd-sysusers --root="$vroot" --dry-run 2>&1)
check "systemd-sysusers creates the user remotetask from the package's snippet (got: $out)" \
  grep -q "Creating user 'remotetask'" <<<"$out"

# ---- postinst, against stubs ---------------------------------------------------------

# Every program postinst may run is a stub that logs its arguments, so
# that the script runs here without touching this machine's users or
# files. STUB_USER_EXISTS says whether getent finds the user. The scripts
# run with DPKG_ROOT set to a fake root, so that what they do to files
# (the link into BILLmanager's directory) happens there.
stubs=$tmp/stubs
mkdir -p "$stubs"
for prog in getent adduser addgroup chown chmod systemctl; do
  cat >"$stubs/$prog" <<EOF
#!/bin/sh
echo "$prog \$*" >>"$tmp/stub.log"
if [ "$prog" = getent ]; then [ "\${STUB_USER_EXISTS:-0}" = 1 ]; exit \$?; fi
exit 0
EOF
  chmod 755 "$stubs/$prog"
done
fakeroot=$tmp/fakeroot
mkdir -p "$fakeroot"
run_postinst() {
  : >"$tmp/stub.log"
  env PATH="$stubs:$PATH" STUB_USER_EXISTS="$1" DPKG_ROOT="$fakeroot" \
    sh "$tmp/control/postinst" configure "" >/dev/null 2>&1
}
check "postinst configure succeeds for a new user" run_postinst 0
check "postinst creates a missing user with adduser --system" \
  grep -q '^adduser --system .*remotetask$' "$tmp/stub.log"
check "postinst sets the user's home to /var/lib/remotetask and no login shell" \
  grep -q '^adduser .*--home /var/lib/remotetask .*--shell /usr/sbin/nologin' "$tmp/stub.log"
check "postinst configure succeeds for an existing user" run_postinst 1
check "postinst does not create an existing user" bash -c '! grep -q "^add" "$1"' _ "$tmp/stub.log"
check "postinst refuses an unknown action" \
  bash -c '! env PATH="$1:$PATH" DPKG_ROOT="$3" sh "$2" bogus >/dev/null 2>&1' _ "$stubs" \
  "$tmp/control/postinst" "$fakeroot"

# ---- BILLmanager's path of remotetaskctl, against a fake root ------------------

# maint SCRIPT ACTION [ARG]: runs a maintainer script against the fake
# root with the stubs; its stderr goes to $tmp/maint.err.
maint() {
  env PATH="$stubs:$PATH" STUB_USER_EXISTS=1 DPKG_ROOT="$fakeroot" \
    sh "$tmp/control/$1" "${@:2}" >/dev/null 2>"$tmp/maint.err"
}
mgr_link=/usr/local/mgr5/sbin/remotetaskctl
link=$fakeroot$mgr_link
rm -rf "$fakeroot"
mkdir -p "$fakeroot"

# Without BILLmanager: nothing is made, not even its directory.
check "postinst configure succeeds without /usr/local/mgr5" maint postinst configure ""
check "postinst makes no link and no directory without BILLmanager" \
  test ! -e "$fakeroot/usr/local/mgr5/sbin" -a ! -L "$link"
# The package's own files under /usr/local/mgr5 (etc/xml, addon) do not
# count as BILLmanager.
mkdir -p "$fakeroot/usr/local/mgr5/etc/xml" "$fakeroot/usr/local/mgr5/addon"
check "postinst configure succeeds with only the package's mgr5 directories" \
  maint postinst configure ""
check "postinst makes no link while /usr/local/mgr5/sbin is missing" test ! -L "$link"

# With BILLmanager: the link, to the binary the package installs.
mkdir -p "$fakeroot/usr/local/mgr5/sbin"
check "postinst configure succeeds with BILLmanager" maint postinst configure ""
check "postinst links $mgr_link (found: $(ls -l "$link" 2>&1))" test -L "$link"
target=$(readlink "$link")
check "the link points at /usr/sbin/remotetaskctl (got \"$target\")" \
  test "$target" = /usr/sbin/remotetaskctl
check "the link's target is the package's remotetaskctl" test -x "$root$target" -a -f "$root$target"
check "postinst configure again (an upgrade) succeeds and keeps the link" \
  bash -c 'env PATH="$1:$PATH" STUB_USER_EXISTS=1 DPKG_ROOT="$2" sh "$3" configure 0.0.9 \
    >/dev/null 2>&1 && [ "$(readlink "$2/usr/local/mgr5/sbin/remotetaskctl")" = /usr/sbin/remotetaskctl ]' \
  _ "$stubs" "$fakeroot" "$tmp/control/postinst"

# postrm remove takes our link away; purge after it is fine.
check "postrm remove succeeds" maint postrm remove
check "postrm remove deletes our link" test ! -L "$link" -a ! -e "$link"
check "postrm purge succeeds after remove" maint postrm purge
check "postrm leaves BILLmanager's directory" test -d "$fakeroot/usr/local/mgr5/sbin"

# A file that is not our link is never replaced nor removed: BILLmanager's
# own file, and a link elsewhere.
printf '#!/bin/sh\necho theirs\n' >"$link"
check "postinst configure succeeds over a file of someone else's" maint postinst configure ""
check "postinst leaves that file as it was" \
  bash -c '[ ! -L "$1" ] && [ "$(cat "$1")" = "$(printf "#!/bin/sh\necho theirs")" ]' _ "$link"
check "postinst says it left it (stderr: $(cat "$tmp/maint.err"))" \
  grep -q "$mgr_link exists and is not a link to /usr/sbin/remotetaskctl: left as it is" \
  "$tmp/maint.err"
check "postrm remove succeeds over a file of someone else's" maint postrm remove
check "postrm leaves that file" test -f "$link" -a ! -L "$link"
rm -f "$link"
ln -s /opt/other/remotetaskctl "$link"
check "postinst configure succeeds over a link elsewhere" maint postinst configure ""
check "postinst leaves a link elsewhere as it was" \
  test "$(readlink "$link")" = /opt/other/remotetaskctl
check "postrm remove leaves a link elsewhere" \
  bash -c 'env PATH="$1:$PATH" DPKG_ROOT="$2" sh "$3" remove >/dev/null 2>&1 &&
    [ "$(readlink "$2/usr/local/mgr5/sbin/remotetaskctl")" = /opt/other/remotetaskctl ]' \
  _ "$stubs" "$fakeroot" "$tmp/control/postrm"

finish
