"""DIN's target attention (Zhou et al., "Deep Interest Network", KDD 2018, §4.3).

The candidate c weighs every behaviour e_j of its user with a small MLP (the "local activation
unit") over ``[e_j, c, e_j - c, e_j * c]``; the user's interest is the weighted sum::

    s_j     = MLP([e_j, c, e_j - c, e_j * c])            [B, L]
    w_j     = softmax_j(s_j) over the real events         (0 at padding; all 0 for an empty history)
    v_U(c)  = sum_j w_j e_j                              [B, D]

The paper leaves the weights unnormalised to keep the intensity of the interest; we normalise
them with a masked softmax (the common open-source variant), so an interest vector does not grow
with the length of the history (10^3-10^4 events on the lifelong data).

Shape letters: B rows, L longest history, D embedding dimension.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.mlp import MLP


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``mask``; rows with no True give all zeros (no NaN)."""
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)  # [B, L]
    return torch.softmax(filled, dim=-1) * mask  # an all-masked row is uniform before * mask


class DINAttention(nn.Module):
    """Local activation unit + masked softmax pooling.

    Args:
        embedding_dim: D.
        layers: widths of the activation unit's hidden layers (a last linear layer gives the score).

    Example::

        attention = DINAttention(8, [16])
        weights = attention.weights(events, mask, candidates)   # [B, L], rows sum to 1 or 0
        interest = attention(events, mask, candidates)          # [B, D]
    """

    def __init__(self, embedding_dim: int, layers: list[int]):
        super().__init__()
        self.unit = MLP(4 * embedding_dim, list(layers))
        self.score = nn.Linear(layers[-1], 1)

    def weights(self, events: torch.Tensor, mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``events [B, L, D]``, ``mask [B, L]``, ``candidates [B, D]`` -> ``[B, L]`` attention weights."""
        target = candidates.unsqueeze(1).expand_as(events)  # [B, L, D]
        features = torch.cat([events, target, events - target, events * target], dim=-1)  # [B, L, 4D]
        scores = self.score(self.unit(features)).squeeze(-1)  # [B, L]
        return masked_softmax(scores, mask)

    def forward(self, events: torch.Tensor, mask: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` the candidate-weighted sum of the events."""
        return torch.einsum("bl,bld->bd", self.weights(events, mask, candidates), events)
