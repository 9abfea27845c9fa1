"""MIMN: the Multi-channel user Interest Memory Network (Pi et al., KDD 2019, arXiv 1905.09248).

A user's behaviours stream through a Neural Turing Machine (NTM) whose memory holds the user's
interests in a fixed number of slots, and a Memory Induction Unit (MIU) that keeps one interest
channel per slot. The whole user-side state is a fixed-size :class:`MIMNState`, so a serving-side
User Interest Center (UIC) can apply :meth:`MIMN.update` on every behaviour event and the ranker
only reads the state with :meth:`MIMN.score`; training runs the same ``update`` over the padded
time steps of a batch (:meth:`MIMN.encode`), so the two paths are one implementation.

One event step (paper §4.2-§4.4, equation numbers of arXiv 1905.09248; for each row b whose event
mask is set, other rows keep their state)::

    h_t      = GRU_c(h_{t-1}, [e_t, r_{t-1}])                           controller
    w^r_t    = softmax_i(beta^r K(k^r_t, M_{t-1}(i)))                   read head,  Eqs. (1), (2)
    r_t      = sum_i w^r_t(i) M_{t-1}(i)                                Eq. (3)
    w^w_t    = softmax_i(beta^w K(k^w_t, M_{t-1}(i)))                   write head, as Eq. (1)
    w~^w_t   = w^w_t P_t,  P_t = softmax(W_g u_{t-1})                   utilisation rebalancing, Eqs. (5), (6)
    M_t      = (1 - w~^w_t e^T_t) * M_{t-1} + w~^w_t a^T_t              erase / add, Eq. (4)
    g_t      = g_{t-1} + w~^w_t                                         utilisation (§4.3), Eq. (7) at t = T
    S_t(i)   = GRU_s(S_{t-1}(i), [M_t(i), e_t])  if i in topk(w^r_t)    MIU, Eq. (9)
             = S_{t-1}(i)                         otherwise

with K(k, m) = k.m / (|k| |m|) (cosine similarity, Eq. (2)), erase e_t = sigmoid(W_e h_t) and add
a_t = tanh(W_a h_t). The regularisation loss (Eq. (8)) is ``lambda * sum_i (u_T(i) - mean_j
u_T(j))^2`` per user, averaged over the batch (:func:`utilisation_loss`).

Checked against the paper (arXiv 1905.09248 §4-§5) and the authors' TensorFlow code
(github.com/UIC-Paper/MIMN, ``script/mimn.py``, ``script/model.py``, ``script/train_book.py``).
Where this module differs, and why:

- Key strength: Eq. (1) has none; ``beta = 1 + softplus(.)`` sharpens the addressing as in the NTM
  and in the authors' code (which uses ``2 * (1 + softplus)`` and averages the cosine over the
  memory and a learned key memory).
- Rebalancing: the paper's ``P_t = softmax(W_g g_t)`` (Eq. (5)) reads the cumulative weights g,
  which grow with the number of events; we feed the share ``u = g / sum_i g(i)`` so the transform
  sees one scale for 10 and 10^4 events, and read ``u_{t-1}`` (before this step's write, which
  Eq. (5) would otherwise need to compute itself). P is an m x m transfer matrix, row-softmaxed,
  initialised near the identity. The authors' code instead feeds ``g / 400`` to the head layer and
  rebalances by an NTM shift + sharpening.
- Regularisation (Eq. (8)) on the share u rather than on the sum g: on g the loss grows as T^2
  (T events), so one lambda cannot suit sequences of 100 and 1,000 events. The paper gives no lambda;
  the authors' code uses 0.001 on g with an extra ``1 / (m B)`` (B the batch), which at their
  Amazon setting (T = 100, m = 4, B = 128) equals lambda ~0.005 on the share, and ~0.5 at T = 1,000.
  The configs use 0.1 (``MIMNConfig.utilisation_loss_weight``).
- MIU (Eq. (9)): the selected channels step on ``[M_t(i), e_t]`` with the memory after this step's
  write, as the equation writes it; the authors' code feeds ``M_{t-1}(i)`` with its gradient
  stopped. Top-k of the read weights, k = 1 in the code (``induction_top_k``), one GRU shared by
  the channels; its width 32 is the paper's (§5.1, ``induction_dim``).
- Readout: the paper only says the memory and MIU outputs feed the Embedding&MLP network (§4.2,
  Figure 3). The authors' code concatenates the candidate, the sum-pooled sequence, one more NTM
  read with the candidate as the controller input, DIN attention of the candidate over the MIU
  channels and the mean accumulated write times the candidate. We use target attention of the
  candidate over the memory slots and over the MIU channels (below), with the candidate and the
  side features, as every behaviour-sequence model of the zoo ends (no sum pooling: that is the
  Embedding&MLP baseline's arch).
- Sizes (§5.1): memory slot width = embedding width (16 in the paper, ``memory_dim``), 4 slots
  best on Amazon and 8 on Taobao (``memory_slots``, default 4), MLP 200 x 80 (the configs use 64 x
  32 to train on a CPU); the controller width is not given (32 in the code; default here 16).

Readout (the state is read only here, so a UIC can store it and the ranker score any candidate)::

    z_M = sum_i softmax_i(q . M_T(i)) M_T(i),   z_S = sum_i softmax_i(q' . S_T(i)) S_T(i)
    logits = MLP([z_M, z_S, c, side]) V^T + b,  q = W_q c, q' = W_q' c

Shape letters: B users (rows), m memory slots, Dm memory width, De event embedding width,
Dc controller width, Ds MIU width, H heads, S side-feature width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.mlp import MLP

from recsys.errors import ConfigError, DataError

EPSILON = 1e-8


@dataclass
class MIMNState:
    """The fixed-size user-side state (what a UIC server stores per user).

    Args:
        memory: ``[B, m, Dm]`` M_t, the NTM memory.
        utilisation: ``[B, m]`` g_t, cumulative (rebalanced) write weights per slot.
        controller: ``[B, Dc]`` h_t, the controller GRU's hidden state.
        read: ``[B, Dm]`` r_t, the last read vector (the controller's next input).
        induction: ``[B, m, Ds]`` S_t, the MIU's hidden state per slot (one interest channel each).
    """

    memory: torch.Tensor
    utilisation: torch.Tensor
    controller: torch.Tensor
    read: torch.Tensor
    induction: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.memory.shape[0])

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "MIMNState":
        """A state with ``fn`` applied to every tensor (``.detach()``, ``.to(device)``, row indexing)."""
        return MIMNState(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def where(self, mask: torch.Tensor, other: "MIMNState") -> "MIMNState":
        """Rows of ``self`` where ``mask [B]`` is True, rows of ``other`` elsewhere."""
        def pick(name: str) -> torch.Tensor:
            new, old = getattr(self, name), getattr(other, name)
            return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)

        return MIMNState(**{f.name: pick(f.name) for f in dataclasses.fields(self)})


def content_address(key: torch.Tensor, strength: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """NTM content addressing (Eqs. (1), (2), with a key strength): ``softmax_i(beta * cos(k, M(i)))``.

    Args:
        key: ``[B, Dm]``; strength: ``[B, 1]`` beta >= 1; memory: ``[B, m, Dm]``.

    Returns:
        ``[B, m]`` weights summing to 1 over the slots.
    """
    similarity = F.cosine_similarity(memory, key.unsqueeze(1), dim=-1, eps=EPSILON)  # [B, m]
    return torch.softmax(strength * similarity, dim=-1)  # [B, m]


def erase_add(memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """NTM write (Eq. (4)): ``M_t = (1 - w e^T) * M_{t-1} + w a^T``.

    Args:
        memory: ``[B, m, Dm]``; weights: ``[B, m]``; erase: ``[B, Dm]`` in [0, 1]; add: ``[B, Dm]``.

    Returns:
        ``[B, m, Dm]``.
    """
    w = weights.unsqueeze(-1)  # [B, m, 1]
    return memory * (1.0 - w * erase.unsqueeze(1)) + w * add.unsqueeze(1)  # [B, m, Dm]


def utilisation_share(utilisation: torch.Tensor) -> torch.Tensor:
    """``[B, m]`` g -> g / sum_i g(i) (zeros while nothing was written)."""
    total = utilisation.sum(dim=-1, keepdim=True)  # [B, 1]
    return utilisation / total.clamp_min(EPSILON)


def utilisation_loss(utilisation: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Memory utilisation regularisation (Eq. (8)) on the share: mean_b sum_i (u_b(i) - mean_j u_b(j))^2.

    Args:
        utilisation: ``[B, m]`` cumulative write weights g_T.
        mask: ``[B]`` rows to count (users with at least one event); None = all.

    Returns:
        scalar (0 for an empty selection).
    """
    share = utilisation_share(utilisation)  # [B, m]
    per_user = ((share - share.mean(dim=-1, keepdim=True)) ** 2).sum(dim=-1)  # [B]
    if mask is None:
        return per_user.mean()
    return (per_user * mask).sum() / mask.sum().clamp_min(1)


def target_attention(target: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``softmax_i(target . keys(i))``-weighted sum of ``keys``: ``[B, D], [B, m, D] -> [B, D]``."""
    scores = torch.einsum("bd,bmd->bm", target, keys) / keys.shape[-1] ** 0.5  # [B, m]
    return torch.einsum("bm,bmd->bd", torch.softmax(scores, dim=-1), keys)  # [B, D]


class MIMN(nn.Module):
    """NTM memory + MIU + target-attended readout + MLP head.

    Args:
        event_dim: De, width of the event embeddings fed to :meth:`update`.
        candidate_dim: width of the candidate embeddings :meth:`score` reads.
        side_dim: S, width of extra per-row features concatenated before the MLP (0 = none).
        num_heads: H, logits per row.
        memory_slots: m.
        memory_dim: Dm.
        controller_dim: Dc.
        induction_dim: Ds (the paper's MIU GRU width: 32).
        induction_top_k: MIU channels updated per event (slots with the largest read weights).
        utilisation_regularization: rebalance the write weights by the utilisation (Eqs. (5), (6));
            False = the plain NTM write.
        over_arch_layers: widths of the MLP before the heads.

    Example::

        mimn = MIMN(event_dim=8, candidate_dim=8, side_dim=0, num_heads=1)
        state = mimn.init_state(batch_size=2)
        state = mimn.update(state, events, torch.tensor([True, False]))  # events [2, 8]
        logits = mimn.score(state, candidates)                              # [2, 1]
    """

    def __init__(
        self,
        event_dim: int,
        candidate_dim: int,
        side_dim: int,
        num_heads: int,
        memory_slots: int = 4,
        memory_dim: int = 16,
        controller_dim: int = 16,
        induction_dim: int = 32,
        induction_top_k: int = 1,
        utilisation_regularization: bool = True,
        over_arch_layers: tuple[int, ...] = (64,),
    ):
        super().__init__()
        if not 1 <= induction_top_k <= memory_slots:
            raise ConfigError(f"induction_top_k must lie in 1..memory_slots={memory_slots}, got {induction_top_k}")
        m, dm = memory_slots, memory_dim
        self.memory_slots, self.memory_dim = m, dm
        self.controller_dim, self.induction_dim = controller_dim, induction_dim
        self.induction_top_k = induction_top_k
        self.utilisation_regularization = utilisation_regularization
        self.memory_init = nn.Parameter(torch.randn(m, dm) * 0.1)  # M_0, learned (cosine needs M != 0)
        self.controller = nn.GRUCell(event_dim + dm, controller_dim)
        # per head: key (Dm) + strength (1); write head also erase (Dm) + add (Dm)
        self.read_head = nn.Linear(controller_dim, dm + 1)
        self.write_head = nn.Linear(controller_dim, 3 * dm + 1)
        self.rebalance = nn.Linear(m, m * m)  # W_g of Eq. (5): u [m] -> P [m, m]
        nn.init.zeros_(self.rebalance.weight)
        with torch.no_grad():  # start near P = I (the plain NTM write)
            self.rebalance.bias.copy_((5.0 * torch.eye(m)).flatten())
        self.induction = nn.GRUCell(dm + event_dim, induction_dim)  # GRU_s, shared by every slot
        self.memory_query = nn.Linear(candidate_dim, dm, bias=False)
        self.induction_query = nn.Linear(candidate_dim, induction_dim, bias=False)
        readout_dim = dm + induction_dim + candidate_dim + side_dim
        self.over_arch = MLP(readout_dim, list(over_arch_layers))
        self.head_layer = nn.Linear(over_arch_layers[-1], num_heads)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device: torch.device | None = None) -> MIMNState:
        """The state of ``batch_size`` users with no behaviour yet."""
        device = device if device is not None else self.memory_init.device
        dtype = self.memory_init.dtype
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        return MIMNState(
            memory=self.memory_init.to(device).unsqueeze(0).expand(batch_size, -1, -1),  # [B, m, Dm]
            utilisation=zeros(batch_size, self.memory_slots),
            controller=zeros(batch_size, self.controller_dim),
            read=zeros(batch_size, self.memory_dim),
            induction=zeros(batch_size, self.memory_slots, self.induction_dim),
        )

    def update(self, state: MIMNState, events: torch.Tensor, mask: torch.Tensor) -> MIMNState:
        """One behaviour event per user (the UIC's per-event update and training's time step).

        Args:
            state: the users' states (B rows).
            events: ``[B, De]`` embedding of each user's next behaviour.
            mask: ``[B]`` bool: rows whose event is real; the other rows keep their state.

        Returns:
            the new state.
        """
        if events.shape[0] != state.batch_size or mask.shape != (state.batch_size,):
            raise DataError(
                f"update: events {tuple(events.shape)} and mask {tuple(mask.shape)} must have the state's "
                f"{state.batch_size} rows"
            )
        dm = self.memory_dim
        h = self.controller(torch.cat([events, state.read], dim=-1), state.controller)  # [B, Dc]
        read_out, write_out = self.read_head(h), self.write_head(h)
        read_weights = content_address(read_out[:, :dm], 1.0 + F.softplus(read_out[:, dm:]), state.memory)  # [B, m], Eq. (1)
        read = torch.einsum("bm,bmd->bd", read_weights, state.memory)  # [B, Dm]
        write_weights = content_address(write_out[:, :dm], 1.0 + F.softplus(write_out[:, dm:dm + 1]), state.memory)
        write_weights = self.rebalanced(write_weights, state.utilisation)  # [B, m], Eqs. (5), (6)
        erase = torch.sigmoid(write_out[:, dm + 1:2 * dm + 1])  # [B, Dm]
        add = torch.tanh(write_out[:, 2 * dm + 1:])  # [B, Dm]
        memory = erase_add(state.memory, write_weights, erase, add)  # [B, m, Dm], Eq. (4)
        utilisation = state.utilisation + write_weights  # [B, m], g_t (§4.3)
        induction = self._induce(state.induction, memory, events, read_weights)  # [B, m, Ds], Eq. (9)
        new = MIMNState(memory=memory, utilisation=utilisation, controller=h, read=read, induction=induction)
        return new.where(mask.to(torch.bool), state)

    def rebalanced(self, write_weights: torch.Tensor, utilisation: torch.Tensor) -> torch.Tensor:
        """Eqs. (5), (6): ``w~ = w P``, ``P = softmax(W_g u)`` row-wise ``[m, m]``; identity when disabled."""
        if not self.utilisation_regularization:
            return write_weights
        m = self.memory_slots
        transfer = torch.softmax(self.rebalance(utilisation_share(utilisation)).view(-1, m, m), dim=-1)  # [B, m, m]
        return torch.einsum("bi,bij->bj", write_weights, transfer)  # [B, m], still sums to 1

    def _induce(self, induction: torch.Tensor, memory: torch.Tensor, events: torch.Tensor, read_weights: torch.Tensor) -> torch.Tensor:
        """MIU (Eq. (9)): the shared GRU steps the channels of the top-k read slots."""
        b, m, ds = induction.shape
        inputs = torch.cat([memory, events.unsqueeze(1).expand(-1, m, -1)], dim=-1)  # [B, m, Dm + De]
        stepped = self.induction(inputs.reshape(b * m, -1), induction.reshape(b * m, ds)).view(b, m, ds)
        chosen = torch.zeros_like(read_weights, dtype=torch.bool)  # [B, m]
        chosen.scatter_(1, read_weights.topk(self.induction_top_k, dim=-1).indices, True)
        return torch.where(chosen.unsqueeze(-1), stepped, induction)  # [B, m, Ds]

    # ------------------------------------------------------------------ sequences
    def encode(self, events: torch.Tensor, mask: torch.Tensor, state: MIMNState | None = None) -> MIMNState:
        """Streams padded sequences through :meth:`update`, one time step at a time.

        Args:
            events: ``[B, L, De]`` each row's events, oldest first.
            mask: ``[B, L]`` bool, True at real events (padding may sit anywhere: masked steps are skipped).
            state: the state to start from; None = :meth:`init_state`.

        Returns:
            the state after each row's last event.
        """
        state = state if state is not None else self.init_state(events.shape[0], events.device)
        for t in range(events.shape[1]):
            state = self.update(state, events[:, t], mask[:, t])
        return state

    # ------------------------------------------------------------------ ranking
    def score(self, state: MIMNState, candidates: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of one candidate per user from the user's state.

        Args:
            state: B users' states.
            candidates: ``[B, Dcand]`` candidate embeddings.
            side: ``[B, S]`` extra features, or None when ``side_dim == 0``.

        Returns:
            ``[B, H]`` logits.
        """
        memory_view = target_attention(self.memory_query(candidates), state.memory)  # [B, Dm]
        channel_view = target_attention(self.induction_query(candidates), state.induction)  # [B, Ds]
        parts = [memory_view, channel_view, candidates] + ([side] if side is not None else [])
        return self.head_layer(self.over_arch(torch.cat(parts, dim=-1)))  # [B, H]
