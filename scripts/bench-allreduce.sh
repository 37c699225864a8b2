#!/usr/bin/env bash
# Allreduce benchmark and the page that shows it: our ring / tree / double tree / halving-doubling /
# two-shot (through the host's shared arena) / auto (nccl-tests
# style sweep, alpha-beta model, auto checked against the best) next to OpenMPI MPI_Allreduce (its
# default selection, and ring, recursive doubling and Rabenseifner forced through coll_tuned) and
# PyTorch gloo on TCP loopback, all in the same run. Ours runs on its shared-memory lanes (what local
# ranks use); beside it ours with the lanes off (SWIFT_DDP_SHM_KB=0, best of ring and
# halving-doubling) and OpenMPI on its own shared memory (btl vader: default, and the best forced
# algorithm per size), so each transport is compared with its like. Writes the page,
# N-ranks.{svg,json} and runs/allreduce-tuning-N.json (a tuning table for auto).
# References are this repository's harnesses (bench/references/, set up by scripts/bench-references.sh);
# without them only ours is shown.
# usage: scripts/bench-allreduce.sh [--update-docs] [RANKS...]   (default: 2 4); SIZES_MAX=64M, ITERS=100
# (calls per size, capped at 100 MiB of traffic, for ours and the references alike: OSU's micro-benchmarks
# time 10,000 calls at small sizes, e.g. ITERS=20000 SIZES_MAX=64K for the small-message cells)
# ROUNDS=R (default 1) runs ours and every reference R times in turn and shows each cell's median
# over the rounds: this machine changes speed from one run to the next, as its two vCPUs do or do not
# share a cache (docs/benchmarks.md, "The two speeds explained"), and a sweep times ours and the
# references minutes apart. The page's
# tables and the plot against the references show the medians; allreduce-bench's own per-algorithm
# plot, JSON, model text and tuning table are the last round's.
# Results go to runs/bench-allreduce/ (page, JSON, plots); the tracked copies in docs/ are rewritten
# only with --update-docs.
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$root/.build/release/allreduce-bench" ] || "$root/scripts/setup.sh" >&2
"$root/scripts/bench-references.sh"
venv=${REF_VENV:-/tmp/swift-ddp-ref-venv}; build=${REF_BUILD:-$root/runs/references}
mpi=(mpirun --allow-run-as-root --oversubscribe --mca pml ob1)
max=${SIZES_MAX:-64M}; iters=${ITERS:-100}; rounds=${ROUNDS:-1}
update_docs=0
if [ "${1:-}" = "--update-docs" ]; then update_docs=1; shift; fi
work="$root/runs/bench-allreduce"; docs="$work/allreduce"; page="$work/allreduce-results.md"
mkdir -p "$docs" "$work" "$root/runs"
ranks=("$@"); [ ${#ranks[@]} -gt 0 ] || ranks=(2 4)
rm -f "$work"/*-r[0-9]*.json "$work"/*-r[0-9]*.txt "$docs"/*-r[0-9]*.json
for round in $(seq "$rounds"); do
for n in "${ranks[@]}"; do
  echo "## $n ranks (round $round of $rounds)" >&2
  r="-r$round"
  "$root/.build/release/ddp-launch" --nproc-per-node "$n" -- allreduce-bench -b 4K -e "$max" -f 4 -n "$iters" \
      --json "$docs/$n-ranks$r.json" --plot "$docs/$n-ranks.svg" --tuning "$root/runs/allreduce-tuning-$n.json" \
    | grep -E '^\[rank 0\] ' | sed 's/^\[rank 0\] //' > "$work/ours-$n.txt"
  cp "$docs/$n-ranks$r.json" "$docs/$n-ranks.json"
  sizes=$(python3 -c "import json,sys; print(' '.join(str(s) for s in sorted({r['bytes'] for r in json.load(open(sys.argv[1]))['results']})))" "$docs/$n-ranks.json")
  SWIFT_DDP_SHM_KB=0 "$root/.build/release/ddp-launch" --nproc-per-node "$n" -- allreduce-bench -b 4K -e "$max" -f 4 -n "$iters" \
      --algorithms ring,halving-doubling --json "$work/tcp-$n$r.json" >/dev/null
  if [ -x "$build/mpi_messages" ]; then
    # OpenMPI's own choice, then ring (4), recursive doubling (3) and Rabenseifner (6) forced; over TCP,
    # then over its shared memory.
    for btl in tcp vader; do
      for algo in default 4 3 6; do
        forced=(); [ "$algo" = default ] || forced=(--mca coll_tuned_use_dynamic_rules 1 --mca coll_tuned_allreduce_algorithm "$algo")
        suffix=""; transport=(--mca btl tcp,self --mca btl_tcp_if_include lo)
        [ "$btl" = tcp ] || { suffix="-shm"; transport=(--mca btl vader,self); }
        ITERS=$iters "${mpi[@]}" -x ITERS "${transport[@]}" "${forced[@]}" -np "$n" "$build/mpi_messages" allreduce $sizes 2>/dev/null | grep -vE '^#' > "$work/mpi$suffix-$algo-$n$r.txt" || true
      done
    done
  fi
  if [ -x "$venv/bin/python" ]; then
    ITERS=$iters OMP_NUM_THREADS=1 "$venv/bin/python" "$root/bench/references/gloo_messages.py" "$n" allreduce $sizes 2>/dev/null | grep -vE '^#' > "$work/gloo-$n$r.txt" || true
  fi
done
done
python3 - "$root" "$work" "$rounds" "${ranks[@]}" <<'PY'
import json, os, sys, datetime, platform
root, work, rounds, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
def median_round(cells):
    """The round whose time is the median, per key (an even count takes the faster middle one)."""
    return {k: sorted(v)[(len(v) - 1) // 2] for k, v in cells.items()}
def peer(path):
    """A reference's (time us, busbw) per size, each the median over the rounds' files `path`-rK.txt."""
    cells = {}
    for k in range(1, rounds + 1):
        p = path.replace(".txt", f"-r{k}.txt")
        if not os.path.exists(p): continue
        for line in open(p):
            f = line.split()
            if len(f) >= 5 and f[0].isdigit(): cells.setdefault(int(f[0]), []).append((float(f[-3]), float(f[-1])))
    return median_round(cells)
def ours_rounds(path):
    """Our JSON results, each (bytes, algorithm) at its median round."""
    cells, first = {}, None
    for k in range(1, rounds + 1):
        p = path.replace(".json", f"-r{k}.json")
        if not os.path.exists(p): continue
        for r in json.load(open(p))["results"]:
            cells.setdefault((r["bytes"], r["algorithm"]), []).append((r["microseconds"], r["busbwGBps"]))
    return [{"bytes": b, "algorithm": a, "microseconds": t, "busbwGBps": bw} for (b, a), (t, bw) in median_round(cells).items()]
def plot(path, title, series):
    """busbw against size (log2 x), one polyline per series: ours and the references on one set of axes."""
    import math
    points = [(s, b) for _, d in series for s, b in d.items()]
    if not points: return
    xs = [math.log2(s) for s, _ in points]; ymax = max(b for _, b in points) * 1.1 or 1
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    W, H, L, T, PW, PH = 720, 420, 60, 40, 480, 320
    X = lambda s: L + PW * (math.log2(s) - x0) / (x1 - x0)
    Y = lambda b: T + PH * (1 - b / ymax)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>', f'<text x="{L}" y="20">{title}</text>',
           f'<line x1="{L}" y1="{T + PH}" x2="{L + PW}" y2="{T + PH}" stroke="black"/><line x1="{L}" y1="{T}" x2="{L}" y2="{T + PH}" stroke="black"/>',
           f'<text x="5" y="{T + 4}">{ymax:.1f}</text><text x="5" y="{T + PH}">0 GB/s</text>',
           f'<text x="{L}" y="{T + PH + 16}">{2 ** x0 / 1024:.0f} KiB</text><text x="{L + PW - 40}" y="{T + PH + 16}">{2 ** x1 / 1048576:.0f} MiB</text>']
    for i, (name, d) in enumerate(series):
        c = colors[i % len(colors)]
        pts = " ".join(f"{X(s):.1f},{Y(b):.1f}" for s, b in sorted(d.items()))
        dash = '' if i < n_ours else ' stroke-dasharray="5,3"'
        out.append(f'<polyline data-series="{name}" fill="none" stroke="{c}" stroke-width="1.5"{dash} points="{pts}"/>')
        out.append(f'<text x="{L + PW + 10}" y="{T + 14 + 16 * i}" fill="{c}">{name}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")
lines = ["# Allreduce results", "",
         f"Generated by `bash scripts/bench-allreduce.sh {' '.join(ranks)}` on {datetime.date.today()}, {cpu}, "
         f"{os.cpu_count()} CPUs. Ours on its shared-memory lanes, \"ours TCP\" with them off (loopback TCP, best of ring and "
         "halving-doubling); OpenMPI on TCP loopback and on its shared memory (vader; \"best forced\" is the fastest of ring, "
         "recursive doubling and Rabenseifner at each size); gloo on TCP loopback. Our times are the median of 5 interleaved trials (slowest rank); "
         "OpenMPI's and gloo's the median of 5 trials by the harnesses in `bench/references/`. busbw = algbw x 2(n-1)/n."
         + (f" Every cell is the median of {rounds} rounds that ran ours and each reference in turn." if rounds > 1 else ""), ""]
for n in ranks:
    ours = ours_rounds(f"{work}/allreduce/{n}-ranks.json")
    # auto's rows come from paired re-runs beside the best algorithm: they go in the model section, not this sweep.
    algos = []
    for r in ours:
        if r["algorithm"] not in algos and r["algorithm"] != "auto": algos.append(r["algorithm"])
    sizes = sorted({r["bytes"] for r in ours})
    refs = [("OpenMPI default", peer(f"{work}/mpi-default-{n}.txt")), ("OpenMPI ring", peer(f"{work}/mpi-4-{n}.txt")),
            ("OpenMPI rec. doubling", peer(f"{work}/mpi-3-{n}.txt")), ("OpenMPI Rabenseifner", peer(f"{work}/mpi-6-{n}.txt")),
            ("gloo", peer(f"{work}/gloo-{n}.txt"))]
    tcp = ours_rounds(f"{work}/tcp-{n}.json")
    ours_tcp = {}
    for r in tcp:
        if r["bytes"] not in ours_tcp or r["microseconds"] < ours_tcp[r["bytes"]][0]: ours_tcp[r["bytes"]] = (r["microseconds"], r["busbwGBps"])
    forced = [peer(f"{work}/mpi-shm-{a}-{n}.txt") for a in (4, 3, 6)]
    best_forced = {s: min((d[s] for d in forced if s in d), key=lambda tb: tb[0]) for s in set().union(*forced)} if any(forced) else {}
    refs = [("ours TCP", ours_tcp)] + refs + [("OpenMPI shm default", peer(f"{work}/mpi-shm-default-{n}.txt")), ("OpenMPI shm best forced", best_forced)]
    refs = [(name, d) for name, d in refs if d]
    n_ours = len(algos)
    plot(f"{work}/allreduce/{n}-ranks-vs-references.svg", f"allreduce busbw, {n} ranks: ours (solid) and the references (dashed)",
         [(a, {r["bytes"]: r["busbwGBps"] for r in ours if r["algorithm"] == a}) for a in algos]
         + [(name, {s: b for s, (t, b) in d.items()}) for name, d in refs])
    lines += [f"## {n} ranks", "", f"![busbw against size, ours and the references, {n} ranks]({'allreduce'}/{n}-ranks-vs-references.svg)", "",
              f"![busbw and time against size, ours, {n} ranks]({'allreduce'}/{n}-ranks.svg)", "",
              "busbw in GB/s (time in µs below it):", "",
              "| size | " + " | ".join(algos + [name for name, _ in refs]) + " | best peer / our best |",
              "|---" * (2 + len(algos) + len(refs)) + "|"]
    def fmt(t, b): return f"{b:.2f}<br>{t:.0f}"
    peers = [d for name, d in refs if name != "ours TCP"]
    for s in sizes:
        row = [next(fmt(r["microseconds"], r["busbwGBps"]) for r in ours if r["bytes"] == s and r["algorithm"] == a) for a in algos]
        row += [fmt(*d[s]) if s in d else "–" for _, d in refs]
        # Time of the fastest reference over time of our fastest algorithm: above 1, ours leads.
        best_ours = min(r["microseconds"] for r in ours if r["bytes"] == s and r["algorithm"] != "auto")
        best_peer = min((d[s][0] for d in peers if s in d), default=None)
        row.append(f"{best_peer / best_ours:.2f}x" if best_peer else "–")
        label = f"{s // 1048576}M" if s >= 1048576 else f"{s // 1024}K"
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    text = open(f"{work}/ours-{n}.txt").read().splitlines()
    lines += ["", "Model and auto, as the benchmark printed them:", "", "```text"] + [l for l in text if (l.startswith("#   ") and "(B)" not in l and "size" not in l) or l.startswith("# alpha") or l.startswith("# auto")] + ["```", ""]
open(f"{work}/allreduce-results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
if [ "$update_docs" = 1 ]; then
  mkdir -p "$root/docs/allreduce"
  cp "$page" "$root/docs/allreduce-results.md"
  cp "$docs"/*-ranks.svg "$docs"/*-ranks-vs-references.svg "$docs"/*-ranks.json "$root/docs/allreduce/"
  echo "bench-allreduce: docs/allreduce-results.md and docs/allreduce/ updated" >&2
else
  echo "bench-allreduce: results in $page (docs/ unchanged; --update-docs rewrites them)" >&2
fi
