"""DLRM against the popularity baseline: per-head test AUC over several seeds.

    python benchmarks/dlrm_vs_popularity.py --configs configs/dlrm/synthetic.yaml configs/dlrm/ml100k.yaml \
        --seeds 0 1 2 --out runs/bench/dlrm_vs_popularity.json

Each (config, seed) is one `recsys train` run (model seed, shuffling and negative sampling follow
the seed; the synthetic data keep their own seed so all runs see the same events). Prints a table
of mean +- standard deviation and writes every run's metrics as JSON.
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


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for config in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == config]
        model = next(k for k in mine[0]["results"] if k.endswith(" test") and not k.startswith("popularity"))
        for head in mine[0]["results"][model]:
            ours = [r["results"][model][head]["auc"] for r in mine]
            base = [r["results"]["popularity test"][head]["auc"] for r in mine]
            rows.append({
                "config": config, "head": head, "seeds": len(mine),
                "model_auc_mean": statistics.mean(ours), "model_auc_std": statistics.pstdev(ours),
                "popularity_auc_mean": statistics.mean(base), "popularity_auc_std": statistics.pstdev(base),
                "model_beats_popularity_every_seed": all(o > b for o, b in zip(ours, base)),
            })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'config':<28}{'head':<11}{'DLRM test AUC':>20}{'popularity AUC':>20}  beats on every seed",
             "-" * 100]
    for r in rows:
        lines.append(
            f"{Path(r['config']).stem:<28}{r['head']:<11}"
            f"{r['model_auc_mean']:>13.4f} ± {r['model_auc_std']:.4f}"
            f"{r['popularity_auc_mean']:>13.4f} ± {r['popularity_auc_std']:.4f}  {r['model_beats_popularity_every_seed']}"
        )
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
