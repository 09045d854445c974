#!/usr/bin/env bash
# Runs etcd 3.4's own end-to-end tests (the `tests/e2e` package of Debian's
# golang-etcd-server-dev, etcd v3.4.23) with oxcd as the `etcd` binary and Debian's real
# `etcdctl` as the client.
#
# usage: e2e/run.sh [--all] [--bin PATH] [REGEX]
#   (no REGEX)  run the tests named in e2e/expected-pass.txt; fail if any of them fails
#   REGEX       run the tests matching a Go test regex (report only; exit 1 on any failure)
#   --all       run all 243 tests and print a table (for COMPATIBILITY.md)
#   --bin PATH  the server binary (default: target/debug/oxcd, built by `cargo build`)
#
# Each test runs alone, under a time limit, in a private network + PID namespace where one
# exists (`unshare`): the suite's fixed ports cannot clash with anything else and every
# process a test started dies with it. Without namespaces (a container that forbids them)
# tests run on the host one at a time.
#
# Environment: E2E_DIR (work dir, default target/e2e), E2E_TIMEOUT (seconds per test,
# default 90).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

all=0
bin=$root/target/debug/oxcd
regex=
while (($#)); do
  case $1 in
    --all) all=1 ;;
    --bin) bin=$(readlink -f "$2"); shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) regex=$1 ;;
  esac
  shift
done

work=${E2E_DIR:-$root/target/e2e}
limit=${E2E_TIMEOUT:-90}
src=/usr/share/gocode/src/go.etcd.io/etcd
mkdir -p "$work"
work=$(readlink -f "$work")

# 1. What the suite needs: Go, etcd's sources with their TLS fixtures, etcdctl, curl.
need=()
for p in golang-go golang-etcd-server-dev etcd-client curl iproute2 util-linux; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "e2e: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
    { echo "e2e: cannot install ${need[*]} (run as root)" >&2; exit 2; }
fi
[[ -x $bin ]] || { echo "e2e: no server binary at $bin (cargo build first)" >&2; exit 2; }

# 2. Compile the suite once per package version (GOPATH mode against Debian's Go packages).
version=$(dpkg-query -W -f='${Version}' golang-etcd-server-dev)
testbin=$work/e2e-$version.test
if [[ ! -x $testbin ]]; then
  echo "e2e: compiling etcd $version's tests/e2e"
  (cd "$src/tests/e2e" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
     GOCACHE="$work/gocache" go test -c -o "$testbin.tmp" .) || exit 2
  mv "$testbin.tmp" "$testbin"
fi

# 3. The layout the tests expect around their working directory (tests/e2e): the TLS
# fixtures at ../../integration/fixtures, and bin/etcd, bin/etcdctl.
tree=$work/tree
mkdir -p "$tree/tests/e2e" "$work/bin"
ln -sfn "$src/integration" "$tree/integration"
ln -sfn "$bin" "$work/bin/etcd"
ln -sfn /usr/bin/etcdctl "$work/bin/etcdctl"

# TestEtcdExampleConfig starts the server with etcd's example configuration file
# (../../etcd.conf.yml.sample), which Debian ships only in the source package: take it
# from the etcd source package of the installed version (private apt state under $work).
sample=$tree/etcd.conf.yml.sample
if [[ ! -s $sample ]]; then
  apt=$work/apt
  mkdir -p "$apt/parts" "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/src"
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/*.sources > "$apt/parts/src.sources" 2>/dev/null
  aptopts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$apt/parts"
           -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache")
  srcpkg=$(dpkg-query -W -f='${source:Package}' golang-etcd-server-dev)
  if apt-get -qq "${aptopts[@]}" update >/dev/null 2>&1 &&
     (cd "$apt/src" && apt-get -qq "${aptopts[@]}" source --download-only "$srcpkg=$version" >/dev/null 2>&1); then
    tar -xzf "$apt/src/${srcpkg}_${version%%-*}.orig.tar.gz" --wildcards -O '*/etcd.conf.yml.sample' > "$sample.tmp" &&
      mv "$sample.tmp" "$sample"
  fi
  [[ -s $sample ]] || echo "e2e: cannot fetch etcd.conf.yml.sample from Debian's $srcpkg source package" >&2
fi

isolate=0
unshare --net --pid --fork --kill-child sh -c 'ip link set lo up' 2>/dev/null && isolate=1

expected=$root/e2e/expected-pass.txt
if ((all)); then
  mapfile -t tests < <("$testbin" -test.list '.*' | grep '^Test')
elif [[ -n $regex ]]; then
  mapfile -t tests < <("$testbin" -test.list "$regex" | grep '^Test')
else
  mapfile -t tests < <(grep -v '^#' "$expected" | grep .)
fi

# Leave nothing of the caller's etcd settings in the tests' environment.
for v in $(compgen -e); do
  case $v in ETCD_*|ETCDCTL_*) unset "$v" ;; esac
done

logs=$work/logs
rm -rf "$logs"; mkdir -p "$logs"
echo "e2e: ${#tests[@]} tests, server $(readlink -f "$bin"), isolate=$isolate, logs in $logs"
pass=0 fail=0
failed=()
summary=$work/summary.tsv
: > "$summary"
for t in "${tests[@]}"; do
  tmp=$work/tmp/$t
  rm -rf "$tmp"; mkdir -p "$tmp"
  # TestCtlV3Migrate relies on an earlier v2 test having enabled v2 in the shared
  # configuration (the suite normally runs in one process, in file order).
  run="^($t)\$"
  [[ $t == TestCtlV3Migrate ]] && run="^(TestCtlV2Set|$t)\$"
  args=(-test.v -test.run "$run" -test.timeout "${limit}s" -test.count 1
        -bin-dir "$work/bin" -cert-dir "$src/integration/fixtures")
  start=$(date +%s)
  if ((isolate)); then
    (cd "$tree/tests/e2e" && TMPDIR=$tmp timeout -k 10 $((limit + 20)) \
      unshare --net --pid --fork --kill-child sh -c 'ip link set lo up && exec "$@"' sh \
      "$testbin" "${args[@]}") >"$logs/$t.log" 2>&1
  else
    (cd "$tree/tests/e2e" && TMPDIR=$tmp timeout -k 10 $((limit + 20)) \
      "$testbin" "${args[@]}") >"$logs/$t.log" 2>&1
  fi
  secs=$(($(date +%s) - start))
  if grep -q "^--- PASS: $t " "$logs/$t.log"; then
    result=PASS; pass=$((pass + 1))
  elif grep -q "^--- SKIP: $t " "$logs/$t.log"; then
    result=SKIP
  else
    result=FAIL; fail=$((fail + 1)); failed+=("$t")
  fi
  why=$(grep -m1 -E '^\s+[a-z0-9_]+\.go:[0-9]+:' "$logs/$t.log" | sed -E 's/^\s+//' | cut -c1-160)
  printf '%-4s %-45s %4ss %s\n' "$result" "$t" "$secs" "$([[ $result == PASS ]] || echo "$why")"
  printf '%s\t%s\t%s\t%s\n' "$result" "$t" "$secs" "$why" >> "$summary"
  rm -rf "$tmp" "$tree/tests/e2e/"*.etcd
done
echo "e2e: $pass passed, $fail failed${failed:+: ${failed[*]}}"
((fail == 0))
