"""DLRM against the popularity baseline and the oracle: per-head test AUC and combined HIT@3 over seeds.

    python benchmarks/dlrm_vs_popularity.py --configs configs/dlrm/synthetic.yaml configs/dlrm/ml100k.yaml \
        --seeds 0 1 2 --out runs/bench/dlrm_vs_popularity.json

Each (config, seed) is one `recsys train` run (model seed, shuffling and negative sampling follow
the seed; the synthetic data keep their own seed so all runs see the same events). Prints a table
of mean +- standard deviation and writes every run's metrics as JSON. On synthetic data the oracle
row scores the rows with the generator's exact probabilities (no model should beat it); combined
HIT@3 ranks every request once by the utility of all heads (``train.utility_weights``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

from recsys.atomic_files import write_json_atomic
from recsys.plots import grouped_bars, png_beside
from recsys.cli import _quiet_library_noise
from recsys.config import load_config
from recsys.train.config import TrainConfig
from recsys.train.ranking import run_training


def run_one(config: str, seed: int, output_root: Path, overrides: list[str]) -> dict:
    name = Path(config).stem
    cfg = load_config(
        TrainConfig, config,
        [f"train.seed={seed}", "train.progress=false", f"output_dir={output_root / f'{name}-seed{seed}'}", *overrides],
    )
    started = time.time()
    results = run_training(cfg)
    return {"config": config, "seed": seed, "seconds": time.time() - started, "results": results}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.pstdev(values)


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for config in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == config]
        model = next(k for k in mine[0]["results"] if k.endswith(" test") and k.split()[0] not in ("popularity", "oracle"))
        for head in mine[0]["results"][model]:
            row = {"config": config, "head": head, "seeds": len(mine)}
            for name, key in (("model", model), ("popularity", "popularity test"), ("oracle", "oracle test")):
                if key not in mine[0]["results"]:
                    continue  # the oracle exists on synthetic data only
                for metric, column in (("auc", "auc"), ("combined_hit@3", "combined_hit3")):
                    values = [r["results"][key][head].get(metric, float("nan")) for r in mine]
                    row[f"{name}_{column}_mean"], row[f"{name}_{column}_std"] = _mean_std(values)
            ours = [r["results"][model][head]["auc"] for r in mine]
            base = [r["results"]["popularity test"][head]["auc"] for r in mine]
            row["model_beats_popularity_every_seed"] = all(o > b for o, b in zip(ours, base))
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """AUC of DLRM / popularity / oracle, then combined HIT@3 of the three (hide: lower is better)."""
    names = ("model", "popularity", "oracle")
    lines = [f"{'config':<28}{'head':<11}" + "".join(f"{n + ' AUC':>20}" for n in ("DLRM", "popularity", "oracle"))
             + "".join(f"{n + ' comb. HIT@3':>24}" for n in ("DLRM", "popularity", "oracle")) + "  beats popularity",
             "-" * 170]
    for r in rows:
        cells = []
        for column, width in (("auc", 20), ("combined_hit3", 24)):
            for name in names:
                mean = r.get(f"{name}_{column}_mean")
                cells.append(f"{'-':>{width}}" if mean is None else f"{mean:>{width - 9}.4f} ± {r[f'{name}_{column}_std']:.4f}")
        lines.append(f"{Path(r['config']).stem:<28}{r['head']:<11}" + "".join(cells)
                     + f"  {r['model_beats_popularity_every_seed']}")
    lines.append("comb. HIT@3: every request ranked once by sum_h w_h p_h (train.utility_weights); for hide lower is better.")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Test AUC of DLRM and popularity side by side, per config and head (error bars: std over seeds)."""
    groups = {
        f"{Path(r['config']).stem} {r['head']}": {
            "DLRM": (r["model_auc_mean"], r["model_auc_std"]),
            "popularity": (r["popularity_auc_mean"], r["popularity_auc_std"]),
        }
        for r in rows
    }
    return grouped_bars(groups, path, "test AUC (mean ± std over seeds)", "DLRM vs popularity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["configs/dlrm/synthetic.yaml", "configs/dlrm/ml100k.yaml"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench/dlrm_vs_popularity.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = parser.parse_args()
    _quiet_library_noise(verbose=False)
    out = Path(args.out)
    runs = [run_one(c, s, out.parent, args.overrides) for c in args.configs for s in args.seeds]
    rows = summarise(runs)
    print(format_table(rows))
    write_json_atomic(out, {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "summary": rows, "runs": runs,
    })
    print(f"wrote {out} and {plot(rows, png_beside(out))}")


if __name__ == "__main__":
    main()
