#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Turn bench_shiftadd_lut JSON into the README's Markdown tables and a PNG plot.

Every LUT result (shiftadd/lut_multiply/lut_*) is paired with the dense Eigen product of the same
arguments in the same run (speedup = dense time / LUT time) and with the read-bandwidth probe of
the same thread count: "of BW" is the packed weight bytes per second over the bandwidth limit,
the better of the read probe (shiftadd/read_bandwidth/sum) and the dense GEMV's weight stream,
i.e. how close the kernel runs to the memory-bandwidth limit.

    build/bench/bench/shiftadd/bench_shiftadd_lut --benchmark_format=json > lut.json
    /usr/bin/python3 tools/bench_lut_report.py lut.json --markdown lut.md --png lut.png

The tables need only the standard library; --png needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json
import sys


def parse(name):
    """shiftadd/<op>/<impl>/k:v/.../real_time -> (op, impl, {k: int})"""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] != "shiftadd":
        return None
    args = {}
    for part in parts[3:]:
        if ":" in part:
            key, value = part.split(":", 1)
            args[key] = int(value)
    return parts[1], parts[2], args


def load(paths):
    results = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for b in data.get("benchmarks", []):
            if b.get("run_type", "iteration") != "iteration":
                continue
            parsed = parse(b["name"])
            if parsed is None:
                continue
            op, impl, args = parsed
            results.append({"op": op, "impl": impl, "args": args,
                            "time_us": b["real_time"] * {"ns": 1e-3, "us": 1.0, "ms": 1e3,
                                                          "s": 1e6}[b.get("time_unit", "ns")],
                            "bytes_per_second": b.get("bytes_per_second", 0.0),
                            "label": b.get("label", "")})
    return results


def key(args):
    return tuple(sorted(args.items()))


def build_rows(results):
    dense = {key(r["args"]): r for r in results
             if r["op"] == "lut_multiply" and r["impl"] == "dense"}
    # The bandwidth limit per thread count: the better of the read probe and the dense fp32
    # product's weight stream (both are plain streaming reads measured in the same run).
    probe = {r["args"]["threads"]: r["bytes_per_second"] for r in results
             if r["op"] == "read_bandwidth" and r["impl"] == "sum"}
    for r in dense.values():
        if r["args"]["batch"] == 1:
            t = r["args"]["threads"]
            probe[t] = max(probe.get(t, 0.0), r["bytes_per_second"])
    rows = []
    for r in results:
        if r["op"] != "lut_multiply" or r["impl"] == "dense":
            continue
        base = dense.get(key(r["args"]))
        if base is None:
            sys.exit(f"bench_lut_report: no dense baseline for {r['impl']} {r['args']}")
        a = r["args"]
        bw = probe.get(a["threads"])
        rows.append({
            "shape": f"{a['rows']}x{a['cols']}", "rows": a["rows"], "cols": a["cols"],
            "bits": a["bits"], "batch": a["batch"], "threads": a["threads"],
            "impl": r["impl"], "path": r["label"], "time_us": r["time_us"],
            "dense_us": base["time_us"], "speedup": base["time_us"] / r["time_us"],
            "gbps": r["bytes_per_second"] / 1e9,
            "of_bw": r["bytes_per_second"] / bw if bw else None,
        })
    return rows, probe


def markdown(rows, probe):
    out = []
    if probe:
        out.append("Bandwidth limit (best of the 1 GiB read probe and the dense GEMV stream): " + ", ".join(
            f"{t} thread{'s' if t > 1 else ''} {v / 1e9:.1f} GB/s" for t, v in sorted(probe.items())))
        out.append("")
    out.append("| shape | batch | threads | bits | impl | path | time (us) | dense (us) | speedup "
               "| GB/s | of BW |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    order = sorted(rows, key=lambda r: (r["rows"], r["cols"], r["batch"], r["threads"], r["impl"],
                                        r["bits"]))
    for r in order:
        of_bw = f"{100 * r['of_bw']:.0f}%" if r["of_bw"] is not None else "-"
        out.append(f"| {r['shape']} | {r['batch']} | {r['threads']} | {r['bits']} | {r['impl']} | "
                   f"{r['path']} | {r['time_us']:.0f} | {r['dense_us']:.0f} | "
                   f"{r['speedup']:.2f}x | {r['gbps']:.1f} | {of_bw} |")
    return "\n".join(out) + "\n"


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("bench_lut_report: --png needs matplotlib (apt-get install python3-matplotlib)")
    shape = "4096x14336" if any(r["shape"] == "4096x14336" for r in rows) else rows[0]["shape"]
    batches = sorted({r["batch"] for r in rows if r["shape"] == shape})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 4), squeeze=False)
    styles = {"lut_fast": "o", "lut_fast_f16scales": "s", "lut_lossless": "x"}
    for ax, batch in zip(axes[0], batches):
        for impl, marker in styles.items():
            for threads in (1, 2):
                pts = sorted((r["bits"], r["speedup"]) for r in rows
                             if r["impl"] == impl and r["batch"] == batch
                             and r["threads"] == threads and r["shape"] == shape)
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker,
                        linestyle="-" if threads == 1 else "--",
                        label=f"{impl[4:]}, {threads} thread{'s' if threads > 1 else ''}")
        ax.set_title(f"{shape}, batch {batch}")
        ax.set_xlabel("bits")
        ax.set_xticks([1, 2, 3, 4])
        ax.set_ylabel("speedup vs dense fp32 (Eigen), same run")
        ax.axhline(1.0, color="gray", linewidth=0.5)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="--benchmark_format=json output of the bench")
    parser.add_argument("--markdown", metavar="FILE", help="write the table here (default stdout)")
    parser.add_argument("--png", metavar="FILE", help="write the bits-vs-speedup plot here")
    options = parser.parse_args()
    rows, probe = build_rows(load(options.json))
    if not rows:
        sys.exit("bench_lut_report: no shiftadd/lut_multiply results in the input")
    text = markdown(rows, probe)
    if options.markdown:
        with open(options.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if options.png:
        plot(rows, options.png)


if __name__ == "__main__":
    main()
