"""The benchmark figures: a line plot and side-by-side bars render to PNG files, atomically."""

import math

import matplotlib.image
import pytest

from recsys.plots import grouped_bars, line_plot, png_beside

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(path)  # [H, W, 4]
    assert pixels.std() > 0.01, "blank figure"
    return pixels


def test_line_plot_writes_a_png(tmp_path):
    path = line_plot({"pytorch": [(512, 2.0), (128, 0.5)], "triton": [(128, 0.1), (512, 0.3)]},
                     tmp_path / "sub" / "latency.png", "longest", "ms", log_x=True, log_y=True)
    assert path == tmp_path / "sub" / "latency.png"
    read_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["latency.png"]  # no temp file left


def test_grouped_bars_with_gaps_and_missing_errors(tmp_path):
    groups = {"click": {"dlrm": (0.7, 0.01), "popularity": (0.6, math.nan)}, "hide": {"dlrm": (0.8, 0.02)}}
    read_png(grouped_bars(groups, tmp_path / "bars.png", "AUC", "title"))


def test_png_beside_its_json():
    assert str(png_beside("runs/bench/x.json")) == "runs/bench/x.png"


def test_a_figure_of_nothing_still_renders(tmp_path):
    assert grouped_bars({}, tmp_path / "empty.png", "AUC").read_bytes()[:8] == PNG_MAGIC
    assert line_plot({"no runs": []}, tmp_path / "empty-lines.png", "x", "y").read_bytes()[:8] == PNG_MAGIC


def test_without_matplotlib_the_error_names_the_extra(monkeypatch):
    import builtins

    from recsys.errors import ConfigError
    from recsys.plots import pyplot

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"recsys-zoo\[plots\]"):
        pyplot()
