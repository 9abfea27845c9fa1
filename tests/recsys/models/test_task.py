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
