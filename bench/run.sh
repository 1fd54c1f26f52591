#!/usr/bin/env bash
# Every benchmark in one command, one table at the end: figure, Gantry, peer, ratio.
#
#   bench/run.sh [--quick] [--only NAME[,NAME...]]
#
# Each benchmark runs its own stack (nats-server, the store, release binaries) and measures its
# peer in the same run: Ray Jobs for dispatch, PyTorch for training and analysis throughput, the
# same bytes served from memory for the node listing, the store's own round trips (one applier)
# for job events. Each prints `ROW<TAB>figure<TAB>gantry<TAB>peer<TAB>ratio` lines; this script
# keeps every benchmark's whole output under bench/results/run-<UTC time>/ and prints the rows.
# `--quick` runs each with fewer rounds (for a look, not for BENCHMARKS.md).
#
# Not a test: a benchmark that fails is reported and the others still run; the exit status is
# non-zero when any failed.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/../deploy/local/lib.sh"
cd "$GANTRY_REPO"

quick=0
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --only) only="$2"; shift ;;
        *) die "unknown argument $1 (see the header of $0)" ;;
    esac
    shift
done

# name | command (full run) | command (--quick)
BENCHES=(
    "dispatch|bench/dispatch.sh --jobs 300 --ray-jobs 80|bench/dispatch.sh --jobs 40 --ray-jobs 10"
    "listing|bench/registry_load.sh --nodes 10000 --interval 1 --list-every 0.2 --warmup 10 --duration 20 --http --http-clients 4 --http-duration 8|bench/registry_load.sh --nodes 2000 --interval 1 --list-every 1 --warmup 5 --duration 5 --http --http-clients 2 --http-duration 3"
    "events|bench/events_load.sh --jobs 100 --events-per-job 20|bench/events_load.sh --jobs 40 --events-per-job 10"
    "events-2|REPLICAS=2 bench/events_load.sh --jobs 100 --events-per-job 20|REPLICAS=2 bench/events_load.sh --jobs 40 --events-per-job 10"
    "train|bench/train_throughput.sh --threads 1 --epochs 4 --rounds 3|bench/train_throughput.sh --threads 1 --epochs 2 --rounds 1"
    "analysis|bench/analysis_throughput.sh --threads 1 --passes 10 --rounds 5|bench/analysis_throughput.sh --threads 1 --passes 3 --rounds 1"
    "recipe|bench/recipe.sh|bench/recipe.sh --quick"
)

out="bench/results/run-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
failed=()
for entry in "${BENCHES[@]}"; do
    IFS='|' read -r name full short <<<"$entry"
    if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then
        continue
    fi
    cmd="$full"
    [ "$quick" = 1 ] && cmd="$short"
    script="${cmd#REPLICAS=* }"
    script="${script%% *}"
    if [ ! -x "$script" ] && [ ! -f "$script" ]; then
        log "$name: $script is missing; skipped"
        failed+=("$name (missing)")
        continue
    fi
    log "$name: $cmd"
    start=$(date +%s)
    if bash -c "$cmd" >"$out/$name.log" 2>"$out/$name.err"; then
        log "$name: done in $(($(date +%s) - start)) s"
    else
        log "$name: FAILED after $(($(date +%s) - start)) s (see $out/$name.err)"
        tail -5 "$out/$name.err" >&2
        failed+=("$name")
    fi
done

python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
rows = []
for log in sorted(glob.glob(os.path.join(out, "*.log"))):
    name = os.path.basename(log)[:-4]
    for line in open(log, encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if parts[0] == "ROW" and len(parts) == 5:
            rows.append([name] + parts[1:])
widths = [max(len(r[i]) for r in rows + [["bench", "figure", "Gantry", "peer", "ratio"]])
          for i in range(5)]
def show(r):
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
show(["bench", "figure", "Gantry", "peer", "ratio"])
show(["-" * w for w in widths])
for r in rows:
    show(r)
with open(os.path.join(out, "table.tsv"), "w", encoding="utf-8") as f:
    for r in rows:
        f.write("\t".join(r) + "\n")
PY
echo "whole outputs: $out/"
if [ ${#failed[@]} -gt 0 ]; then
    log "failed: ${failed[*]}"
    exit 1
fi
