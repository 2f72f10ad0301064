#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Summary table of benchmarks/torch/run.sh: results.jsonl (one line per process) and
compare.jsonl (hypergradient agreement) -> markdown on stdout, with the two targets of the
issue ("Benchmarks", item 6) checked:
  * hypergrad no slower than libtorch at T = 1000 with the same thread count;
  * at least 1000x less memory growth per iteration, growth = (peak RSS at T=1000 - peak RSS at
    T=100) / 900.
Times: each process reports the best of its in-process repetitions; the table gives the best and
the median over rounds. Ratios are computed per round (the configurations of a round run back to
back) and the median is reported."""
import json
import statistics
import sys
from collections import defaultdict


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    results = load(sys.argv[1])
    compares = load(sys.argv[2]) if len(sys.argv) > 2 else []
    runs = defaultdict(list)
    for r in results:
        runs[(r["label"], r["steps"], r["threads"])].append(r)
    labels = sorted({k[0] for k in runs}, key=lambda s: (s == "torch", s))
    steps = sorted({k[1] for k in runs})
    threads = sorted({k[2] for k in runs})
    med = statistics.median

    def peak(label, T, k):
        return med([r["peak_rss_mib"] for r in runs[(label, T, k)]])

    growth = {}
    if len(steps) >= 2:
        t0, t1 = steps[0], steps[-1]
        for label in labels:
            for k in threads:
                if runs.get((label, t0, k)) and runs.get((label, t1, k)):
                    growth[(label, k)] = (peak(label, t1, k) - peak(label, t0, k)) * 1024.0 / (t1 - t0)  # KiB

    agree = {}
    for c in compares:
        if c["what"].endswith("vs torch"):
            agree[(c["what"].split()[0], c["steps"], c["threads"])] = c

    print("| impl | T | threads | time s, best (median) | CPU s | peak RSS MiB | peak − setup MiB "
          "| growth / iter | ∂f/∂α vs torch: rel. norm diff, max rel err |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for label in labels:
        for T in steps:
            for k in threads:
                rs = runs.get((label, T, k))
                if not rs:
                    continue
                times = [r["time_s"] for r in rs]
                cpu = min(min(r["cpu_s"]) for r in rs)
                pk = peak(label, T, k)
                comp = med([r["peak_rss_mib"] - r["setup_rss_mib"] for r in rs])
                g = growth.get((label, k))
                gtxt = "" if g is None or T != steps[-1] else (f"{g / 1024:.2f} MiB" if g > 1024 else f"{g:.2f} KiB")
                a = agree.get((label, T, k))
                atxt = "" if a is None else f"{a['alpha']['rel_norm_diff']:.1e}, {a['alpha']['max_rel_err']:.1e}"
                print(f"| {label} | {T} | {k} | {min(times):.3f} ({med(times):.3f}) | {cpu:.3f} | {pk:.1f} | {comp:.1f} "
                      f"| {gtxt} | {atxt} |")

    print()
    T = steps[-1]
    for label in labels:
        if label == "torch":
            continue
        for k in threads:
            ratios = []
            rounds = {r["round"] for r in runs.get((label, T, k), [])}
            for rd in sorted(rounds):
                a = [r["time_s"] for r in runs[(label, T, k)] if r["round"] == rd]
                b = [r["time_s"] for r in runs.get(("torch", T, k), []) if r["round"] == rd]
                if a and b:
                    ratios.append(a[0] / b[0])
            if ratios:
                ok = "met" if med(ratios) <= 1.0 else "NOT met"
                print(f"- time, T = {T}, {k} thread(s): {label} / torch = {med(ratios):.2f} "
                      f"(median of {len(ratios)} rounds; per round {', '.join(f'{x:.2f}' for x in ratios)}) — target {ok}")
            if (label, k) in growth and ("torch", k) in growth:
                gh, gt = growth[(label, k)], growth[("torch", k)]
                ratio = gt / gh if gh > 0 else float("inf")
                ok = "met" if ratio >= 1000 else "NOT met"
                print(f"- memory growth / iteration, {k} thread(s): torch {gt / 1024:.2f} MiB, {label} {gh:.2f} KiB "
                      f"-> {ratio:.0f}x less — target {ok}")
    for c in compares:
        if "vs torch" in c["what"]:
            continue
        print(f"- {c['what']} (T = {c['steps']}): ∂f/∂α bit-identical {c['alpha']['bit_identical']}/{c['alpha']['entries']}, "
              f"rel. norm diff {c['alpha']['rel_norm_diff']:.1e}")
    for c in compares:
        if "vs torch" in c["what"] and c["threads"] == threads[0]:
            print(f"- {c['what']} (T = {c['steps']}): ∂f/∂γ rel. norm diff {c['gamma']['rel_norm_diff']:.1e}, "
                  f"max rel err {c['gamma']['max_rel_err']:.1e}; ∂f/∂w₁ {c['w1']['rel_norm_diff']:.1e}, "
                  f"{c['w1']['max_rel_err']:.1e}; f {c['meta_objective'][0]:.15f} vs {c['meta_objective'][1]:.15f}")


if __name__ == "__main__":
    main()
