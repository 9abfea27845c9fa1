"""The command line: exit codes, messages without stack traces, and the data commands."""

import json

import pytest

from recsys.cli import main


def test_env_reports_a_consistent_stack(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torchrec" in out and "stack OK" in out


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    assert "dlrm" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--config", "configs/dlrm/synthetic.yaml", "train.epochz=1"], "did you mean 'train.epochs'"),
        (["train", "--config", "configs/nope.yaml"], "does not exist"),
        (["train", "--config", "configs/dlrm/synthetic.yaml", "data.source=movielens"], "data.path is required"),
        (["data", "inspect", "--source", "movielens", "/nonexistent/ml-100k"], "/nonexistent/ml-100k"),
        (["eval", "--config", "configs/dlrm/synthetic.yaml", "output_dir=/nonexistent/run",
          "data.synthetic.num_users=50", "data.synthetic.heavy_user_fraction=0.0"], "no checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err
    assert "Traceback" not in err


def test_data_synthetic_convert_and_inspect_round_trip(tmp_path, capsys):
    out = tmp_path / "log"
    assert main(["data", "synthetic", str(out), "num_users=40", "num_items=100", "heavy_user_fraction=0.0"]) == 0
    assert (out / "events.parquet").is_file()
    capsys.readouterr()
    assert main(["data", "inspect", "--source", "log", str(out), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["users"] == 40 and described["items"] == 100

    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,timestamp,actions\n1,7,10,click\n1,8,20,\n2,7,15,click|save\n")
    converted = tmp_path / "converted"
    assert main(["data", "convert", "--source", "events", str(csv), str(converted)]) == 0
    capsys.readouterr()
    assert main(["data", "inspect", "--source", "log", str(converted), "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["events"] == 3 and described["users"] == 2


def test_plan_writes_the_dry_run_report(tmp_path, capsys):
    out = tmp_path / "plan"
    argv = ["plan", "--config", "configs/plan/dlrm_1b.yaml", "--topology", "configs/plan/h100_8x8.yaml",
            "--out", str(out), "data.synthetic.num_items=2000000", "sharding.tables.t_surface.sharding_types=[data_parallel]"]
    assert main(argv) == 0
    assert "planned 64 ranks" in capsys.readouterr().out
    report = json.loads((out / "plan.json").read_text())
    tables = {t["name"]: t for t in report["tables"]}
    assert tables["t_item_id"]["rows"] == 2_000_000 and tables["t_user_id"]["rows"] == 100_000_000
    assert tables["t_surface"]["sharding_type"] == "data_parallel" and len(tables["t_surface"]["ranks"]) == 64
    assert (out / "plan.md").is_file() and (out / "plan_ranks.png").stat().st_size > 0
    assert main(["plan", "--config", "configs/plan/dlrm_1b.yaml", "--topology", "configs/dlrm/synthetic.yaml",
                 "--out", str(out)]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_data_source_choices_are_the_registered_readers():
    from recsys.cli import READER_NAMES
    from recsys.data.readers import READERS

    assert sorted(READER_NAMES) == sorted(READERS)


def _table(out: str, start: str, end: str) -> str:
    """The lines of ``out`` from the first one starting with ``start`` through the next one starting with ``end``."""
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    last = next(i for i in range(first, len(lines)) if lines[i].startswith(end))
    return "\n".join(lines[first:last + 1])


def test_eval_of_a_ranking_run_prints_the_training_table(tmp_path, capsys, one_thread):
    from tests.tiny import TINY_SYNTHETIC_DLRM

    overrides = [*TINY_SYNTHETIC_DLRM, f"output_dir={tmp_path}", "train.progress=false", "train.baseline=false"]
    assert main(["train", "--config", "configs/dlrm/synthetic.yaml", *overrides]) == 0
    trained = capsys.readouterr().out
    assert main(["eval", "--config", "configs/dlrm/synthetic.yaml", *overrides]) == 0
    evaluated = capsys.readouterr().out
    for split in ("valid", "test"):
        table = _table(trained, f"{split} split, per-head metrics", "HIT@3:")
        assert "dlrm " + split in table and table == _table(evaluated, f"{split} split, per-head metrics", "HIT@3:")
    checkpoints = tmp_path / "checkpoints"
    step = next(checkpoints.glob("step_*")).name
    elsewhere = [*TINY_SYNTHETIC_DLRM, "output_dir=/nonexistent", "train.progress=false", "train.baseline=false"]
    assert main(["eval", "--config", "configs/dlrm/synthetic.yaml", "--checkpoint", str(checkpoints),
                 "--step", str(int(step.split("_")[1])), *elsewhere]) == 0
    assert _table(capsys.readouterr().out, "test split", "HIT@3:") == _table(trained, "test split", "HIT@3:")


# Every ranking entry of the zoo, by the config that trains it on the synthetic feed (dlrm above, the
# retrieval entries below).
RANKING_CONFIGS = {
    "bst": "configs/transact/bst_synthetic.yaml",
    "din": "configs/din/synthetic.yaml",
    "emb_mlp": "configs/emb_mlp/synthetic.yaml",
    "gru4rec": "configs/gru4rec/synthetic.yaml",
    "hstu_ranking": "configs/hstu/synthetic_ranking.yaml",
    "mimn": "configs/mimn/synthetic.yaml",
    "pinnability": "configs/transact/pinnability_synthetic.yaml",
    "transact_v1": "configs/transact/transact_v1_synthetic.yaml",
    "transact_v2": "configs/transact/transact_v2_synthetic.yaml",
}


def test_eval_covers_every_zoo_entry():
    from recsys.models import list_models

    assert set(RANKING_CONFIGS) | {"dlrm", "hstu", "sasrec"} == set(list_models())


@pytest.mark.parametrize("model", sorted(RANKING_CONFIGS))
def test_eval_of_every_ranking_entry_prints_the_training_test_table(tmp_path, capsys, one_thread, model):
    from tests.tiny import TINY_SYNTHETIC_DATA

    config = RANKING_CONFIGS[model]
    overrides = [*TINY_SYNTHETIC_DATA, "train.epochs=1", f"output_dir={tmp_path}", "train.progress=false",
                 "train.baseline=false"]
    if model == "transact_v2":
        overrides.append(f"data.lifelong.cache_dir={tmp_path / 'lifelong'}")
    assert main(["train", "--config", config, *overrides]) == 0
    trained = capsys.readouterr().out
    assert main(["eval", "--config", config, *overrides]) == 0
    evaluated = _table(capsys.readouterr().out, "test split, per-head metrics", "HIT@3:")
    assert f"{model} test" in evaluated and evaluated == _table(trained, "test split, per-head metrics", "HIT@3:")


@pytest.mark.parametrize("model", ["hstu", "sasrec"])
def test_eval_of_a_retrieval_run_prints_the_training_table(tmp_path, capsys, one_thread, model):
    import yaml

    from recsys.config import to_dict
    from tests.recsys.train.test_retrieval_recipe import retrieval_config, write_walks

    cfg = retrieval_config(tmp_path / "run", model, write_walks(tmp_path / "walks.csv"), "train.epochs=1")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", "--config", str(config)]) == 0
    trained = capsys.readouterr().out.splitlines()
    assert main(["eval", "--config", str(config)]) == 0
    evaluated = capsys.readouterr().out.splitlines()
    header = next(line for line in evaluated if line.startswith("metric"))
    assert "checkpoint of step" in header and "epoch 1" in header
    rows = [line for line in evaluated[evaluated.index(header) + 1:] if line.split()[:1] and "@" in line.split()[0] or line.startswith("mrr")]
    assert len(rows) >= 5 and all(row in trained for row in rows)  # the training table's rows: test at epoch 1 = the checkpoint


def test_version(capsys):
    import recsys

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"recsys-zoo {recsys.__version__}"


def test_configs_lists_the_installed_configs_and_train_reads_them_outside_a_checkout(tmp_path, capsys, monkeypatch):
    assert main(["configs", "dlrm/*"]) == 0
    out = capsys.readouterr().out
    assert "configs/dlrm/synthetic.yaml" in out and "configs/hstu" not in out
    from recsys.config import load_config
    from recsys.train.config import TrainConfig

    monkeypatch.chdir(tmp_path)  # no configs/ here: the installed copy is read
    assert load_config(TrainConfig, "configs/dlrm/synthetic.yaml").model_name == "dlrm"
