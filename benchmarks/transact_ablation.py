"""TransAct ablation on the synthetic lifelong data: every sequence encoder x seeds, per-head test HIT@3 and AUC.

    python benchmarks/transact_ablation.py --seeds 0 1 2 --parallel 2 --out runs/bench/transact_ablation.json \
        [key=value ...]
    python benchmarks/transact_ablation.py --suite ml100k --seeds 0 1 2 --out runs/bench/transact_ml100k.json

Rows (the TransAct V2 paper's ablation, plus the no-sequence and BST baselines), so that every effect
separates: Pinnability without a sequence, BST, V1 (the 100 latest actions), V1 + next-action loss
(NAL) with in-batch negatives, V1 + NAL with impression negatives, V2 without NAL, V2 + NAL in-batch,
V2 + NAL impressions (the paper's V2), and V2 without NN selection (every part of S_all keeps its
most recent tokens: ``data.lifelong.selection=recent``). Each row takes its ``model`` section from
its config in configs/transact/ and everything else (data, loss, optimiser, trainer) from the
TransAct V2 config, then its own overrides (:data:`ROWS`), so all rows train and test on the same
rows of lifelong batches (BST and V1 read the stored realtime history, S_RT's latest 100 events).
A seed sets both the model seed and the synthetic world's seed; the rows of one seed share its data
builds (the store and S_all are built once per distinct data config, under
``<out folder>/lifelong-cache``, before the runs start). ``--suite ml100k`` is the real-data check: no sequence, BST and TransAct V1
on MovieLens 100K, every row with the data and training of configs/transact/transact_v1_ml100k.yaml.
``key=value`` overrides apply to every run (e.g. to shrink the data).

Each (row, seed) is one ``recsys train`` process with its own output_dir under the --out folder
(``--resume`` continues stopped runs). Prints per-head test HIT@3 and AUC as the mean over seeds and
the half-width of its 95% confidence interval (Student t over seeds), then each row's per-seed
difference to the no-sequence row the same way (paired: a seed's synthetic world moves every row
alike), and writes every run as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import yaml

from recsys.atomic_files import write_json_atomic
from recsys.plots import grouped_bars, png_beside

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = "configs/transact/transact_v2_synthetic.yaml"
V2_CONFIG = "configs/transact/transact_v2_synthetic.yaml"
ROWS = (  # (row name, config whose model section the row trains[, key=value overrides of the row])
    ("no sequence", "configs/transact/pinnability_synthetic.yaml"),
    ("BST", "configs/transact/bst_synthetic.yaml"),
    ("V1 (100)", "configs/transact/transact_v1_synthetic.yaml", ("model.transact_v1.max_sequence=100",)),
    ("V1 + NAL in-batch", "configs/transact/transact_v1_nal_inbatch_synthetic.yaml"),
    ("V1 + NAL impressions", "configs/transact/transact_v1_nal_impressions_synthetic.yaml"),
    ("V2 without NAL", V2_CONFIG, ("model.next_action_loss.enabled=false",)),
    ("V2 + NAL in-batch", V2_CONFIG, ("model.next_action_loss.negatives=in_batch",)),
    ("V2 + NAL impressions", V2_CONFIG),
    ("V2 without NN selection", V2_CONFIG, ("data.lifelong.selection=recent",)),
)
# The real-data check: MovieLens has neither impressions nor lifelong histories beyond the ratings,
# so only the rows without them.
ML100K_ROWS = (
    ("no sequence", "configs/transact/pinnability_ml100k.yaml"),
    ("BST", "configs/transact/bst_ml100k.yaml"),
    ("TransAct V1", "configs/transact/transact_v1_ml100k.yaml"),
)
SUITES = {  # suite -> (config giving data and training to every row, rows)
    # (rows without overrides are 2-tuples; row_overrides gives every row's, () when it has none)
    "synthetic": (BASE_CONFIG, ROWS),
    "ml100k": ("configs/transact/transact_v1_ml100k.yaml", ML100K_ROWS),
}
METRICS = ("hit@3", "combined_hit@3", "auc")  # combined: each request ranked once by the utility of all heads
ORACLE = "oracle"  # the generator's exact action probabilities, one row per seed
# Student t quantiles t_{0.975, df} for df = 1..30 (two-sided 95%).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table up to 30 degrees of freedom, then its expansion around the normal."""
    if df < 1:
        return math.nan
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_and_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (NaN with fewer than 2 values)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    if len(values) < 2:
        return values[0], math.nan
    return statistics.mean(values), t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def row_overrides(row: tuple) -> list[str]:
    """The row's own key=value overrides (after the base config and the row's model section)."""
    return list(row[2]) if len(row) > 2 else []


def row_config(name: str, config: str, folder: Path, base_config: str = BASE_CONFIG) -> Path:
    """A YAML with the row's ``model`` section and the base config's other sections, under ``folder``."""
    base = yaml.safe_load((ROOT / base_config).read_text())
    model = yaml.safe_load((ROOT / config).read_text())["model"]
    path = folder / "configs" / f"{slug(name)}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# recsys train --config {path}\n# {name}: model of {config}, data and training of {base_config}\n"
    path.write_text(header + yaml.safe_dump({**base, "model": model}, sort_keys=False))
    return path


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def seed_overrides(seed: int, folder: Path) -> list[str]:
    return [f"train.seed={seed}", f"data.synthetic.seed={seed}", f"data.lifelong.cache_dir={folder / 'lifelong-cache'}"]


def build_data(config: Path, seed: int, folder: Path, overrides: list[str]) -> float:
    """Builds (or finds) the seed's store and S_all of one data config, before its runs; returns the
    seconds taken (a cache hit takes little: rows of one data config share the build)."""
    from recsys.config import load_config
    from recsys.data.lifelong_pipeline import prepare_lifelong_data
    from recsys.data.pipeline import build_ranking_data, load_events
    from recsys.train.config import TrainConfig

    started = time.time()
    cfg = load_config(TrainConfig, config, [*seed_overrides(seed, folder), *overrides])
    data = build_ranking_data(cfg.data, seed=cfg.train.seed, log=load_events(cfg.data))
    if cfg.data.lifelong.enabled:
        prepare_lifelong_data(data, cfg.data.lifelong, cfg.data.lifelong.cache_dir)
    return time.time() - started


def run_environment(parallel: int) -> dict[str, str]:
    """The runs' environment: the machine's cores split between the runs that share it (threads
    of concurrent runs spinning on the same cores slow every run down several times)."""
    threads = max(1, (os.cpu_count() or 1) // max(parallel, 1))
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}


def run_one(name: str, config: Path, seed: int, folder: Path, overrides: list[str], resume: bool,
            parallel: int = 1) -> dict:
    out = folder / f"{slug(name)}-seed{seed}"
    model = yaml.safe_load(config.read_text())["model"]["name"]
    results = out / "results.json"
    if resume and results.is_file():  # finished before: read, not rerun
        report = json.loads(results.read_text())
        return {"row": name, "seed": seed, "exit_code": 0, "wall_seconds": 0.0,
                "test": report.get(f"{model} test"), "oracle": report.get(f"{ORACLE} test")}
    command = [sys.executable, "-m", "recsys.cli", "train", "--config", str(config), *seed_overrides(seed, folder),
               "train.progress=false", f"output_dir={out}", *overrides, *(["--resume"] if resume else [])]
    started = time.time()
    with open(folder / f"{slug(name)}-seed{seed}.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=run_environment(parallel))
    report = json.loads(results.read_text()) if code == 0 and results.is_file() else None
    test = report.get(f"{model} test") if report else None
    oracle = report.get(f"{ORACLE} test") if report else None
    return {"row": name, "seed": seed, "exit_code": code, "wall_seconds": time.time() - started, "test": test,
            "oracle": oracle}


def with_oracle_row(runs: list[dict]) -> list[dict]:
    """``runs`` plus one pseudo-run per seed scoring with the generator's exact probabilities (the
    same for every row of a seed: the first finished run's copy)."""
    seeds = {}
    for r in runs:
        if r.get("oracle") and r["seed"] not in seeds:
            seeds[r["seed"]] = {"row": ORACLE, "seed": r["seed"], "exit_code": 0, "wall_seconds": 0.0, "test": r["oracle"]}
    return [*runs, *seeds.values()]


def models_above_the_oracle(rows: list[dict]) -> list[str]:
    """``row metric head`` wherever a trained row's mean beats the oracle's by more than both 95%
    half-widths together (hide HIT@3 is better when lower): a leak to find, not a result."""
    oracle = next((r for r in rows if r["row"] == ORACLE), None)
    if oracle is None:
        return []
    above = []
    for r in rows:
        if r["row"] == ORACLE:
            continue
        for key in (k for k in r if k.startswith(METRICS)):
            (m, hm), (o, ho) = r[key], oracle[key]
            sign = -1.0 if key.endswith(" hide") and "hit@3" in key else 1.0
            if sign * (m - o) > (hm if hm == hm else 0.0) + (ho if ho == ho else 0.0):
                above.append(f"{r['row']} {key}")
    return above


def reported_metrics(test: dict) -> list[str]:
    """The :data:`METRICS` a run's per-head test results hold (results of older runs lack the combined HIT@3)."""
    first = next(iter(test.values()), {})
    return [metric for metric in METRICS if metric in first]


def summarise(runs: list[dict]) -> list[dict]:
    """Per row and head: mean and 95% half-width of each metric over the seeds that finished."""
    rows = []
    for name in dict.fromkeys(r["row"] for r in runs):
        done = [r["test"] for r in runs if r["row"] == name and r["test"]]
        if not done:
            continue
        heads = list(done[0])
        rows.append({"row": name, "seeds": len(done), **{
            f"{metric} {head}": mean_and_interval([float(d[head][metric]) for d in done])
            for metric in reported_metrics(done[0]) for head in heads
        }})
    return rows


def summarise_paired(runs: list[dict], baseline: str = "no sequence") -> list[dict]:
    """Per row and head: mean and 95% half-width of ``row - baseline`` over the seeds both finished.

    A seed draws its own synthetic world, so rows differ less from each other on one seed than
    seeds differ from each other: the per-seed difference removes the world-to-world spread.
    """
    base = {r["seed"]: r["test"] for r in runs if r["row"] == baseline and r["test"]}
    rows = []
    for name in dict.fromkeys(r["row"] for r in runs if r["row"] != baseline):
        pairs = [(r["test"], base[r["seed"]]) for r in runs if r["row"] == name and r["test"] and r["seed"] in base]
        if not pairs:
            continue
        heads = list(pairs[0][0])
        rows.append({"row": f"{name} - {baseline}", "seeds": len(pairs), **{
            f"{metric} {head}": mean_and_interval([float(a[head][metric]) - float(b[head][metric]) for a, b in pairs])
            for metric in reported_metrics(pairs[0][0]) for head in heads
        }})
    return rows


def format_table(rows: list[dict], metric: str) -> str:
    """One line per row: ``mean ± half-width`` of ``metric`` for every head (signed for differences)."""
    if not rows:
        return "no run finished"
    paired = " - " in rows[0]["row"]
    columns = [key for key in rows[0] if key.startswith(metric + " ")]
    width = max(22, *(len(c) + 2 for c in columns))
    head = f"{'row':<36}{'seeds':>6}" + "".join(f"{c:>{width}}" for c in columns)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r[c][0]:>+{width - 9}.4f} ± {r[c][1]:<6.4f}" if paired else f"{r[c][0]:>{width - 9}.4f} ± {r[c][1]:<6.4f}"
                        for c in columns)
        lines.append(f"{r['row']:<36}{r['seeds']:>6}{cells}")
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> list[Path]:
    """The rows side by side per head, one PNG per metric: ``<out>.png`` (HIT@3), ``<out>_auc.png``
    (error bars: 95% CI half-widths over seeds)."""
    paths = []
    for i, metric in enumerate(METRICS):
        heads = [key.removeprefix(metric + " ") for key in (rows[0] if rows else {}) if key.startswith(metric + " ")]
        if not heads:
            continue
        groups = {head: {r["row"]: tuple(r[f"{metric} {head}"]) for r in rows} for head in heads}
        path = png_beside(out) if i == 0 else out.with_name(f"{out.stem}_{metric.replace('@', '')}.png")
        note = " (hide: lower is better)" if "hit@3" in metric else ""
        paths.append(grouped_bars(groups, path, f"test {metric.upper()} (mean ± 95% CI)", f"TransAct ablation{note}"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--suite", choices=sorted(SUITES), default="synthetic",
                        help="synthetic: the ablation on lifelong synthetic data; ml100k: the real-data check")
    parser.add_argument("--rows", nargs="+", help="row names to run (default: all of the suite)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--resume", action="store_true",
                        help="read the runs that finished, continue the others from their latest checkpoint")
    parser.add_argument("--out", default="runs/bench/transact_ablation.json")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = parser.parse_args()
    base_config, suite_rows = SUITES[args.suite]
    names = [row[0] for row in suite_rows]
    args.rows = args.rows or names
    unknown = sorted(set(args.rows) - set(names))
    if unknown:
        parser.error(f"unknown rows {unknown}; rows of suite {args.suite}: {names}")
    out = Path(args.out).resolve()
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [row for row in suite_rows if row[0] in args.rows]
    configs = {row[0]: row_config(row[0], row[1], folder, base_config) for row in chosen}
    extra = {row[0]: row_overrides(row) for row in chosen}
    data_overrides = {tuple(o for o in extra[name] if o.startswith("data.")): name for name in reversed(configs)}
    finished = lambda seed: args.resume and all(  # noqa: E731 - a resumed seed whose runs all finished needs no data
        (folder / f"{slug(name)}-seed{seed}" / "results.json").is_file() for name in configs)
    build_seconds = {seed: sum(build_data(configs[name], seed, folder, [*keys, *args.overrides])
                               for keys, name in data_overrides.items()) for seed in args.seeds if not finished(seed)}
    jobs = [(name, config, seed) for seed in args.seeds for name, config in configs.items()]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: run_one(*job, folder, [*extra[job[0]], *args.overrides], args.resume,
                                                 args.parallel), jobs))
    rows, paired = summarise(with_oracle_row(runs)), summarise_paired(runs)
    for metric in METRICS:
        note = " (hide: lower is better)" if "hit@3" in metric else ""
        print(f"\ntest {metric.upper()}, mean ± 95% CI half-width over seeds{note}")
        print(format_table(rows, metric))
        print(f"\ntest {metric.upper()}, difference to the no-sequence row on the same seed, mean ± 95% CI half-width")
        print(format_table(paired, metric))
    above = models_above_the_oracle(rows)
    print(f"\nrows above the oracle beyond their intervals: {above or 'none'}")
    failed = [f"{r['row']} seed {r['seed']}" for r in runs if not r["test"]]
    if failed:
        print(f"\nfailed runs (see their .log files in {folder}): {failed}")
    report = {"date": date.today().isoformat(), "suite": args.suite, "base_config": base_config, "seeds": args.seeds, "overrides": args.overrides,
              "data_build_seconds": build_seconds, "summary": rows, "paired_with_no_sequence": paired, "above_oracle": above, "runs": runs}
    write_json_atomic(out, report)
    print(f"wrote {out} and {', '.join(str(p) for p in plot(rows, out))}")


if __name__ == "__main__":
    main()
