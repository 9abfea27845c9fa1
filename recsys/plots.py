"""The benchmarks' figures: one PNG beside each benchmark's JSON (``<out>.png`` for ``<out>.json``).

Two kinds, both written atomically (``recsys.atomic_files``) with matplotlib's Agg backend:

- :func:`line_plot`: y over x, one line per series (latency vs sequence length per backend,
  throughput vs batch size per phase);
- :func:`grouped_bars`: side-by-side bars per group, one bar per series, with error bars
  (DLRM vs popularity per head, retrieval metrics per config, the TransAct ablation rows per head).

Example::

    line_plot({"pytorch": [(128, 0.4), (512, 2.1)]}, "runs/bench/x.png", "longest sequence", "ms")
    grouped_bars({"click": {"dlrm": (0.71, 0.01), "popularity": (0.62, 0.0)}}, "runs/bench/y.png", "AUC")
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from recsys.atomic_files import write_atomic
from recsys.errors import ConfigError


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed); a clear error without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'recsys-zoo[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    return plt


def png_beside(json_path: str | Path) -> Path:
    """``runs/bench/x.json`` -> ``runs/bench/x.png``."""
    return Path(json_path).with_suffix(".png")


def line_plot(
    series: dict[str, list[tuple[float, float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    log_x: bool = False,
    log_y: bool = False,
) -> Path:
    """Writes a PNG with one marked line per series.

    Args:
        series: name -> ``[(x, y), ...]`` (sorted by x here).
        path: the PNG.
        xlabel, ylabel, title: labels.
        log_x, log_y: logarithmic axes (e.g. lengths doubling).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        xs, ys = zip(*sorted(points)) if points else ((), ())
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log" if log_x else "linear")
    ax.set_yscale("log" if log_y else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def grouped_bars(
    groups: dict[str, dict[str, tuple[float, float]]],
    path: str | Path,
    ylabel: str,
    title: str = "",
) -> Path:
    """Writes a PNG of side-by-side bars: per group (x tick) one bar per series, with error bars.

    Args:
        groups: group -> {series -> (value, error)}; error NaN = no error bar. Series missing from
            a group leave a gap.
        path: the PNG.
        ylabel, title: labels.
    """
    plt = pyplot()
    names = list(groups)
    series = list(dict.fromkeys(s for bars in groups.values() for s in bars))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.5 * len(names) * max(len(series), 1)), 4.5))
    for i, name in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g, group in enumerate(names) if name in groups[group]]
        bars = [groups[group][name] for group in names if name in groups[group]]
        values = [v for v, _ in bars]
        errors = [0.0 if e is None or math.isnan(e) else e for _, e in bars]
        ax.bar(xs, values, width=width, yerr=errors, capsize=3, label=name)
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 6 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(plt, fig, path)


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    try:
        return write_atomic(path, lambda temp: fig.savefig(temp, dpi=100, format="png"))
    finally:
        plt.close(fig)
