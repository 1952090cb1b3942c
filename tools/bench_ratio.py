#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Turn Google Benchmark JSON into ratio tables against the baseline of the same run.

Benchmarks are named <family>/<op>/<impl>/<arg>:<value>/...; every impl is paired with the
baseline impl of the same family, op and arguments (the first of --baseline that exists, by
default dense, dense_eigen, memcpy, mt19937), and the table shows its time, the speedup
(baseline time / impl time) and bytes/s. Standard library only.

    build/release/bench/core/bench_core --benchmark_format=json > core.json
    python3 tools/bench_ratio.py core.json [--markdown]
"""
import argparse
import json
import sys

DEFAULT_BASELINES = ["dense", "dense_eigen", "memcpy", "mt19937", "unmerged"]


def split_name(name):
    parts = name.split("/")
    if len(parts) < 3:
        return None
    family, op, impl = parts[0], parts[1], parts[2]
    args = "/".join(parts[3:])
    return family, op, impl, args


def load(paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for b in data.get("benchmarks", []):
            if b.get("run_type", "iteration") != "iteration":
                continue  # skip aggregates (mean/median/stddev) when repetitions are used
            parsed = split_name(b["name"])
            if parsed is None:
                continue
            rows.append((parsed, b))
    return rows


def human_rate(value):
    for unit in ["B/s", "KB/s", "MB/s", "GB/s", "TB/s"]:
        if value < 1000.0:
            return f"{value:.2f} {unit}"
        value /= 1000.0
    return f"{value:.2f} PB/s"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="--benchmark_format=json output files")
    parser.add_argument("--baseline", action="append",
                        help="baseline impl name (repeatable, first match wins)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    options = parser.parse_args()
    baselines = options.baseline or DEFAULT_BASELINES

    rows = load(options.json)
    by_key = {}
    for (family, op, impl, args), b in rows:
        by_key.setdefault((family, op, args), {})[impl] = b

    table = []
    missing = []
    for (family, op, args), impls in by_key.items():
        base_name = next((n for n in baselines if n in impls), None)
        if base_name is None:
            missing.append(f"{family}/{op}/{args}")
        base_time = impls[base_name]["real_time"] if base_name else None
        for impl, b in impls.items():
            speedup = (base_time / b["real_time"]) if base_time else float("nan")
            rate = b.get("bytes_per_second")
            table.append([f"{family}/{op}", args, impl, f"{b['real_time']:.4g} {b['time_unit']}",
                          f"{speedup:.3g}x" + (" (base)" if impl == base_name else ""),
                          human_rate(rate) if rate else "-"])

    header = ["op", "args", "impl", "time", "vs baseline", "bytes/s"]
    if options.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in table:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for r in table:
            print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    if missing:
        print("no baseline for: " + ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
