"""Inference: a trained zoo model from its run folder, and its dense part for ``torch.export``.

``load`` reads what ``recsys train`` wrote (``config.json``, ``feature_spec.json`` and
``checkpoints/`` of the run's ``output_dir``) and returns the unsharded model in eval mode on the
CPU; DCP checkpoints read without a process group, whatever world size and plan saved them::

    model = recsys.load("runs/dlrm-synthetic")                  # the latest checkpoint
    model = recsys.load("runs/dlrm-synthetic/checkpoints/step_000000500")
    logits = model(batch)                                       # [B, H], a RankingBatch

The export boundary (what a serving layer compiles; the embedding lookups stay outside, in the
sharded tables or a key-value store) is the model after its lookups:

================  ===================================================================  ============
model             inputs of the dense part (:class:`RankingDenseInputs` /               output
                  :class:`RetrievalDenseInputs`)
================  ===================================================================  ============
dlrm,             ``dense_features [B, C+T]``, ``pooled_embeddings [B, F*D]`` (the      ``[B, H]``
pinnability       EmbeddingBagCollection's bags in ``spec.sparse_features`` order)      logits
transact_v2       the same, plus S_all as jagged tensors: ``sequence_lengths [B]``,     ``[B, H]``
                  ``sequence_actions [V]``, ``sequence_surface [V]``,                   logits
                  ``sequence_content [V, C]`` (TransAct V2 reads content, no table;
                  the stored realtime history, which only V1 / BST read, is dropped)
hstu, sasrec      ``item_embeddings [T, D]`` (raw rows of the item table),             ``[B, D]`` user
                  ``seq_offsets [B+1]``, ``timestamps [T]``, ``next_timestamp [B]``     vectors (L2-normalised)
                  (the time of the event each vector predicts: the request time when
                  serving, the held-out target's at evaluation; HSTU's time bias of the
                  last token reads it, SASRec ignores it)
================  ===================================================================  ============

For retrieval, the item side is the item table itself, L2-normalised (``model.item_vectors()``),
served from an index. ``dense_inputs(model, batch)`` computes the inputs from a batch with the
model's own lookups; ``export_dense(model, batch)`` exports the dense part with dynamic batch and
token counts. Other models (hstu_ranking, bst, transact_v1) have no export boundary yet:
``dense_part`` says so.

Shape letters: B rows, F pooled features, D embedding dim, H heads, C content dim, T context features
(ranking) or tokens (retrieval), V S_all tokens.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from recsys.data.pipelineable import TensorDataclass, pytree_dataclass
from recsys.errors import CheckpointError, ConfigError

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"


# ---------------------------------------------------------------------------------------------- load
def load(checkpoint: str | Path, step: int | None = None) -> nn.Module:
    """The model of a ``recsys train`` run, unsharded, on the CPU, in eval mode.

    Args:
        checkpoint: the run's ``output_dir``, its ``checkpoints/`` folder, or one ``step_*`` folder.
        step: which checkpoint (default: the one ``latest`` points to, or the ``step_*`` given).

    Returns:
        The zoo model (``get_model(config.model_name, ...)``) with the checkpoint's weights.
    """
    import torch.distributed.checkpoint as dcp

    from recsys.models import get_model, get_model_spec
    from recsys.train.checkpoint import CheckpointManager

    run_dir, checkpoints_dir, step = _locate(Path(checkpoint), step)
    cfg = _run_config(run_dir)
    spec = _run_feature_spec(run_dir, cfg)
    model = get_model(cfg.model_name, feature_spec=spec, device=torch.device("cpu"), **cfg.model_overrides)
    manager = CheckpointManager(checkpoints_dir, backend="dcp")
    if step is None:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoint in {checkpoints_dir} (no 'latest'); train first, or pass a step_* folder")
    path = manager.path_of(step)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; available steps: {manager.steps()}")
    manifest = manager.verify(path)
    if manifest.get("backend") != "dcp":
        raise CheckpointError(
            f"{path} is a {manifest.get('backend')!r} checkpoint; recsys.load reads dcp checkpoints "
            "(train with train.checkpoint_backend=dcp, the default)"
        )
    # The recipes shard RankingTask(model, loss) for ranking models, the model itself for retrieval.
    prefix = "model." if get_model_spec(cfg.model_name).task == "ranking" else ""
    state = {prefix + key: value for key, value in model.state_dict().items()}
    try:
        dcp.load({"model": state}, checkpoint_id=path / "state", no_dist=True)
    except BaseException as error:  # DCP's CheckpointException derives from BaseException
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise CheckpointError(
            f"cannot read {path / 'state'} into {cfg.model_name!r} built from {run_dir / CONFIG_FILE}: {error}"
        ) from None
    model.load_state_dict({key[len(prefix):]: value for key, value in state.items()})
    return model.eval()


def _locate(path: Path, step: int | None) -> tuple[Path, Path, int | None]:
    """``(run folder, checkpoints folder, step)`` of a run folder, checkpoints folder or step folder."""
    from recsys.train.checkpoint import _STEP_PATTERN

    match = _STEP_PATTERN.match(path.name)
    if match is not None:
        path, step = path.parent, int(match.group(1)) if step is None else step
    if (path / CHECKPOINTS).is_dir() or (path / CONFIG_FILE).is_file():
        return path, path / CHECKPOINTS, step
    if (path.parent / CONFIG_FILE).is_file():
        return path.parent, path, step
    raise CheckpointError(
        f"{path} is not a run folder: expected {CONFIG_FILE} and {CHECKPOINTS}/ (what `recsys train` writes to "
        "its output_dir); pass the output_dir, its checkpoints/ folder or one step_* folder"
    )


def _run_config(run_dir: Path):
    from recsys.config import from_dict
    from recsys.train.config import TrainConfig

    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; recsys.load needs the run's config beside {CHECKPOINTS}/")
    return from_dict(TrainConfig, json.loads(path.read_text(encoding="utf-8")), where=str(path))


def _run_feature_spec(run_dir: Path, cfg):
    """The run's FeatureSpec: its ``feature_spec.json``, or (runs written before it existed) rebuilt from the data."""
    from recsys.data.features import FeatureSpec, load_feature_spec, FEATURE_SPEC_FILE

    if (run_dir / FEATURE_SPEC_FILE).is_file():
        return load_feature_spec(run_dir / FEATURE_SPEC_FILE)
    from recsys.data.pipeline import load_events
    from recsys.models import get_model_spec

    log = load_events(cfg.data)
    if get_model_spec(cfg.model_name).task == "retrieval":
        return FeatureSpec.from_log(log, max_sequence=cfg.data.max_sequence)
    return FeatureSpec.from_log(log, max_history=cfg.data.max_history, max_sequence=cfg.data.max_sequence)


# ---------------------------------------------------------------------------------------------- dense part
@pytree_dataclass
@dataclass
class RankingDenseInputs(TensorDataclass):
    """What a ranker's dense part reads (see the module docstring).

    Args:
        dense_features: ``[B, C + T]`` float32.
        pooled_embeddings: ``[B, F * D]`` float32 pooled bags, ``spec.sparse_features`` order.
        sequence_lengths: ``[B]`` S_all tokens per row (transact_v2), else None.
        sequence_actions: ``[V]`` int action bit masks, else None.
        sequence_surface: ``[V]`` int surfaces, else None.
        sequence_content: ``[V, C]`` float32 content embeddings, else None.
    """

    dense_features: torch.Tensor
    pooled_embeddings: torch.Tensor
    sequence_lengths: torch.Tensor | None = None
    sequence_actions: torch.Tensor | None = None
    sequence_surface: torch.Tensor | None = None
    sequence_content: torch.Tensor | None = None


@pytree_dataclass
@dataclass
class RetrievalDenseInputs(TensorDataclass):
    """What a sequential retrieval model's dense part reads.

    Args:
        item_embeddings: ``[T, D]`` raw item-table rows of every token.
        seq_offsets: ``[B + 1]`` int64.
        timestamps: ``[T]`` int64.
        next_timestamp: ``[B]`` int64 time of the event each row's user vector predicts (the request
            time; :func:`dense_inputs` gives ``prediction_timestamps(batch)``, as ``user_vectors``
            uses); None uses the last token's own time. A program exported with it takes it on every call.
    """

    item_embeddings: torch.Tensor
    seq_offsets: torch.Tensor
    timestamps: torch.Tensor
    next_timestamp: torch.Tensor | None = None


class RankingDenseArch(nn.Module):
    """DLRM / Pinnability after the lookups: ``RankingDenseInputs -> [B, H]`` logits.

    Holds the model's dense modules (not its tables) and runs ``DLRM.interact`` with them, so the
    exported program carries no embedding table.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        from recsys.models.pinnability import TransActV2Arch

        sequence_arch = model.sequence_arch
        if sequence_arch is not None and not isinstance(sequence_arch, TransActV2Arch):
            raise ConfigError(
                f"no export boundary for the sequence encoder {type(sequence_arch).__name__}; "
                "dense parts exist for dlrm, pinnability (sequence_encoder none) and transact_v2"
            )
        self.dense_arch, self.cross_net = model.dense_arch, model.cross_net
        self.over_arch, self.head_layer = model.over_arch, model.head_layer
        self.sequence_encoder = sequence_arch.encoder if sequence_arch is not None else None
        self.content_dim = model.spec.content_dim

    def forward(self, inputs: RankingDenseInputs) -> torch.Tensor:
        from recsys.models.dlrm import DLRM

        sequence = None
        if self.sequence_encoder is not None:
            sequence = self.sequence_encoder(
                inputs.sequence_lengths, inputs.sequence_actions, inputs.sequence_surface, inputs.sequence_content,
                inputs.dense_features[:, : self.content_dim],
            )  # [B, F_seq]
        return DLRM.interact(self, inputs.dense_features, inputs.pooled_embeddings, sequence)  # [B, H]


class RetrievalDenseArch(nn.Module):
    """HSTU / SASRec after the item lookup: ``RetrievalDenseInputs -> [B, D]`` user vectors.

    Holds the encoder and position table (not the item table) and runs
    ``SequentialRetrieval.encode_embeddings`` with them.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder, self.positions, self.input_dropout = model.encoder, model.positions, model.input_dropout
        self.input_scale, self.max_seq_len = model.input_scale, model.max_seq_len

    def forward(self, inputs: RetrievalDenseInputs) -> torch.Tensor:
        from recsys.models.sequential_retrieval import SequentialRetrieval

        tokens = SequentialRetrieval.encode_embeddings(
            self, inputs.item_embeddings, inputs.seq_offsets, inputs.timestamps, inputs.next_timestamp
        )  # [T, D]
        return tokens[inputs.seq_offsets[1:] - 1]  # [B, D]: after each sequence's last token


def dense_part(model: nn.Module) -> nn.Module:
    """The export boundary of a zoo model (module docstring), in the model's train/eval mode."""
    from recsys.models.dlrm import DLRM
    from recsys.models.sequential_retrieval import SequentialRetrieval

    if isinstance(model, DLRM):
        part = RankingDenseArch(model)
    elif isinstance(model, SequentialRetrieval):
        part = RetrievalDenseArch(model)
    else:
        raise ConfigError(
            f"no export boundary for {type(model).__name__}; dense parts exist for dlrm, pinnability, transact_v2, "
            "hstu and sasrec"
        )
    return part.train(model.training)


@torch.no_grad()
def dense_inputs(model: nn.Module, batch) -> RankingDenseInputs | RetrievalDenseInputs:
    """The dense part's inputs for ``batch`` (a RankingBatch or SequenceBatch), from the model's own lookups."""
    from recsys.models.dlrm import DLRM
    from recsys.models.pinnability import lifelong_features, s_all_batch
    from recsys.models.sequential_retrieval import prediction_timestamps

    if not isinstance(model, DLRM):
        return RetrievalDenseInputs(
            model._lookup(batch.item_ids), batch.seq_offsets, batch.timestamps, prediction_timestamps(batch)
        )
    model._check_batch(batch)
    pooled = model.pooled_embeddings(model.sparse_arch(batch.sparse_features))  # [B, F * D]
    if model.sequence_arch is None:
        return RankingDenseInputs(batch.dense_features, pooled)
    lifelong_features(batch, "transact_v2")  # checked before the realtime history is dropped, as TransActV2Arch
    batch = s_all_batch(batch)  # S_all only: what TransActV2Arch encodes
    features = lifelong_features(batch, "transact_v2")
    actions = features["seq_actions"]
    return RankingDenseInputs(
        batch.dense_features, pooled, actions.lengths(), actions.values(), features["seq_surface"].values(),
        batch.sequence_content,
    )


def export_dense(model: nn.Module, batch) -> torch.export.ExportedProgram:
    """``torch.export`` of :func:`dense_part` traced on ``batch``, with dynamic row and token counts.

    The example batch needs at least 3 rows (export specialises sizes 0 and 1, and offsets
    of 2 rows); the program then takes any batch of 3 rows or more.

    Example::

        program = export_dense(model, batch)
        logits = program.module()(dense_inputs(model, batch))  # equals model(batch)
    """
    part = dense_part(model)
    inputs = dense_inputs(model, batch)
    rows = torch.export.Dim("rows", min=3, max=1 << 20)
    tokens = torch.export.Dim("tokens", min=2, max=1 << 30)
    first_dim = {
        "dense_features": rows, "pooled_embeddings": rows, "sequence_lengths": rows, "sequence_actions": tokens,
        "sequence_surface": tokens, "sequence_content": tokens,
        "item_embeddings": tokens, "seq_offsets": rows + 1, "timestamps": tokens, "next_timestamp": rows,
    }
    # A pytree dataclass flattens to its non-None fields: one shape entry each, in field order.
    shapes = [{0: first_dim[f.name]} for f in dataclasses.fields(inputs) if getattr(inputs, f.name) is not None]
    return torch.export.export(part, (inputs,), dynamic_shapes=(shapes,))
