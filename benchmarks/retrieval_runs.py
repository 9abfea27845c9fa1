"""Sequential retrieval (HSTU, SASRec) on one data set: several configs x seeds, run in parallel.

    python benchmarks/retrieval_runs.py --configs configs/hstu/beauty.yaml configs/sasrec/beauty.yaml \
        --seeds 42 43 44 --parallel 6 --out runs/bench/beauty.json [key=value ...]

Each (config, seed) is one `recsys train` process (its own output_dir under the --out folder, so a
stopped batch of runs continues with --resume). Prints test metrics at the best validation epoch as
mean +- standard deviation over seeds and writes every run's report as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transact_ablation import run_environment  # noqa: E402 - the benchmarks' shared split of CPU threads

from recsys.plots import grouped_bars, png_beside  # noqa: E402

METRICS = ("ndcg@10", "hr@10", "ndcg@50", "hr@50", "hr@200", "mrr")


def run_one(config: str, seed: int, root: Path, overrides: list[str], resume: bool, tag: str = "", parallel: int = 1) -> dict:
    name = f"{Path(config).parent.name}-{Path(config).stem}{'-' + tag if tag else ''}-seed{seed}"
    out = root / name
    command = [sys.executable, "-m", "recsys.cli", "train", "--config", config, f"train.seed={seed}",
               "train.progress=false", f"output_dir={out}", *overrides, *(["--resume"] if resume else [])]
    started = time.time()
    with open(root / f"{name}.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=run_environment(parallel))
    report = json.loads((out / "results.json").read_text()) if code == 0 and (out / "results.json").is_file() else None
    return {"config": config + (f" [{tag}]" if tag else ""), "seed": seed, "exit_code": code, "wall_seconds": time.time() - started, "report": report}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for config in dict.fromkeys(r["config"] for r in runs):
        done = [r["report"] for r in runs if r["config"] == config and r["report"]]
        if not done:
            continue
        row = {"config": config, "seeds": len(done), "best_epochs": [d["best_epoch"] for d in done]}
        valid = [d["valid"]["ndcg@10"] for d in done]
        row["valid ndcg@10"] = (statistics.mean(valid), statistics.pstdev(valid))  # what variants are chosen by
        for m in METRICS:
            values = [d["test"][m] for d in done]
            row[m] = (statistics.mean(values), statistics.pstdev(values))
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    columns = ("valid ndcg@10", *METRICS)
    head = f"{'config':<40}{'seeds':>6}" + "".join(f"{m:>20}" for m in columns) + "  best epochs"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r[m][0]:>12.4f} ± {r[m][1]:.4f}" for m in columns)
        lines.append(f"{r['config']:<40}{r['seeds']:>6}{cells}  {r['best_epochs']}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Test metrics of every config side by side (error bars: std over seeds)."""
    groups = {metric: {r["config"]: tuple(r[metric]) for r in rows} for metric in METRICS}
    return grouped_bars(groups, path, "test metric (mean ± std over seeds)", "full-ranking retrieval, test split")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--resume", action="store_true", help="continue each run from its latest checkpoint")
    parser.add_argument("--out", default="runs/bench/retrieval.json")
    parser.add_argument("--tag", default="", help="names this variant's runs (several variants of one config)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(c, s) for c in args.configs for s in args.seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: run_one(*job, out.parent, args.overrides, args.resume, args.tag, args.parallel), jobs))
    rows = summarise(runs)
    print(format_table(rows))
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"date": date.today().isoformat(), "summary": rows, "runs": runs}, indent=2))
    os.replace(tmp, out)
    print(f"wrote {out} and {plot(rows, png_beside(out))}")


if __name__ == "__main__":
    main()
