"""MIMN against DIN, Embedding&MLP and GRU4Rec under the MIMN paper's protocol: test AUC over seeds.

    python benchmarks/mimn_paper_eval.py --suite ml100k --seeds 0 1 2 --parallel 1
    python benchmarks/mimn_paper_eval.py --suite synthetic --device cuda --parallel 4 --resume \
        [data.synthetic.num_users=500 train.epochs=1 ...]

Every model trains ``configs/<model>/lastbehavior_<suite>.yaml`` (the same data, protocol and
training for all: ``data.protocol: last_behavior``, each user's last behaviour against one sampled
item the user never had an event with; Pi et al., KDD 2019, §5.1) with ``train.seed`` (and on the
synthetic suite ``data.synthetic.seed``) set to the seed, as one ``recsys train`` process with its
own output_dir under the --out folder (``--resume`` reads finished runs and continues the others
from their checkpoints). ``key=value`` overrides (``data.*``, ``train.*``, ``model.*``) apply to
every run. ``--device cpu`` hides the GPUs from the runs, ``cuda`` needs one (``--gpus N`` spreads
the runs over N of them), ``auto`` takes a GPU when there is one.

Prints the test AUC of every model (and of the popularity baseline) as the mean over seeds with
the half-width of its 95% confidence interval (Student t), then the paired per-seed differences
MIMN - DIN, DIN - Emb&MLP, MIMN - Emb&MLP and MIMN - GRU4Rec the same way (a seed's data and negatives
move every model alike), and whether the paper's order MIMN > DIN > Emb&MLP holds with separated
intervals. Writes every run as JSON (``--out``) and a bar chart with the intervals beside it (PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transact_ablation import mean_and_interval  # noqa: E402 - the benchmarks' shared t interval

from recsys.atomic_files import write_json_atomic  # noqa: E402
from recsys.plots import grouped_bars, png_beside  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("mimn", "din", "emb_mlp", "gru4rec")
LABELS = {"mimn": "MIMN", "din": "DIN", "emb_mlp": "Emb&MLP", "gru4rec": "GRU4Rec", "popularity": "popularity"}
SUITES = ("synthetic", "ml100k", "mllatest")
PAIRS = (("mimn", "din"), ("din", "emb_mlp"), ("mimn", "emb_mlp"), ("mimn", "gru4rec"))
POPULARITY = "popularity"


def config_path(model: str, suite: str) -> Path:
    return ROOT / "configs" / model / f"lastbehavior_{suite}.yaml"


def seed_overrides(suite: str, seed: int) -> list[str]:
    return [f"train.seed={seed}", *([f"data.synthetic.seed={seed}"] if suite == "synthetic" else [])]


def run_environment(device: str, parallel: int, job: int, gpus: int) -> dict[str, str]:
    """The run's environment: its share of the CPU threads and the GPUs it may see."""
    threads = max(1, (os.cpu_count() or 1) // max(parallel, 1))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif device == "cuda" and gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(job % gpus)
    return env


def test_auc(report: dict | None, name: str) -> float | None:
    """The single head's test AUC of ``name`` in a results.json (None when absent)."""
    heads = (report or {}).get(f"{name} test")
    return float(next(iter(heads.values()))["auc"]) if heads else None


def run_one(model: str, suite: str, seed: int, folder: Path, overrides: list[str], resume: bool,
            env: dict[str, str]) -> dict:
    out = folder / f"{model}-seed{seed}"
    results = out / "results.json"
    started, code = time.time(), 0
    if not (resume and results.is_file()):  # finished before: read, not rerun
        command = [sys.executable, "-m", "recsys.cli", "train", "--config", str(config_path(model, suite)),
                   *seed_overrides(suite, seed), "train.progress=false", f"output_dir={out}", *overrides,
                   *(["--resume"] if resume else [])]
        with open(folder / f"{model}-seed{seed}.log", "w") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    report = json.loads(results.read_text()) if code == 0 and results.is_file() else None
    return {"model": model, "seed": seed, "exit_code": code, "wall_seconds": time.time() - started,
            "train_seconds": (report or {}).get("train_seconds"), "auc": test_auc(report, model),
            "popularity_auc": test_auc(report, POPULARITY)}


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per model (and the popularity baseline, once per seed): seeds, mean AUC and its 95% half-width."""
    values = {model: [r["auc"] for r in runs if r["model"] == model and r["auc"] is not None]
              for model in dict.fromkeys(r["model"] for r in runs)}
    popularity = {r["seed"]: r["popularity_auc"] for r in runs if r["popularity_auc"] is not None}
    if popularity:
        values[POPULARITY] = list(popularity.values())
    return {model: {"seeds": len(v), "auc": mean_and_interval(v)} for model, v in values.items() if v}


def summarise_pairs(runs: list[dict]) -> dict[str, dict]:
    """``a - b`` for :data:`PAIRS`: mean and 95% half-width of the per-seed differences of test AUC."""
    auc = {(r["model"], r["seed"]): r["auc"] for r in runs if r["auc"] is not None}
    pairs = {}
    for a, b in PAIRS:
        diffs = [auc[(a, s)] - auc[(b, s)] for (m, s) in auc if m == a and (b, s) in auc]
        if diffs:
            pairs[f"{LABELS[a]} - {LABELS[b]}"] = {"seeds": len(diffs), "auc": mean_and_interval(diffs)}
    return pairs


def paper_order_holds(pairs: dict[str, dict]) -> bool | None:
    """MIMN > DIN > Emb&MLP with both paired intervals above 0 (None without the pairs or intervals)."""
    needed = [pairs.get("MIMN - DIN"), pairs.get("DIN - Emb&MLP")]
    if not all(needed) or any(p["auc"][1] != p["auc"][1] for p in needed):  # NaN half-width: one seed
        return None
    return all(p["auc"][0] - p["auc"][1] > 0 for p in needed)


def format_table(rows: dict[str, dict], signed: bool = False) -> str:
    lines = [f"{'':<20}{'seeds':>6}{'test AUC':>12}{'± 95% CI':>12}", "-" * 50]
    for name, row in rows.items():
        mean, half = row["auc"]
        lines.append(f"{LABELS.get(name, name):<20}{row['seeds']:>6}{mean:>+12.4f}{half:>12.4f}" if signed
                     else f"{LABELS.get(name, name):<20}{row['seeds']:>6}{mean:>12.4f}{half:>12.4f}")
    return "\n".join(lines)


def plot(summary: dict[str, dict], suite: str, out: Path) -> Path:
    """Bars of mean test AUC per model with 95% CI error bars (PNG beside the JSON)."""
    groups = {"test AUC": {LABELS.get(m, m): tuple(row["auc"]) for m, row in summary.items()}}
    return grouped_bars(groups, png_beside(out), "test AUC (mean ± 95% CI over seeds)",
                        f"MIMN paper protocol ({suite}): last behaviour vs a negative")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=SUITES, default="ml100k")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--gpus", type=int, default=1, help="with --device cuda: spread the runs over this many GPUs")
    parser.add_argument("--resume", action="store_true",
                        help="read the runs that finished, continue the others from their latest checkpoint")
    parser.add_argument("--out", help="JSON report (default runs/bench/mimn_paper_eval_<suite>/report.json)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no GPU is visible to torch here")
    out = Path(args.out or f"runs/bench/mimn_paper_eval_{args.suite}/report.json").resolve()
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(model, seed) for seed in args.seeds for model in args.models]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda ij: run_one(
            ij[1][0], args.suite, ij[1][1], folder, args.overrides, args.resume,
            run_environment(args.device, args.parallel, ij[0], args.gpus)), enumerate(jobs)))
    summary, pairs = summarise(runs), summarise_pairs(runs)
    order = paper_order_holds(pairs)
    print(f"\n{args.suite}: test AUC, mean ± 95% CI half-width over seeds {args.seeds}")
    print(format_table(summary))
    print("\npaired differences on the same seed (test AUC)")
    print(format_table(pairs, signed=True))
    print(f"\nMIMN > DIN > Emb&MLP with separated paired intervals: "
          f"{'yes' if order else 'no' if order is False else 'undecided (needs 2+ seeds of mimn, din, emb_mlp)'}")
    failed = [f"{r['model']} seed {r['seed']}" for r in runs if r["auc"] is None]
    if failed:
        print(f"failed runs (see their .log files in {folder}): {failed}")
    report = {"date": date.today().isoformat(), "suite": args.suite, "seeds": args.seeds, "device": args.device,
              "overrides": args.overrides, "configs": {m: str(config_path(m, args.suite).relative_to(ROOT)) for m in args.models},
              "summary": summary, "paired": pairs, "paper_order_holds": order, "runs": runs}
    write_json_atomic(out, report)
    print(f"wrote {out} and {plot(summary, args.suite, out) if summary else 'no plot (no run finished)'}")
    return report


if __name__ == "__main__":
    main()
