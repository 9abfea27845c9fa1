"""The ``recsys`` command line.

::

    recsys train --config configs/dlrm/synthetic.yaml [--resume] [key=value ...]
    recsys eval  --config configs/dlrm/synthetic.yaml [--checkpoint DIR] [key=value ...]
    recsys plan  --config configs/plan/dlrm_1b.yaml --topology configs/plan/h100_8x8.yaml --out DIR [key=value ...]
    recsys data inspect --source movielens PATH
    recsys data convert --source movielens PATH OUT
    recsys data synthetic OUT [key=value ...]
    recsys data fetch amazon-beauty|amazon-sports|ml-100k|ml-latest-small|ml-1m|ml-20m [--root DIR] [--url BASE | --from DIR]
    recsys models [PATTERN]
    recsys configs [PATTERN]
    recsys uic serve|warmup|snapshot|rollback|snapshots ...   (the MIMN User Interest Center: recsys/uic/cli.py)
    recsys serve --checkpoint RUN_DIR [--port 8800] ...        (the model server: recsys/serve/cli.py)
    recsys env
    recsys --version

Errors in the input (files, configs, checkpoints) are printed as one message naming the problem
and the fix, with exit status 2; ``--traceback`` shows the stack as well.
"""

from __future__ import annotations

import argparse
import json
import sys

from recsys.errors import RecsysError

# The keys of recsys.data.readers.READERS, named here so that parsing arguments imports no reader.
READER_NAMES = ("amazon", "amazon_ratings", "events", "log", "movielens")
# The keys of recsys.data.datasets.DATASETS, likewise.
DATASET_NAMES = ("amazon-beauty", "amazon-sports", "ml-100k", "ml-latest-small", "ml-1m", "ml-20m")


def _version() -> str:
    import recsys

    return recsys.__version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__.split("\n")[0])
    parser.add_argument("--traceback", action="store_true", help="show the full stack on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="keep the libraries' own warnings")
    parser.add_argument("--version", action="version", version=f"recsys-zoo {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a zoo model from a YAML config")
    train.add_argument("--config", required=True, help="YAML file under configs/")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2")

    ev = sub.add_parser("eval", help="evaluate a checkpoint on the validation and test splits")
    ev.add_argument("--config", required=True)
    ev.add_argument("--checkpoint", default=None, help="checkpoint directory (default: output_dir/checkpoints)")
    ev.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ev.add_argument("overrides", nargs="*")

    plan = sub.add_parser("plan", help="dry-run the sharding planner for a cluster; write plan.json, plan.md, plan_ranks.png")
    plan.add_argument("--config", required=True, help="training YAML: model, table sizes (data section), sharding constraints")
    plan.add_argument("--topology", required=True, help="cluster YAML under configs/plan/ (TopologyConfig)")
    plan.add_argument("--out", required=True, help="folder for plan.json, plan.md and plan_ranks.png")
    plan.add_argument("overrides", nargs="*", help="key=value overrides of --config, e.g. data.synthetic.num_items=1000000000")

    data = sub.add_parser("data", help="inspect and convert event logs")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="print statistics of an event log")
    inspect.add_argument("--source", required=True, choices=READER_NAMES)
    inspect.add_argument("path")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--option", action="append", default=[], help="reader option key=value")
    convert = data_sub.add_parser("convert", help="convert a source into the library's log format")
    convert.add_argument("--source", required=True, choices=READER_NAMES)
    convert.add_argument("path")
    convert.add_argument("out")
    convert.add_argument("--option", action="append", default=[], help="reader option key=value")
    synth = data_sub.add_parser("synthetic", help="generate synthetic events into the log format")
    synth.add_argument("out")
    synth.add_argument("overrides", nargs="*", help="SyntheticConfig fields, e.g. num_users=10000")

    fetch = data_sub.add_parser("fetch", help="download a public data set into the cache folder, checksum-verified")
    fetch.add_argument("name", choices=DATASET_NAMES)
    fetch.add_argument("--root", default=None, help="cache folder (default: $RECSYS_DATA or ~/.cache/recsys-zoo/data)")
    where = fetch.add_mutually_exclusive_group()
    where.add_argument("--url", default=None, help="base address of the files (default: the original source)")
    where.add_argument("--from", dest="source", default=None,
                       help="copy the files from this local folder instead, each checked against its pinned SHA-256")

    configs = sub.add_parser("configs", help="list the installed YAML configs")
    configs.add_argument("pattern", nargs="?", default="*")

    models = sub.add_parser("models", help="list the model zoo")
    models.add_argument("pattern", nargs="?", default="*")

    from recsys.uic.cli import add_parser as add_uic_parser

    add_uic_parser(sub)
    from recsys.serve.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
    sub.add_parser("env", help="print torch/fbgemm/torchrec/triton versions and check they belong together")
    return parser


def _cmd_env(args) -> int:
    from recsys.env import check_environment

    report = check_environment()
    print(report.format())
    return 0 if report.ok else 1


def _cmd_models(args) -> int:
    from recsys.models import get_model_spec, list_models

    for name in list_models(args.pattern):
        print(f"{name:<16} {get_model_spec(name).description}")
    return 0


def _reader_options(options: list[str]) -> dict:
    from recsys.config import parse_overrides

    return parse_overrides(options)


def _cmd_configs(args) -> int:
    from recsys.packaged_configs import configs_dir, list_configs

    for name, description in list_configs(args.pattern):
        print(f"{name:<52} {description}")
    print(f"(installed in {configs_dir()}; `recsys train --config <name>` reads ./<name> first)")
    return 0


def _cmd_data(args) -> int:
    if args.data_command == "fetch":
        from recsys.data.datasets import fetch_dataset

        print(fetch_dataset(args.name, root=args.root, base_url=args.url, source=args.source))
        return 0
    from recsys.data.describe import describe_log, format_description
    from recsys.data.log_io import write_log

    if args.data_command == "synthetic":
        from recsys.config import from_dict, parse_overrides
        from recsys.data.synthetic import SyntheticConfig, generate

        cfg = from_dict(SyntheticConfig, parse_overrides(args.overrides), where="command line")
        log = generate(cfg)
        write_log(log, args.out)
        print(format_description(describe_log(log)))
        print(f"wrote {args.out}")
        return 0

    from recsys.data.readers import read_events

    log = read_events(args.source, args.path, **_reader_options(args.option))
    if args.data_command == "inspect":
        description = describe_log(log)
        print(json.dumps(description, indent=2) if args.json else format_description(description))
    else:
        write_log(log, args.out)
        print(format_description(describe_log(log)))
        print(f"wrote {args.out}")
    return 0


def _cmd_train(args) -> int:
    from recsys.config import load_config
    from recsys.models import get_model_spec
    from recsys.train.config import TrainConfig

    cfg = load_config(TrainConfig, args.config, args.overrides)
    if get_model_spec(cfg.model_name).task == "retrieval":
        from recsys.train.retrieval import run_retrieval_training

        run_retrieval_training(cfg, resume=args.resume)
    else:
        from recsys.train.ranking import run_training

        run_training(cfg, resume=args.resume)
    return 0


def _cmd_eval(args) -> int:
    from recsys.config import load_config
    from recsys.models import get_model_spec
    from recsys.train.config import TrainConfig

    cfg = load_config(TrainConfig, args.config, args.overrides)
    if get_model_spec(cfg.model_name).task == "retrieval":
        from recsys.train.retrieval import run_retrieval_evaluation

        run_retrieval_evaluation(cfg, checkpoint_dir=args.checkpoint, step=args.step)
    else:
        from recsys.train.ranking import run_evaluation

        run_evaluation(cfg, checkpoint_dir=args.checkpoint, step=args.step)
    return 0


def _cmd_plan(args) -> int:
    from recsys.config import load_config
    from recsys.distributed.plan_report import feature_spec_for_plan, plan_dry_run
    from recsys.distributed.topology import TopologyConfig
    from recsys.train.config import TrainConfig

    cfg = load_config(TrainConfig, args.config, args.overrides)
    topology = load_config(TopologyConfig, args.topology)
    from recsys.distributed.plan_lengths import lifelong_rows, plan_lengths
    from recsys.models import model_config

    spec = feature_spec_for_plan(cfg.data)
    report = plan_dry_run(
        cfg.model_name, spec, topology, cfg.sharding, batch_size=cfg.train.batch_size,
        lengths=plan_lengths(cfg, model_config(cfg.model_name, **cfg.model_overrides)),
        optimizer=cfg.optim.dense.name, matmul_precision=cfg.train.matmul_precision,
        lifelong_rows=lifelong_rows(cfg.data), **cfg.model_overrides,
    )
    paths = report.write(args.out)
    for table in report.tables:
        print(f"{table.name:<24} {table.rows:>14,} x {table.dim:<4} {table.sharding_type:<18} ranks {len(set(table.ranks))}")
    for name, stats in report.imbalance.items():
        ratio = stats["max_over_mean"]
        print(f"{name:<8} max {stats['max']:.3f}  max/mean {'-' if ratio is None else f'{ratio:.2f}'}")
    step, dense = report.step_ms, report.dense
    print(f"per rank: activations {dense.activation_gb:.2f} GB, dense {dense.parameter_gb + dense.gradient_gb + dense.optimizer_gb:.2f} GB, "
          f"step {step['total']:.2f} ms (dense compute {step['dense_compute']:.2f}); "
          f"largest batch per rank that fits: {report.largest_batch_size}")
    print(f"planned {topology.world_size} ranks in {report.dry_run_seconds:.1f} s; wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _cmd_serve(args) -> int:
    from recsys.serve.cli import run

    return run(args)


def _cmd_uic(args) -> int:
    from recsys.uic.cli import run

    return run(args)


COMMANDS = {
    "uic": _cmd_uic,
    "serve": _cmd_serve,
    "env": _cmd_env,
    "models": _cmd_models,
    "configs": _cmd_configs,
    "data": _cmd_data,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "plan": _cmd_plan,
}


def _quiet_library_noise(verbose: bool) -> None:
    """TorchRec's planner and DMP warn about internals a user cannot act on; keep them for -v."""
    if verbose:
        return
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*autograd kernel was not registered.*")
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(f, _DropLibraryWarnings) for f in root.filters):
        root.addFilter(_DropLibraryWarnings())  # the planner also logs through the root logger


class _DropLibraryWarnings:
    """Drops records below ERROR that torchrec's and fbgemm's own files log through the root logger."""

    def filter(self, record) -> bool:
        import logging

        return record.levelno >= logging.ERROR or not any(lib in record.pathname for lib in ("torchrec", "fbgemm_gpu"))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_library_noise(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except RecsysError as e:
        if args.traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
