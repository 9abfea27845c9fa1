"""recsys.load gives back the trained model, unsharded and in eval mode, from any of a run's
folders; batches are pytrees; the exported dense part of DLRM, TransAct V2, HSTU and SASRec gives the
eager model's outputs on batches of other sizes than the one it was traced on."""

import dataclasses
import shutil
import subprocess
import sys

import pytest
import torch
import torch.utils._pytree as pytree
from torchrec.distributed.model_parallel import DistributedModelParallel

import recsys
from recsys.config import load_config
from recsys.data.loader import make_dataloader
from recsys.data.sequences import make_sequence_dataloader
from recsys.errors import CheckpointError, ConfigError
from recsys.inference import dense_inputs, dense_part, export_dense
from recsys.train.config import TrainConfig
from recsys.train.ranking import RankingRecipe
from recsys.train.retrieval import RetrievalRecipe
from tests.recsys.train.test_ranking_transact_v2 import TINY as TINY_TRANSACT_V2
from tests.recsys.train.test_retrieval_recipe import retrieval_config, write_walks
from tests.tiny import TINY_SYNTHETIC_DLRM

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = ["train.progress=false", "train.baseline=false", "train.epochs=1"]


def _ranking_run(out, config: str, overrides: list[str]):
    """Trains a ranking config; returns (run folder, two test batches, the trained model's logits on them)."""
    cfg = load_config(TrainConfig, config, [*overrides, *QUIET, f"output_dir={out}"])
    recipe = RankingRecipe(cfg)
    recipe.setup()
    try:
        recipe.train()
        recipe.model.eval()
        examples = recipe.data.examples("test")
        batches = [next(iter(make_dataloader(examples, size, shuffle=False, seed=0, collate=recipe._collate(examples))))
                   for size in (64, 37)]
        with torch.no_grad():
            logits = [recipe.model(batch)[1] for batch in batches]
    finally:
        recipe.cleanup()
    return out, batches, logits


@pytest.fixture(scope="module")
def dlrm_run(tmp_path_factory):
    return _ranking_run(tmp_path_factory.mktemp("dlrm"), "configs/dlrm/synthetic.yaml", TINY_SYNTHETIC_DLRM)


@pytest.fixture(scope="module")
def transact_v2_run(tmp_path_factory):
    overrides = [o for o in TINY_TRANSACT_V2 if not o.startswith("train.epochs")]
    return _ranking_run(tmp_path_factory.mktemp("transact_v2"), "configs/transact/transact_v2_synthetic.yaml", overrides)


@pytest.fixture(scope="module", params=["hstu", "sasrec"])
def retrieval_run(tmp_path_factory, request):
    """A tiny retrieval run on item walks: (run folder, two test batches, the trained model's user vectors)."""
    root = tmp_path_factory.mktemp(request.param)
    cfg = retrieval_config(root / "run", request.param, write_walks(root / "walks.csv"), "train.epochs=1")
    recipe = RetrievalRecipe(cfg)
    recipe.setup()
    try:
        recipe.train()
        module = recipe.model.module.eval()
        batches = [next(iter(make_sequence_dataloader(recipe.test_rows, size, shuffle=False, seed=0))) for size in (64, 37)]
        with torch.no_grad():
            users = [module.user_vectors(batch) for batch in batches]
    finally:
        recipe.cleanup()
    return root / "run", batches, users


def test_load_gives_the_trained_model_unsharded_in_eval_mode_from_any_run_folder(dlrm_run):
    run, batches, logits = dlrm_run
    step_dir = next((run / "checkpoints").glob("step_*"))
    for path in (run, run / "checkpoints", step_dir, str(run)):
        model = recsys.load(path)
        assert not model.training and not isinstance(model, DistributedModelParallel)
        assert all(p.device.type == "cpu" for p in model.parameters())
        with torch.no_grad():
            assert torch.allclose(model(batches[0]), logits[0], atol=1e-6)


def test_load_rebuilds_the_feature_spec_of_a_run_written_without_one(dlrm_run, tmp_path):
    run, batches, logits = dlrm_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "feature_spec.json").unlink()
    with torch.no_grad():
        assert torch.allclose(recsys.load(copy)(batches[1]), logits[1], atol=1e-6)


def test_load_names_what_a_run_folder_holds(tmp_path, dlrm_run):
    with pytest.raises(CheckpointError, match="config.json and checkpoints/"):
        recsys.load(tmp_path)
    with pytest.raises(CheckpointError, match="available steps"):
        recsys.load(dlrm_run[0], step=123456)


def test_import_recsys_loads_no_torch():
    code = "import sys, recsys; assert 'torch' not in sys.modules, 'torch imported'; assert callable(recsys.load)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batches_are_pytrees(dlrm_run, retrieval_run):
    for batch in (dlrm_run[1][0], retrieval_run[1][0]):
        leaves, spec = pytree.tree_flatten(batch)  # TorchRec's jagged tensors flatten their unset fields to None
        tensors = [leaf for leaf in leaves if leaf is not None]
        assert all(isinstance(leaf, torch.Tensor) for leaf in tensors)
        assert sum(leaf.numel() for leaf in tensors) > batch.batch_size
        rebuilt = pytree.tree_unflatten([None if leaf is None else leaf.clone() for leaf in leaves], spec)
        assert type(rebuilt) is type(batch)
        assert all(torch.equal(a, b) for a, b in zip(tensors, [x for x in pytree.tree_leaves(rebuilt) if x is not None]))


def _check_export(model, batches, expected):
    program = export_dense(model, batches[0])
    for batch, reference in zip(batches, expected):  # the second batch has another size than the traced one
        with torch.no_grad():
            exported = program.module()(dense_inputs(model, batch))
            eager = dense_part(model)(dense_inputs(model, batch))
        assert exported.shape == reference.shape
        torch.testing.assert_close(exported, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(eager, reference, atol=1e-5, rtol=1e-5)
    assert not any("sparse_arch" in name or "item_embeddings" in name for name in program.state_dict), "tables exported"


def test_exported_dlrm_dense_part_matches_eager(dlrm_run):
    run, batches, logits = dlrm_run
    _check_export(recsys.load(run), batches, logits)


def test_exported_transact_v2_dense_part_matches_eager(transact_v2_run):
    run, batches, logits = transact_v2_run
    model = recsys.load(run)
    assert model.sequence_arch is not None
    _check_export(model, batches, logits)


def test_exported_retrieval_dense_part_matches_eager(retrieval_run):
    run, batches, users = retrieval_run
    model = recsys.load(run)
    with torch.no_grad():
        assert torch.allclose(model.user_vectors(batches[0]), users[0], atol=1e-6)
    _check_export(model, batches, users)


def test_transact_v2_dense_inputs_are_s_all_without_the_stored_realtime_history(transact_v2_run):
    """The dense part reads what TransActV2Arch encodes: S_all, not the realtime history only V1 / BST read."""
    from recsys.data.lifelong import SOURCE_REALTIME_HISTORY
    from recsys.models.pinnability import SOURCE_KEY

    run, batches, _ = transact_v2_run
    model = recsys.load(run)
    batch = batches[0]
    source = batch.sequence_features.to_dict()[SOURCE_KEY]
    stored = source.values() == SOURCE_REALTIME_HISTORY  # [V]
    assert stored.any(), "the test batch should carry a stored realtime history"
    inputs = dense_inputs(model, batch)
    row = torch.repeat_interleave(torch.arange(batch.batch_size), source.lengths())
    s_all_lengths = torch.bincount(row[~stored], minlength=batch.batch_size)
    assert torch.equal(inputs.sequence_lengths.to(torch.int64), s_all_lengths)
    assert torch.equal(inputs.sequence_content, batch.sequence_content[~stored])


def test_exported_retrieval_dense_part_takes_the_prediction_time(retrieval_run):
    """next_timestamp is an input of the exported program: the time bias of each row's last token reads it."""
    run, batches, _ = retrieval_run
    model = recsys.load(run)
    program = export_dense(model, batches[0])
    inputs = dense_inputs(model, batches[1])
    assert torch.equal(inputs.next_timestamp, batches[1].target_timestamp)  # evaluation rows: the held-out event's time
    later = dataclasses.replace(inputs, next_timestamp=inputs.next_timestamp + 10**6)
    with torch.no_grad():
        exported, eager = program.module()(later), dense_part(model)(later)
        expected = model.encode_embeddings(later.item_embeddings, later.seq_offsets, later.timestamps,
                                           later.next_timestamp)[later.seq_offsets[1:] - 1]
        unchanged = program.module()(inputs)
    torch.testing.assert_close(exported, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)
    layers = getattr(model.encoder, "layers", [])
    time_bias = any(getattr(getattr(layer, "relative_bias", None), "time_weights", None) is not None for layer in layers)
    assert time_bias == (type(model.encoder).__name__ == "HSTUEncoder")  # the fixture's HSTU learns a time bias
    assert torch.allclose(exported, unchanged, atol=1e-5) == (not time_bias), "next_timestamp read iff a time bias"


def test_dense_part_names_the_models_it_covers():
    from recsys.models import get_model

    with pytest.raises(ConfigError, match="no export boundary"):
        dense_part(get_model("hstu_ranking"))


def test_load_reads_a_checkpoint_of_a_two_rank_row_wise_job(tmp_path):
    """The unsharded model equals what a 1-rank DMP job loads from the same 2-rank checkpoint."""
    from tests.recsys.train.torchrun_jobs import CONFIG, ROW_WISE, TINY, torchrun

    torchrun("train", tmp_path, ROW_WISE, "train.epochs=1")
    assert "row_wise" in (tmp_path / "plan.json").read_text()
    cfg = load_config(TrainConfig, CONFIG, [*TINY, "train.epochs=1", f"output_dir={tmp_path}"])
    recipe = RankingRecipe(cfg)
    recipe.setup(write_run_files=False)
    try:
        recipe.checkpoints.load(recipe.model, recipe.optimizer)
        recipe.model.eval()
        batch = next(iter(make_dataloader(recipe.data.test, 64, shuffle=False, seed=0)))
        with torch.no_grad():
            expected = recipe.model(batch)[1]
    finally:
        recipe.cleanup()
    with torch.no_grad():
        assert torch.allclose(recsys.load(tmp_path)(batch), expected, atol=1e-6)
