#!/usr/bin/env python3
"""Plots the results of bench/growth.py: one PNG of small multiples (load rate, RSS loaded,
RSS after restart, data dir, restart time, snapshot time) against the key count N on log-log
axes, etcd and oxcd as one line each, and a dotted reference for oxcd: linear growth from its
smallest N (for the load rate, a constant rate, which is a load time linear in N). The data
dir panel shows the apparent size (as du -sb, solid) and the allocated size (as du -s, dashed:
WAL segments are preallocated, etcd's with real blocks, oxcd's sparse). The snapshot panel is
drawn against the snapshot's raft index (about the keys it holds) rather than N. The last run
of each (server, N) in the results file counts; runs killed by the memory guard are marked
with an x on the top of the panel.

usage: bench/plot_growth.py RESULTS.jsonl OUT.png
Needs matplotlib (Debian: apt-get install python3-matplotlib, then run it with /usr/bin/python3
if python3 on the PATH is another interpreter).
"""
import json, os, sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogFormatter
except ImportError:
    # Debian's python3-matplotlib is installed for /usr/bin/python3 only.
    if os.path.exists("/usr/bin/python3") and os.path.realpath(sys.executable) != \
            os.path.realpath("/usr/bin/python3") and not os.environ.get("PLOT_GROWTH_REEXEC"):
        os.environ["PLOT_GROWTH_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    sys.exit("plot_growth.py: matplotlib is missing; install it with "
             "`apt-get install -y python3-matplotlib` (as root) and run this script with "
             "/usr/bin/python3")

# (key in the record, title, unit divisor and label)
PANELS = [
    ("load_rate", "load rate", 1e3, "thousand keys/s"),
    ("rss_loaded_mb", "RSS loaded", 1, "MB"),
    ("rss_restart_mb", "RSS after restart", 1, "MB"),
    ("data_dir_mb", "data dir", 1, "MB"),
    ("restart_s", "restart to serving", 1, "s"),
    ("snapshot_ms", "last snapshot during load", 1e3, "s"),
]
STYLE = {"etcd": dict(color="tab:blue", marker="o"), "oxcd": dict(color="tab:orange", marker="s")}


def load(path):
    recs = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                recs[(r["server"], r["n"])] = r
    return recs


def count(n, _pos=None):
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def plain(y):
    if y >= 1000:
        return f"{y:,.0f}"
    return f"{y:g}" if y >= 1 else f"{y:.2g}"


class PlainLog(LogFormatter):
    """matplotlib's choice of which log ticks to label, written as plain numbers."""

    def __call__(self, x, pos=None):
        return plain(x) if super().__call__(x, pos) else ""


def spread(xs):
    """Tick positions among xs at least 20% apart, so that their labels do not overlap."""
    ticks = []
    for x in sorted(xs):
        if not ticks or x > ticks[-1] * 1.2:
            ticks.append(x)
    return ticks


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: bench/plot_growth.py RESULTS.jsonl OUT.png")
    recs = load(sys.argv[1])
    sizes = sorted({n for _, n in recs})
    if not sizes:
        sys.exit(f"plot_growth.py: no results in {sys.argv[1]}")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (key, title, div, unit) in zip(axes.flat, PANELS):
        xkey = "snapshot_index" if key == "snapshot_ms" else None
        xs_all = set()
        for server in ("etcd", "oxcd"):
            pts, over, alloc = [], [], []
            for n in sizes:
                r = recs.get((server, n))
                if r is None or r.get("void"):  # void: another client wrote to the server
                    continue
                x = r.get(xkey) if xkey else n
                if r.get(key) is not None and x:
                    pts.append((x, r[key] / div))
                    xs_all.add(x)
                    if key == "data_dir_mb" and r.get("data_dir_alloc_mb"):
                        alloc.append((n, r["data_dir_alloc_mb"]))
                elif r.get("over_limit"):
                    over.append(n)
            if pts:
                ax.plot(*zip(*pts), label=server, **STYLE[server])
            if alloc:
                ax.plot(*zip(*alloc), linestyle="--", markerfacecolor="none",
                        label=f"{server} allocated", **STYLE[server])
            if over and pts:
                # Killed by the memory guard: an x on the top edge of the panel.
                ax.plot(over, [max(v for _, v in pts)] * len(over), linestyle="none",
                        marker="x", markersize=10, color=STYLE[server]["color"],
                        label=f"{server}: over the RSS limit")
            elif over:
                ax.text(0.02, 0.02, f"{server} over the RSS limit at N=" +
                        ", ".join(count(n) for n in over), transform=ax.transAxes,
                        fontsize=8, color=STYLE[server]["color"])
            if server == "oxcd" and pts:
                n0, v0 = pts[0]
                xs = [x for x, _ in pts]
                ys = [v0 for _ in xs] if key == "load_rate" else [v0 * n / n0 for n in xs]
                ax.plot(xs, ys, linestyle=":", color=STYLE["oxcd"]["color"], linewidth=1.2,
                        label="oxcd: constant rate" if key == "load_rate"
                        else "oxcd: linear from smallest N")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(spread(xs_all) if xkey else spread(sizes))
        ax.xaxis.set_major_formatter(FuncFormatter(count))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        # Plain numbers on the value axis (minor ticks labelled when it spans little).
        ax.yaxis.set_major_formatter(PlainLog(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(PlainLog(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.set_title(title)
        ax.set_xlabel("raft index of the snapshot (~ keys in it)" if xkey else "keys (N)")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "no snapshot during the loads\n(fewer writes than --snapshot-count)" if key == "snapshot_ms"
                    else "no data", transform=ax.transAxes, ha="center", fontsize=9)
        else:
            ax.legend(fontsize=8)
    vals = {r.get("val_size") for r in recs.values()} - {None}
    conns = {r.get("conns") for r in recs.values()} - {None}
    counts = {str(r.get("snapshot_count", "default")) for r in recs.values()}
    snap = ("default snapshot count" if counts == {"default"}
            else "snapshot count " + "/".join(sorted(counts)))
    fig.suptitle(f"etcd and oxcd against the key count, one member, {snap} "
                 f"(values {'/'.join(map(str, sorted(vals)))} B, "
                 f"{'/'.join(map(str, sorted(conns)))} connections)", fontsize=11)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
