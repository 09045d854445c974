#!/usr/bin/env bash
# compare.sh: runs one oxcd-bench workload against a fresh etcd and a fresh oxcd, alternating
# (the order swaps every round), each round on new servers with new data dirs, and prints a
# markdown table of the medians over the rounds: throughput, p50, p99, p99.9, the servers'
# CPU time per 1000 requests (all members) and their peak RSS (VmHWM, largest member).
#
# usage: bench/compare.sh [--rounds N] [--members 1|3] [--data-root DIR] [--port P]
#                         [--etcd PATH] [--client oxcd-bench|wrk|python] -- <workload and options>
#   e.g. bench/compare.sh -- put --clients 64 --conns 64 --total 20000 --val-size 256 --key-space 100000
#   With --client wrk (Debian's wrk, a second, independent load generator), the workload is
#   put|get [--threads T] [--conns C] [--duration S] [--val-size N] [--key-space N] [--quorum]
#   (defaults 2, 64, 6, 256, 100000): wrk -tT -cC -dS with random keys bench/<8 digits>;
#   get first fills the key space (oxcd-bench, untimed); --quorum makes the GETs
#   ?quorum=true (linearizable: through raft). wrk loads the first member; the
#   percentiles are wrk's.
#   With --client python (bench/watch_client.py, a second watch client), the workload is
#   watch [--watchers N] [--writes W] [--rate R] [--val-size N] [--timeout S], as oxcd-bench's.
#
# Builds with `cargo build --release -p oxcd -p oxcd-bench` (honours CARGO_TARGET_DIR and
# CARGO_BUILD_JOBS). Member k listens for clients on P+2k and for peers on P+2k+1
# (P defaults to 24379). Needs python3 for the summary.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 members=1 data_root=${TMPDIR:-/tmp} port=24379 etcd_bin=/usr/bin/etcd client=oxcd-bench
usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) rounds=$2; shift 2 ;;
        --members) members=$2; shift 2 ;;
        --data-root) data_root=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --etcd) etcd_bin=$2; shift 2 ;;
        --client) client=$2; shift 2 ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) echo "compare.sh: unknown option $1 (workload arguments go after --)" >&2; usage ;;
    esac
done
[[ $# -gt 0 ]] || usage
[[ $members == 1 || $members == 3 ]] || { echo "compare.sh: --members must be 1 or 3" >&2; exit 2; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --rounds must be a positive integer" >&2; exit 2; }
bench_args=("$@")
[[ $client == oxcd-bench || $client == wrk || $client == python ]] || { echo "compare.sh: --client must be oxcd-bench, wrk or python" >&2; exit 2; }
if [[ $client == python ]]; then
    [[ ${bench_args[0]} == watch ]] || { echo "compare.sh: with --client python the workload is watch" >&2; exit 2; }
    for a in "${bench_args[@]:1}"; do
        [[ $a != --* || $a == --watchers || $a == --writes || $a == --rate || $a == --val-size || $a == --timeout ]] ||
            { echo "compare.sh: unknown python watch option $a" >&2; exit 2; }
    done
fi
if [[ $client == wrk ]]; then
    command -v wrk >/dev/null || { echo "compare.sh: wrk is not installed (apt-get install wrk)" >&2; exit 2; }
    wrk_op=${bench_args[0]} wrk_threads=2 wrk_conns=64 wrk_duration=6 wrk_val=256 wrk_space=100000
    wrk_query=""
    [[ $wrk_op == put || $wrk_op == get ]] || { echo "compare.sh: with --client wrk the workload is put or get" >&2; exit 2; }
    set -- "${bench_args[@]:1}"
    while [[ $# -gt 0 ]]; do
        if [[ $1 == --quorum ]]; then
            [[ $wrk_op == get ]] || { echo "compare.sh: --quorum is for get" >&2; exit 2; }
            wrk_query="?quorum=true"
            shift
            continue
        fi
        case $1 in
            --threads) wrk_threads=$2 ;;
            --conns) wrk_conns=$2 ;;
            --duration) wrk_duration=$2 ;;
            --val-size) wrk_val=$2 ;;
            --key-space) wrk_space=$2 ;;
            *) echo "compare.sh: unknown wrk workload option $1" >&2; exit 2 ;;
        esac
        shift 2
    done
fi

cargo build --release -p oxcd -p oxcd-bench
target=${CARGO_TARGET_DIR:-target}
oxcd_bin=$target/release/oxcd
bench_bin=$target/release/oxcd-bench

mkdir -p "$data_root"
work=$(mktemp -d "$data_root/oxcd-compare.XXXXXX")
if [[ $client == wrk ]]; then
    # Random keys of the key space; each wrk thread seeds its own generator. done() prints
    # the figures compare.sh summarises as one JSON line (the last line of the output).
    method=GET
    [[ $wrk_op == put ]] && method=PUT
    value=$(head -c "$wrk_val" /dev/zero | tr '\0' 'v')
    cat >"$work/wrk.lua" <<LUA
local counter = 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  math.randomseed(os.time() + id * 7919)
end
function request()
  local path = string.format("/v2/keys/bench/%08d", math.random(0, $wrk_space - 1))
  if "$method" == "PUT" then
    return wrk.format("PUT", path, {["Content-Type"] = "application/x-www-form-urlencoded"}, "value=$value")
  end
  return wrk.format("GET", path .. "$wrk_query")
end
function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format('{"throughput":%f,"latency_ms":{"p50":%f,"p99":%f,"p999":%f},"errors":{"wrk":%d},"ok":%d}\n',
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, errors, summary.requests - errors))
end
LUA
fi
pids=()

stop_servers() {
    local p i
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    pids=()
}
trap 'stop_servers; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

port_busy() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

member_name() { if [[ $members == 1 ]]; then echo default; else echo "m$1"; fi; }

# start_cluster KIND DIR: starts the members in the background; sets $endpoints.
start_cluster() {
    local kind=$1 dir=$2 bin k cport pport cluster=""
    if [[ $kind == etcd ]]; then bin=$etcd_bin; else bin=$oxcd_bin; fi
    for ((k = 0; k < members; k++)); do
        cluster+="${cluster:+,}$(member_name "$k")=http://127.0.0.1:$((port + 2 * k + 1))"
    done
    endpoints=""
    for ((k = 0; k < members; k++)); do
        cport=$((port + 2 * k)) pport=$((port + 2 * k + 1))
        if port_busy "$cport" || port_busy "$pport"; then
            echo "compare.sh: port $cport or $pport is in use (choose another with --port)" >&2
            exit 1
        fi
        endpoints+="${endpoints:+,}http://127.0.0.1:$cport"
        "$bin" --name "$(member_name "$k")" --data-dir "$dir/$(member_name "$k")" \
            --enable-v2=true \
            --listen-client-urls "http://127.0.0.1:$cport" \
            --advertise-client-urls "http://127.0.0.1:$cport" \
            --listen-peer-urls "http://127.0.0.1:$pport" \
            --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
            --initial-cluster "$cluster" \
            --initial-cluster-token "compare-$kind" \
            --initial-cluster-state new \
            >"$dir/$(member_name "$k").log" 2>&1 &
        pids+=($!)
    done
    # Ready once a write goes through on every member (a leader is elected).
    local deadline=$((SECONDS + 60)) ep ok
    for ep in ${endpoints//,/ }; do
        ok=0
        while ((SECONDS < deadline)); do
            if curl -sf -o /dev/null -X PUT "$ep/v2/keys/compare-ready" -d value=1 --max-time 2; then
                ok=1
                break
            fi
            sleep 0.2
        done
        if ((ok == 0)); then
            echo "compare.sh: $kind did not become ready at $ep; log tail:" >&2
            tail -n 20 "$dir"/*.log >&2
            exit 1
        fi
    done
}

# Peak RSS in kB of the largest member.
peak_rss() {
    local p v max=0
    for p in "${pids[@]}"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        ((${v:-0} > max)) && max=$v
    done
    echo "$max"
}

# CPU time (clock ticks, user + system) used so far by all members.
cpu_ticks() {
    local p sum=0 t
    for p in "${pids[@]}"; do
        t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}

# run_line KIND JSON RSS_KB: one line per run on stderr.
run_line() {
    python3 - "$@" >&2 <<'EOF' || true
import json, sys
kind, path, rss = sys.argv[1], sys.argv[2], int(sys.argv[3] or 0)
try:
    r = json.loads(open(path).read().strip().splitlines()[-1])
except ValueError:
    sys.exit(print(f"   {kind}: no result"))
l = r["latency_ms"]
print(f"   {kind}: {r['throughput']:.0f}/s  p50 {l['p50']:.2f} ms  p99 {l['p99']:.2f} ms  "
      f"errors {sum(r['errors'].values())}  peak RSS {rss / 1024:.1f} MB")
EOF
}

run_one() {
    local kind=$1 round=$2 dir out
    dir=$work/$kind-$round
    mkdir -p "$dir"
    start_cluster "$kind" "$dir"
    echo "== round $round: $kind ($endpoints)" >&2
    out=$work/$kind-$round.json
    local cpu0
    cpu0=$(cpu_ticks)
    if [[ $client == wrk ]]; then
        local first=${endpoints%%,*}
        if [[ $wrk_op == get ]]; then
            "$bench_bin" --endpoints "$endpoints" --key-space "$wrk_space" --val-size "$wrk_val" \
                --total "$wrk_space" --clients 32 --conns 32 put --sequential-keys >/dev/null
            cpu0=$(cpu_ticks)
        fi
        if ! wrk -t"$wrk_threads" -c"$wrk_conns" -d"${wrk_duration}s" -s "$work/wrk.lua" "$first" >"$out"; then
            echo "compare.sh: wrk failed against $kind (round $round)" >&2
        fi
    elif [[ $client == python ]]; then
        if ! python3 bench/watch_client.py --endpoint "${endpoints%%,*}" "${bench_args[@]:1}" >"$out"; then
            echo "compare.sh: watch_client.py reported a failure against $kind (round $round)" >&2
        fi
    elif ! "$bench_bin" --endpoints "$endpoints" --json "${bench_args[@]}" >"$out"; then
        echo "compare.sh: oxcd-bench reported a failure against $kind (round $round)" >&2
    fi
    echo $(($(cpu_ticks) - cpu0)) >"$work/$kind-$round.cpu"
    peak_rss >"$work/$kind-$round.rss"
    run_line "$kind" "$out" "$(cat "$work/$kind-$round.rss")"
    stop_servers
    rm -rf "$dir"
}

for ((r = 1; r <= rounds; r++)); do
    if ((r % 2 == 1)); then order=(etcd oxcd); else order=(oxcd etcd); fi
    for kind in "${order[@]}"; do run_one "$kind" "$r"; done
done

etcd_version=$("$etcd_bin" --version 2>/dev/null | awk '/etcd Version/ {print $3}')
python3 - "$work" "$rounds" "$members" "${etcd_version:-?}" "${bench_args[*]}" <<'EOF'
import json, os, statistics, sys
work, rounds, members, etcd_version, args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

def load(kind):
    runs = []
    for r in range(1, rounds + 1):
        try:
            with open(os.path.join(work, f"{kind}-{r}.json")) as f:
                res = json.loads(f.read().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            continue
        with open(os.path.join(work, f"{kind}-{r}.rss")) as f:
            res["rss_mb"] = int(f.read().strip() or 0) / 1024
        # Server CPU per 1000 successful requests (or delivered events): what a request
        # costs the server, apart from the load generator sharing the machine.
        with open(os.path.join(work, f"{kind}-{r}.cpu")) as f:
            ms = int(f.read().strip() or 0) * 1000 / os.sysconf("SC_CLK_TCK")
        done = res.get("delivered", res.get("ok", res.get("total", 0)))
        res["cpu_ms_per_1k"] = ms / max(done / 1000, 1e-9)
        runs.append(res)
    return runs

data = {k: load(k) for k in ("etcd", "oxcd")}
watch = any("delivered" in r for runs in data.values() for r in runs)
figures = [
    ("throughput (events/s)" if watch else "throughput (req/s)", lambda r: r["throughput"]),
    ("p50 (ms)", lambda r: r["latency_ms"]["p50"]),
    ("p99 (ms)", lambda r: r["latency_ms"]["p99"]),
    ("p99.9 (ms)", lambda r: r["latency_ms"]["p999"]),
    ("errors", lambda r: sum(r["errors"].values())),
]
if watch:
    # Latency from the acknowledgement hides a slow acknowledgement (an event delivered
    # before the writer hears back counts as 0): show it from the PUT's sending too.
    figures.append(("p50 from PUT send (ms)", lambda r: r["from_send_ms"]["p50"]))
    figures.append(("p99 from PUT send (ms)", lambda r: r["from_send_ms"]["p99"]))
    figures.append(("deliveries before the ack", lambda r: r["negative_latencies"] / max(r["delivered"], 1)))
    figures.append(("delivered / expected", lambda r: r["delivered"] / max(r["expected"], 1)))
figures.append(("server CPU (ms per 1k%s)" % (" events" if watch else " requests"), lambda r: r["cpu_ms_per_1k"]))
figures.append(("peak RSS (MB%s)" % (", largest member" if members != "1" else ""), lambda r: r["rss_mb"]))

def fmt(x):
    if x is None:
        return "n/a"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"

print(f"\nworkload: `{args}`; {members} member(s); median of {rounds} round(s) "
      f"(got {len(data['etcd'])} etcd, {len(data['oxcd'])} oxcd); etcd {etcd_version}\n")
print("| figure | etcd | oxcd | ratio (oxcd/etcd) |")
print("|---|---|---|---|")
for name, get in figures:
    med = {k: (statistics.median(get(r) for r in runs) if runs else None) for k, runs in data.items()}
    e, o = med["etcd"], med["oxcd"]
    ratio = f"{o / e:.2f}" if e and o is not None else "n/a"
    print(f"| {name} | {fmt(e)} | {fmt(o)} | {ratio} |")
EOF
