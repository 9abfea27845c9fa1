"""Optimizers of a sharded model: fused for embedding tables, a dense one for everything else.

Sharded embedding tables update inside FBGEMM's backward kernel (the "fused" optimizer): the
optimizer is chosen per parameter *before* sharding with `_apply_optimizer_in_backward`, and the
sharder hands its type and hyper-parameters to the kernel. After sharding, `dmp.fused_optimizer`
holds the state of those tables.

Everything else needs an ordinary optimizer: dense layers, and data-parallel tables, which the
planner may pick and which are *not* in `dmp.fused_optimizer`. `build_optimizer` covers every
parameter that the fused optimizer does not, and combines both into one `CombinedOptimizer`
(one `step()`, `zero_grad()` and `state_dict()` for checkpoints).

Example::

    apply_fused_optimizer(model, FusedOptimizerConfig("row_wise_adagrad", lr=0.05))
    dmp = DistributedModelParallel(model, ...)
    optimizer = build_optimizer(dmp, DenseOptimizerConfig("adam", lr=1e-3))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Type

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec import optim as trec_optim
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

from recsys.errors import ConfigError

# The in-backward class only names the FBGEMM optimizer (the sharder maps it to an EmbOptimType);
# the update itself runs inside the embedding kernel.
_FUSED_OPTIMIZER_CLASSES: Dict[str, Type[torch.optim.Optimizer]] = {
    "row_wise_adagrad": trec_optim.RowWiseAdagrad,
    "adagrad": trec_optim.Adagrad,
    "adam": trec_optim.Adam,
    "sgd": trec_optim.SGD,
}

_DENSE_OPTIMIZER_CLASSES: Dict[str, Type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}

_EMBEDDING_MODULE_TYPES = (EmbeddingBagCollection, EmbeddingCollection)


@dataclass(frozen=True)
class FusedOptimizerConfig:
    """The optimizer FBGEMM runs inside the backward of the sharded embedding tables.

    Args:
        optimizer (str): "row_wise_adagrad", "adagrad", "adam" or "sgd".
        lr (float): learning rate.
        eps (float): term added to the denominator (adagrad / adam).
        weight_decay (float): L2 weight decay.
        betas (tuple[float, float]): Adam's moment decay rates (adam only).
    """

    optimizer: str = "row_wise_adagrad"
    lr: float = 0.01
    eps: float = 1e-8
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if self.optimizer not in _FUSED_OPTIMIZER_CLASSES:
            raise ConfigError(
                f"fused optimizer {self.optimizer!r} is not supported; "
                f"set optimizer to one of {sorted(_FUSED_OPTIMIZER_CLASSES)}"
            )
        _check_positive("fused optimizer lr", self.lr)
        _check_positive("fused optimizer eps", self.eps)
        _check_not_negative("fused optimizer weight_decay", self.weight_decay)
        _check_betas("fused optimizer betas", self.betas)

    def kwargs(self) -> Dict[str, float]:
        """Hyper-parameters handed to the FBGEMM kernel (`lr` becomes `learning_rate` there)."""
        kwargs = {"lr": self.lr, "eps": self.eps, "weight_decay": self.weight_decay}
        if self.optimizer == "adam":
            kwargs["beta1"], kwargs["beta2"] = self.betas  # FBGEMM's names
        return kwargs


@dataclass(frozen=True)
class DenseOptimizerConfig:
    """The optimizer of every parameter outside the fused embedding tables.

    Args:
        name (str): "adam", "adamw" (decoupled weight decay), "adagrad" or "sgd".
        lr (float): learning rate.
        weight_decay (float): weight decay (L2 for adam/adagrad/sgd, decoupled for adamw).
        betas (tuple[float, float]): the moment decay rates of adam / adamw.
    """

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if self.name not in _DENSE_OPTIMIZER_CLASSES:
            raise ConfigError(
                f"dense optimizer {self.name!r} is not supported; "
                f"set name to one of {sorted(_DENSE_OPTIMIZER_CLASSES)}"
            )
        _check_positive("dense optimizer lr", self.lr)
        _check_not_negative("dense optimizer weight_decay", self.weight_decay)
        _check_betas("dense optimizer betas", self.betas)

    def factory(self) -> Callable[[List[torch.Tensor]], torch.optim.Optimizer]:
        """A function building the torch optimizer over a list of parameters."""
        optimizer_class = _DENSE_OPTIMIZER_CLASSES[self.name]
        kwargs = {"lr": self.lr, "weight_decay": self.weight_decay}
        if self.name in ("adam", "adamw"):
            kwargs["betas"] = tuple(self.betas)
        return lambda params: optimizer_class(params, **kwargs)


def _check_betas(field: str, betas) -> None:
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"{field} must be two rates in [0, 1), got {betas}; e.g. [0.9, 0.999]")


def _check_positive(field: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{field} must be > 0, got {value}; set a positive value")


def _check_not_negative(field: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{field} must be >= 0, got {value}; set 0 or a positive value")


def embedding_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    """The table weights of every EmbeddingBagCollection / EmbeddingCollection in `model`."""
    for module in model.modules():
        if isinstance(module, _EMBEDDING_MODULE_TYPES):
            yield from module.parameters()


def apply_fused_optimizer(model: nn.Module, config: FusedOptimizerConfig) -> None:
    """Attach the fused optimizer to every embedding table of the (unsharded) `model`.

    Must run before `DistributedModelParallel`: the sharders read it from the parameters.

    Args:
        model (nn.Module): a model holding TorchRec embedding modules (any device, `meta` included).
        config (FusedOptimizerConfig): optimizer type and hyper-parameters.
    """
    params = list(embedding_parameters(model))
    if not params:
        raise ConfigError(
            f"{type(model).__name__} has no EmbeddingBagCollection or EmbeddingCollection; "
            "a fused optimizer needs TorchRec embedding tables"
        )
    _apply_optimizer_in_backward(
        optimizer_class=_FUSED_OPTIMIZER_CLASSES[config.optimizer],
        params=params,
        optimizer_kwargs=config.kwargs(),
    )


def dense_parameters(dmp: nn.Module) -> Dict[str, nn.Parameter]:
    """Every trainable parameter of `dmp` that the fused optimizer does not update, by name.

    Includes dense layers and data-parallel embedding tables. Sharded tables are recognised by
    name (their keys in `dmp.fused_optimizer.params`) and by the `_in_backward_optimizers`
    marker the sharder puts on them; `named_parameters` returns fresh views of them each call.
    """
    fused = getattr(dmp, "fused_optimizer", None)
    fused_names = set(fused.params) if fused is not None else set()
    return {
        name: param
        for name, param in dmp.named_parameters()
        if param.requires_grad
        and name not in fused_names
        and not hasattr(param, "_in_backward_optimizers")
    }


def build_optimizer(dmp: nn.Module, dense: DenseOptimizerConfig) -> CombinedOptimizer:
    """One optimizer for the whole sharded model: fused tables + a dense optimizer for the rest.

    Args:
        dmp (nn.Module): a `DistributedModelParallel` model (see `shard_model`).
        dense (DenseOptimizerConfig): optimizer of dense layers and data-parallel tables.

    Returns:
        CombinedOptimizer: keys "fused.*" for the tables in `dmp.fused_optimizer`, "dense.*" for
        the rest. Call `zero_grad()` / `step()` around each `loss.backward()`.
    """
    optimizers = []
    fused = getattr(dmp, "fused_optimizer", None)
    if fused is not None and fused.params:
        optimizers.append(("fused", fused))
    params = dense_parameters(dmp)
    if params:
        optimizers.append(("dense", KeyedOptimizerWrapper(params, dense.factory())))
    return CombinedOptimizer(optimizers)
