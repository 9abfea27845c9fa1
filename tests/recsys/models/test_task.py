import torch

from recsys.models.dlrm import DLRM, DLRMConfig
from recsys.models.task import RankingTask
from recsys.modules.weighted_cross_entropy import LabelWeightConfig, WeightedCrossEntropy


def test_task_returns_weighted_loss_and_detached_logits(spec, batch):
    torch.manual_seed(0)
    model = DLRM(spec, DLRMConfig(embedding_dim=8, dense_arch_layers=[16, 8], heads=["click", "hide"]))
    loss_fn = WeightedCrossEntropy(model.heads, spec.action_vocab, LabelWeightConfig({"click": {"none": 0.3}}))
    batch.weights = torch.tensor([1.0, 2.0, 0.5, 1.5])
    loss, logits = RankingTask(model, loss_fn)(batch)
    expected, _ = loss_fn(model(batch), batch.labels, batch.labels, batch.weights)
    torch.testing.assert_close(loss, expected)
    assert logits.shape == (4, 2) and not logits.requires_grad
    loss.backward()
    assert model.head_layer.weight.grad is not None
    assert model.sparse_arch.embedding_bags["t_item_id"].weight.grad is not None


class WithAuxiliaryLoss(torch.nn.Module):
    """A DLRM that also reports an auxiliary loss, as the TransAct encoders with the next-action loss do."""

    def __init__(self, model, auxiliary_loss_weight=None):
        super().__init__()
        self.model, self.heads = model, model.heads
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        if auxiliary_loss_weight is not None:
            self.auxiliary_loss_weight = auxiliary_loss_weight
        self.auxiliary_loss = None

    def forward(self, batch):
        self.auxiliary_loss = self.scale**2  # d/d scale = 2 * scale = 4
        return self.model(batch)


def test_task_adds_the_weighted_auxiliary_loss(spec, batch):
    torch.manual_seed(0)
    dlrm = DLRM(spec, DLRMConfig(embedding_dim=8, dense_arch_layers=[16, 8], heads=["click", "hide"]))
    loss_fn = WeightedCrossEntropy(dlrm.heads, spec.action_vocab)
    ce, _ = loss_fn(dlrm(batch), batch.labels, batch.labels, batch.weights)
    model = WithAuxiliaryLoss(dlrm, auxiliary_loss_weight=0.01)
    loss, _ = RankingTask(model, loss_fn)(batch)
    torch.testing.assert_close(loss, ce + 0.01 * 4.0)  # the model's own weight
    loss.backward()
    torch.testing.assert_close(model.scale.grad, torch.tensor(0.01 * 4.0))
    loss, _ = RankingTask(model, loss_fn, auxiliary_weight=0.5)(batch)  # an explicit weight wins
    torch.testing.assert_close(loss, ce + 0.5 * 4.0)
    loss, _ = RankingTask(WithAuxiliaryLoss(dlrm), loss_fn)(batch)  # no weight named: 1
    torch.testing.assert_close(loss, ce + 4.0)
    plain, _ = RankingTask(dlrm, loss_fn)(batch)  # DLRM has no auxiliary loss: L_CE alone
    torch.testing.assert_close(plain, ce)
