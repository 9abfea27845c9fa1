"""TransAct V1: a transformer over the user's latest realtime actions, fused early with the candidate.

Xia et al., "TransAct: Transformer-based Realtime User Action Model for Recommendation at
Pinterest", KDD 2023. For every request, the latest S actions (paper: 100) of the
user, each an action type and the 32-d content embedding of the item acted on::

    position p = 0 .. S-1, NEWEST FIRST (p = 0 is the latest action; padding at the end)

    a_p   = E_action[type_p]                                   [Da]  learned (paper: Da = C)
    x_p   = concat(a_p, content_p, content_candidate)          [D]   D = Da + 2C  (early fusion)
    h     = TransformerEncoder(x, key_padding_mask = hidden)   [S, D] 2 layers, 1 head, post-norm,
                                                                      NO positional encoding
    out   = concat(W max_p h_p + b,  h_0, h_1, ..., h_{K-1})   [(K + 1) * D]  K = 10 in the paper

``hidden`` (:mod:`recsys.modules.time_window_mask`) hides padding, actions after the request and,
in training only, the random time window: per request ``T ~ U(0, 24 h)``, every action taken
within the last ``T`` seconds. The readout here reads only the *visible* tokens: they are moved
to the front (newest first, order kept), so ``h_0 .. h_{K-1}`` are the outputs of the K most
recent visible actions (zeros past the last one), and the max-pool runs over visible tokens only.
A row with no visible action (empty history, or every action inside its window) gives zeros.

The action type of an event is its action bit mask (``seq_actions``): with A actions there are
2^A types, embedded by one table of 2^A + 1 rows whose row 0 is padding (type m is row m + 1).

Readout order and sequence order follow the published module (github.com/pinterest/
transformer_user_action, ``transact_code/transact.py``): sequences are newest first, the first K
output columns are the K most recent actions, and the projected max-pool comes first in the
output, followed by the K columns flattened. The module also projects the pooled vector with a
``Linear(D, D)``; that is kept.

Quirks of the published module, each reproduced by one flag of :class:`TransActV1Quirks` (all
False = the behaviour described above):

(a) ``pad_collides_with_first_action``: the module maps a raw action id ``i`` to row
    ``lookup[i + 1]``, where ``lookup`` holds, at ``i + 1``, the rank of ``i`` in the sorted action
    vocabulary and 0 everywhere else. Padding ids (-1, or any id outside the vocabulary) AND the
    smallest vocabulary id therefore all land on row 0, the embedding's ``padding_idx`` (a zero vector
    that is never trained), and the key padding mask is ``row <= 0``: every action of the first
    type is embedded as zeros and hidden like padding. Here the vocabulary is the 2^A - 1
    non-empty bit masks (engaged events), so the collided type is bit mask 1, the first action
    alone (e.g. a click without any other action).
(b) ``readout_ignores_mask``: the module takes ``max`` over all S positions and the first K
    positions whatever the mask says. Padded positions (whose query is a padding token) enter
    the max-pool and fill the first-K slots of rows shorter than K, and actions hidden by the
    time window still reach the readout through their own position's output (residual + FFN).
(c) ``newest_action_never_masked``: after combining padding and window, the module clears the
    mask at position 0, in training and evaluation, so the newest action is always attended:
    even inside the time window, after the request, of the collided type, or when the row is
    empty (position 0 is then a padding token). Its purpose is that no row is fully masked
    (which would make the attention softmax NaN); here such a row attends to its first token
    only to keep the softmax finite, and its readout is zeros.
(d) ``two_heads``: the module's config defaults to ``nhead=2``; the paper uses one head. The flag
    sets 2 heads whatever ``num_heads`` says.
(e) ``one_window_per_batch``: the module draws one window per forward call
    (``random.randint(0, time_window_ms)``, Python's global generator, default 1 hour) for the
    whole batch, not one per request; the flag draws one window per batch.

With ``causal`` (off in the paper), each action attends only to itself and to the older visible
actions (:func:`~recsys.modules.time_window_mask.causal_attention_mask`), so the output at an
action has not seen the actions after it: what the next-action loss
(:mod:`recsys.modules.next_action_loss`, TransAct V2's auxiliary loss) needs when it is added to
V1. :meth:`TransActV1.encode` returns the per-action outputs with the position of every action in
the input, for that loss.

The encoder's nested-tensor fast path is turned off (``enable_nested_tensor=False``). The
published module leaves it on, so its evaluation passes without gradients return zeros at every
masked position (padding and window), which then enter its max-pool and first-K readout, while
training passes return the layers' outputs there; here both modes compute the same thing.

Shape letters: B requests, S max actions per request, S_T actions of the batch (jagged),
A actions, C content dimension, Da action embedding dimension, D = Da + 2C, K readout tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError, DataError
from recsys.modules.time_window_mask import causal_attention_mask, time_window_mask
from recsys.ops.padded_gather import gather_padded

PAPER_MAX_SEQUENCE = 100
PAPER_TIME_WINDOW_SECONDS = 24 * 3600.0
MAX_ACTIONS = 16  # action types are bit masks: 2^A rows


@dataclass(frozen=True)
class TransActV1Quirks:
    """Flags that reproduce the published TransAct module's behaviour (module docstring, a-e).

    Args:
        pad_collides_with_first_action: (a) the first action type shares the padding row and is
            hidden like padding.
        readout_ignores_mask: (b) max-pool and first-K readout over all positions, padding and
            window-hidden actions included.
        newest_action_never_masked: (c) position 0 (the newest action) is never hidden.
        two_heads: (d) two attention heads whatever ``num_heads`` says.
        one_window_per_batch: (e) one random time window for the whole batch.
    """

    pad_collides_with_first_action: bool = False
    readout_ignores_mask: bool = False
    newest_action_never_masked: bool = False
    two_heads: bool = False
    one_window_per_batch: bool = False

    @classmethod
    def reference(cls) -> "TransActV1Quirks":
        """Every quirk on: the published module's behaviour."""
        return cls(**{f.name: True for f in dataclasses.fields(cls)})


@dataclass
class TransActV1Config:
    """Sizes of a :class:`TransActV1` encoder.

    Args:
        max_sequence: S, most recent actions read per request; None = the data's
            ``max_sequence`` (or 100, the paper's, when the data has none).
        action_embedding_dim: Da; None = the content dimension C (the paper's choice).
        num_layers: transformer encoder layers (paper: 2).
        num_heads: attention heads (paper: 1); must divide D = Da + 2C.
        feedforward_dim: hidden width of each layer's feed-forward network (published module: 32).
        dropout: dropout inside the encoder layers.
        latest_k: K, output columns of the most recent actions (paper: 10).
        time_window_seconds: training windows are drawn from U(0, this); 0 turns the mask off
            (paper: 24 hours).
        quirks: flags reproducing the published module (:class:`TransActV1Quirks`).
        causal: each action attends only to itself and older actions (for the next-action loss;
            off in the paper).
    """

    max_sequence: int | None = None
    action_embedding_dim: int | None = None
    num_layers: int = 2
    num_heads: int = 1
    feedforward_dim: int = 32
    dropout: float = 0.1
    latest_k: int = 10
    time_window_seconds: float = PAPER_TIME_WINDOW_SECONDS
    quirks: TransActV1Quirks = field(default_factory=TransActV1Quirks)
    causal: bool = False

    def __post_init__(self) -> None:
        for name in ("max_sequence", "action_embedding_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"TransActV1Config.{name} must be a positive int or None, got {value!r}")
        for name in ("num_layers", "num_heads", "feedforward_dim", "latest_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"TransActV1Config.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TransActV1Config.dropout must lie in [0, 1), got {self.dropout!r}")
        if self.time_window_seconds < 0:
            raise ConfigError(
                f"TransActV1Config.time_window_seconds must be >= 0 (0 = no mask), got {self.time_window_seconds!r}"
            )
        if isinstance(self.quirks, dict):
            from recsys.config import from_dict

            self.quirks = from_dict(TransActV1Quirks, self.quirks, where="TransActV1Config", prefix="quirks.")
        if not isinstance(self.quirks, TransActV1Quirks):
            raise ConfigError(f"TransActV1Config.quirks must be a TransActV1Quirks or a mapping, got {self.quirks!r}")


@dataclass
class TransActV1Encoding:
    """What :meth:`TransActV1.encode` returns.

    Args:
        features: ``[B, (K + 1) * D]`` the readout.
        outputs: ``[B, L, D]`` encoder outputs, newest first.
        hidden: ``[B, L]`` bool, True where the position is hidden (padding, time window).
        index: ``[B, L]`` int64 index of each position's action among the inputs, -1 at padding.
    """

    features: torch.Tensor
    outputs: torch.Tensor
    hidden: torch.Tensor
    index: torch.Tensor


class TransActV1(nn.Module):
    """TransAct V1 encoder: jagged realtime actions + candidate content -> ``[B, (K + 1) * D]``.

    Args:
        num_actions: A; action types are the 2^A bit masks.
        content_dim: C, width of the content embeddings (actions and candidate).
        config: sizes, window and quirk flags.
        device: where the parameters live.

    Example::

        encoder = TransActV1(num_actions=4, content_dim=32, config=TransActV1Config(max_sequence=100))
        features = encoder(lengths, action_bits, action_content, action_time, request_time, candidate_content)
        features.shape  # [B, 11 * 96]
    """

    def __init__(
        self,
        num_actions: int,
        content_dim: int,
        config: TransActV1Config | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        config = config or TransActV1Config()
        if not 0 < num_actions <= MAX_ACTIONS:
            raise ConfigError(
                f"TransActV1 embeds action bit masks: num_actions must lie in 1..{MAX_ACTIONS}, got {num_actions}"
            )
        if content_dim <= 0:
            raise ConfigError(
                f"TransActV1 reads content embeddings but content_dim={content_dim}; use data whose items carry "
                "content embeddings (ItemTable.content_embedding)"
            )
        self.config = config
        self.num_actions = num_actions
        self.content_dim = content_dim
        self.max_sequence = config.max_sequence or PAPER_MAX_SEQUENCE
        self.latest_k = config.latest_k
        action_dim = config.action_embedding_dim or content_dim
        self.model_dim = action_dim + 2 * content_dim
        num_heads = 2 if config.quirks.two_heads else config.num_heads
        self.num_heads = num_heads
        if self.model_dim % num_heads:
            raise ConfigError(
                f"TransActV1: {num_heads} heads must divide D = action_embedding_dim + 2 * content_dim = "
                f"{self.model_dim}; change num_heads or action_embedding_dim"
            )
        self.action_embedding = nn.Embedding(2**num_actions + 1, action_dim, padding_idx=0, device=device)  # row 0 = pad
        layer = nn.TransformerEncoderLayer(
            self.model_dim, num_heads, dim_feedforward=config.feedforward_dim, dropout=config.dropout,
            batch_first=True, device=device,
        )
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.pool_projection = nn.Linear(self.model_dim, self.model_dim, device=device)
        self.reset_action_embedding()

    @property
    def output_dim(self) -> int:
        """(K + 1) * D."""
        return (self.latest_k + 1) * self.model_dim

    def reset_action_embedding(self) -> None:
        """N(0, 1/Da): the scale of a unit-norm content embedding's coordinates; padding row zero."""
        weight = self.action_embedding.weight
        with torch.no_grad():
            nn.init.normal_(weight, std=weight.shape[1] ** -0.5)
            weight[0].zero_()

    def forward(
        self,
        lengths: torch.Tensor,
        action_bits: torch.Tensor,
        action_content: torch.Tensor,
        action_time: torch.Tensor,
        request_time: torch.Tensor,
        candidate_content: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Encodes each request's latest actions against its candidate: ``[B, (K + 1) * D]``.

        Args: as :meth:`encode`.
        """
        return self.encode(
            lengths, action_bits, action_content, action_time, request_time, candidate_content, generator
        ).features

    def encode(
        self,
        lengths: torch.Tensor,
        action_bits: torch.Tensor,
        action_content: torch.Tensor,
        action_time: torch.Tensor,
        request_time: torch.Tensor,
        candidate_content: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> "TransActV1Encoding":
        """The readout features and the per-action outputs they come from.

        Args:
            lengths: ``[B]`` actions per request (only the latest S are read).
            action_bits: ``[S_T]`` int64 action bit mask of every action, rows one after the
                other, each row OLDEST FIRST (most recent last), as ``sequence_features`` holds them.
            action_content: ``[S_T, C]`` content embedding of the item of every action.
            action_time: ``[S_T]`` int64 seconds of every action.
            request_time: ``[B]`` int64 seconds of each request.
            candidate_content: ``[B, C]`` content embedding of each request's candidate.
            generator: source of the training time windows; None = torch's global generator.

        Returns:
            :class:`TransActV1Encoding`: ``features [B, (K + 1) * D]`` (projected max-pool, then the K
            most recent outputs flattened), and the encoder's ``outputs [B, L, D]`` newest first
            with their ``hidden [B, L]`` mask and the ``index [B, L]`` of each position's action
            among the ``S_T`` inputs (-1 at padding).
        """
        self._check_inputs(lengths, action_bits, action_content, action_time, request_time, candidate_content)
        quirks = self.config.quirks
        bits, real = newest_first(action_bits, lengths, self.max_sequence)  # [B, S], [B, S]
        content, _ = newest_first(action_content, lengths, self.max_sequence)  # [B, S, C]
        times, _ = newest_first(action_time, lengths, self.max_sequence)  # [B, S]
        rows = action_type_rows(bits, real, quirks.pad_collides_with_first_action)  # [B, S]
        hidden = time_window_mask(
            times, request_time, real.sum(1), self.config.time_window_seconds, self.training,
            generator, quirks.one_window_per_batch,
        )  # [B, S]
        if quirks.pad_collides_with_first_action:
            hidden = hidden | (rows == 0)  # the module's key padding mask: row <= 0
        if quirks.newest_action_never_masked:
            hidden = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, 1:]], dim=1)  # [B, S]
        candidate = candidate_content.unsqueeze(1).expand(-1, self.max_sequence, -1)  # [B, S, C]
        tokens = torch.cat([self.action_embedding(rows), content, candidate], dim=-1)  # [B, S, D]: early fusion
        index, _ = newest_first(torch.arange(action_bits.shape[0], device=lengths.device), lengths, self.max_sequence)
        index = torch.where(real, index, -1)  # [B, S]
        if not quirks.readout_ignores_mask:
            order, longest = visible_order(hidden)  # [B, S], L
            tokens = tokens.gather(1, order.unsqueeze(-1).expand_as(tokens))[:, :longest]  # [B, L, D]
            hidden, index = hidden.gather(1, order)[:, :longest], index.gather(1, order)[:, :longest]  # [B, L]
        outputs = self._encode(tokens, hidden)  # [B, L, D]
        features = readout(outputs, hidden, self.latest_k, self.pool_projection, quirks.readout_ignores_mask)
        return TransActV1Encoding(features, outputs, hidden, index)

    def _encode(self, tokens: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` encoder outputs of every row.

        A row with nothing visible attends to its first token instead (a fully masked softmax is
        NaN); the readout discards that row's outputs. Every row goes through the same layers,
        so every parameter takes part in every step (DistributedDataParallel's static graph).
        """
        if self.config.causal:  # every query reads itself, so no row is empty
            mask = causal_attention_mask(hidden, self.num_heads, newest_first=True)  # [B * heads, L, L]
            return self.encoder(tokens, mask=mask)  # [B, L, D]
        nothing_visible = hidden.all(dim=1, keepdim=True)  # [B, 1]
        first = torch.arange(hidden.shape[1], device=hidden.device) == 0  # [L]
        attention_mask = hidden & ~(nothing_visible & first)  # [B, L]
        return self.encoder(tokens, src_key_padding_mask=attention_mask)  # [B, L, D]

    def _check_inputs(self, lengths, action_bits, action_content, action_time, request_time, candidate_content) -> None:
        num_rows, total = lengths.shape[0], action_bits.shape[0]
        if lengths.dim() != 1 or int(lengths.sum()) != total or action_time.shape != action_bits.shape:
            raise DataError(
                f"TransActV1: action_bits and action_time must be [S_T] with S_T = sum(lengths) = {int(lengths.sum())}; "
                f"got {tuple(action_bits.shape)} and {tuple(action_time.shape)}"
            )
        if action_content.shape != (total, self.content_dim) or candidate_content.shape != (num_rows, self.content_dim):
            raise DataError(
                f"TransActV1: action_content must be [S_T, {self.content_dim}] and candidate_content [B, {self.content_dim}]; "
                f"got {tuple(action_content.shape)} and {tuple(candidate_content.shape)}"
            )
        if request_time.shape != (num_rows,):
            raise DataError(f"TransActV1: request_time must be [B] = [{num_rows}], got {tuple(request_time.shape)}")
        if total and (int(action_bits.min()) < 0 or int(action_bits.max()) >= 2**self.num_actions):
            raise DataError(
                f"TransActV1: action bit masks must lie in 0..{2**self.num_actions - 1} for {self.num_actions} actions, "
                f"got {int(action_bits.min())}..{int(action_bits.max())}; build the model and the batches from one FeatureSpec"
            )


def newest_first(values: torch.Tensor, lengths: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged rows (oldest first) -> padded rows of their latest ``max_len`` values, newest first.

    Args:
        values: ``[S_T, *F]`` values of all rows, one row after the other, each oldest first.
        lengths: ``[B]`` values per row.
        max_len: S.

    Returns:
        ``[B, S, *F]`` padded values (zeros at padding) and ``[B, S]`` bool, True at real values::

            row 0 = [a, b, c], row 1 = [d], S = 2   ->   [[c, b], [d, 0]],  [[T, T], [T, F]]
    """
    lengths = lengths.to(torch.int64)
    ends = torch.cumsum(lengths, dim=0)  # [B] one past each row's newest value
    positions = torch.arange(max_len, device=values.device)  # [S]
    real = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, S]
    index = ends.unsqueeze(1) - 1 - positions  # [B, S] (meaningless at padding)
    return gather_padded(values, index, real), real  # [B, S, *F], [B, S]


def readout(
    outputs: torch.Tensor,
    hidden: torch.Tensor,
    latest_k: int,
    pool_projection: nn.Module,
    ignore_mask: bool = False,
) -> torch.Tensor:
    """Encoder outputs -> ``[B, (K + 1) * D]``: projected max-pool, then the first K columns.

    Args:
        outputs: ``[B, L, D]`` encoder outputs, newest first (L >= 1).
        hidden: ``[B, L]`` bool, True where the token is hidden (padding or time window).
        latest_k: K; columns past L are zeros.
        pool_projection: ``Linear(D, D)`` applied to the max-pooled vector.
        ignore_mask: quirk (b): pool and read every position, hidden ones included. Otherwise
            hidden positions are zeros in the K columns and never win the max-pool, and a row with
            nothing visible reads out as zeros.
    """
    visible_rows = (~hidden.all(dim=1)).unsqueeze(1)  # [B, 1]; False for rows with nothing visible
    if ignore_mask:
        pool_input = outputs  # [B, L, D]
    else:
        outputs = outputs.masked_fill(hidden.unsqueeze(-1), 0.0)  # [B, L, D]
        pool_input = outputs.masked_fill(hidden.unsqueeze(-1), float("-inf"))  # [B, L, D]
    pooled = torch.where(visible_rows, pool_input.max(dim=1).values, 0.0)  # [B, D]
    pooled = torch.where(visible_rows, pool_projection(pooled), 0.0)  # [B, D]
    latest = outputs[:, :latest_k]  # [B, <=K, D]
    latest = F.pad(latest, (0, 0, 0, latest_k - latest.shape[1]))  # [B, K, D]
    return torch.cat([pooled, latest.flatten(1)], dim=1)  # [B, (K + 1) * D]


def action_type_rows(bits: torch.Tensor, real: torch.Tensor, pad_collides_with_first_action: bool) -> torch.Tensor:
    """``[B, S]`` rows of the action-type table: bit mask m -> row m + 1, padding -> row 0.

    With ``pad_collides_with_first_action`` the published module's lookup instead: the rank of the
    bit mask among the non-empty masks (m - 1), so mask 1 lands on padding row 0 (quirk a).
    """
    if pad_collides_with_first_action:
        return torch.where(real & (bits >= 1), bits - 1, 0)  # [B, S]
    return torch.where(real, bits + 1, 0)  # [B, S]


def visible_first(tokens: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Moves each row's visible tokens to the front (order kept) and drops the all-hidden tail.

    Args:
        tokens: ``[B, S, D]``.
        hidden: ``[B, S]`` bool, True = hidden.

    Returns:
        ``[B, L, D]`` tokens and ``[B, L]`` hidden mask, L = most visible tokens of a row (at
        least 1, so that every batch runs the same layers).
    """
    order, longest = visible_order(hidden)  # [B, S], L
    tokens = tokens.gather(1, order.unsqueeze(-1).expand_as(tokens))  # [B, S, D]
    hidden = hidden.gather(1, order)  # [B, S]
    return tokens[:, :longest], hidden[:, :longest]


def visible_order(hidden: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``[B, S]`` per-row permutation putting the visible tokens first (order kept), and L, the
    most visible tokens of a row (at least 1)."""
    order = torch.sort(hidden.to(torch.int32), dim=1, stable=True).indices  # [B, S]: visible first
    longest = max(int((~hidden).sum(dim=1).max()) if hidden.shape[0] else 0, 1)
    return order, longest
