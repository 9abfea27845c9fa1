"""Which tokens of a padded action sequence a realtime sequence model may not see.

Two reasons hide a token (``True`` in the mask = hidden, as ``nn.MultiheadAttention``'s
``key_padding_mask`` expects):

- **padding**: positions at or past the row's length;
- **the random time window** (TransAct, Xia et al., KDD 2023): while training, each
  request draws a window ``T ~ U(0, max_window)`` and every action taken within the last ``T``
  seconds before the request is hidden, i.e. actions with ``request_time - action_time < T``.
  The model then cannot lean only on the very latest actions (the paper's fix for repetitive
  recommendations). At evaluation and serving ``T = 0``: only actions after the request
  (``request_time - action_time < 0``) are hidden, and no logged history has any.

Example, one request at time 1,000 with three actions (newest first) and one padded slot::

    position          0      1      2      3
    action_time     990    700    100      -
    seconds before   10    300    900      -
    T = 500         hide   hide   keep   hide (padding)
    T = 0 (eval)    keep   keep   keep   hide (padding)

The functions are pure: the window draw depends only on the generator passed in (the global
torch generator when None), so a seeded generator reproduces it.

:func:`causal_attention_mask` turns such a key mask into the ``[B * heads, S, S]`` attention mask
of a causal encoder (each token attends only to itself and to tokens before it, in time order;
the TransAct V2 encoder, and TransAct V1 when it trains with the next-action loss)::

    oldest first (V2), row of 3 tokens + 1 padded slot, query t may read key s when s <= t
    query/key    0  1  2  3(pad)
    0            .  x  x  x
    1            .  .  x  x
    2            .  .  .  x
    3(pad)       .  .  .  .        <- a padded query reads itself and the real tokens:
                                      its output is unused, but its softmax stays finite

A query always reads its own key, so no softmax row is empty (an empty one is NaN, and a NaN
reaches the gradients of every attention weight even where the output is discarded).

Shape letters: B rows (requests), S padded sequence length.
"""

from __future__ import annotations

import torch

from recsys.errors import ConfigError, DataError


def key_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, S]`` bool, True at the padded positions ``p >= lengths[b]``.

    Args:
        lengths: ``[B]`` real tokens per row (rows longer than ``max_len`` have no padding).
        max_len: S, the padded length.
    """
    positions = torch.arange(max_len, device=lengths.device)  # [S]
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)  # [B, S]


def sample_time_windows(
    num_rows: int,
    max_window_seconds: float,
    generator: torch.Generator | None = None,
    one_per_batch: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[B]`` float64 windows ``T ~ U(0, max_window_seconds)``, one per row.

    Args:
        num_rows: B.
        max_window_seconds: upper end of the uniform draw (the paper: 24 hours = 86,400 s).
        generator: source of randomness (drawn on its device); None = torch's global generator.
        one_per_batch: draw a single window for the whole batch (what the published TransAct
            module does) instead of one per request.
        device: where the result goes; None = where it was drawn.
    """
    if max_window_seconds < 0:
        raise ConfigError(f"max_window_seconds={max_window_seconds}; use a window >= 0 seconds (0 = no window)")
    draw_device = generator.device if generator is not None else device
    draws = 1 if one_per_batch else num_rows
    uniform = torch.rand(draws, generator=generator, dtype=torch.float64, device=draw_device)  # [B] or [1]
    windows = (uniform * max_window_seconds).expand(num_rows)  # [B]
    return windows.to(device) if device is not None else windows


def time_window_mask(
    action_time: torch.Tensor,
    request_time: torch.Tensor,
    lengths: torch.Tensor,
    max_window_seconds: float,
    training: bool,
    generator: torch.Generator | None = None,
    one_window_per_batch: bool = False,
) -> torch.Tensor:
    """``[B, S]`` bool, True where a token is hidden: padding, or inside the request's time window.

    Args:
        action_time: ``[B, S]`` int64 seconds of each action (any value at padded positions).
        request_time: ``[B]`` int64 seconds of each request.
        lengths: ``[B]`` real tokens per row; positions ``>= lengths[b]`` are padding.
        max_window_seconds: windows are drawn from ``U(0, max_window_seconds)``; 0 = no window.
        training: draw windows only when True; otherwise ``T = 0`` (only future actions hidden).
        generator: source of the window draw; None = torch's global generator.
        one_window_per_batch: one window for all rows (the published module's behaviour).

    Returns:
        ``[B, S]`` bool mask, True = hidden.
    """
    if action_time.dim() != 2 or request_time.shape != action_time.shape[:1] or lengths.shape != request_time.shape:
        raise DataError(
            f"time_window_mask: action_time must be [B, S] with request_time and lengths [B]; got "
            f"{tuple(action_time.shape)}, {tuple(request_time.shape)} and {tuple(lengths.shape)}"
        )
    num_rows, max_len = action_time.shape
    seconds_before = (request_time.unsqueeze(1) - action_time).to(torch.float64)  # [B, S]
    if training and max_window_seconds > 0:
        windows = sample_time_windows(num_rows, max_window_seconds, generator, one_window_per_batch, action_time.device)
    else:
        windows = torch.zeros(num_rows, dtype=torch.float64, device=action_time.device)  # [B]
    inside_window = seconds_before < windows.unsqueeze(1)  # [B, S]
    return key_padding_mask(lengths, max_len) | inside_window  # [B, S]


def causal_attention_mask(hidden: torch.Tensor, num_heads: int, newest_first: bool = False) -> torch.Tensor:
    """``[B * heads, S, S]`` bool attention mask, True = query may NOT read key.

    Args:
        hidden: ``[B, S]`` bool key mask, True at tokens nobody may read (padding, time window).
        num_heads: attention heads (``nn.MultiheadAttention`` expects one mask per row and head).
        newest_first: the rows hold the newest token first (TransAct V1's layout), so the tokens
            before a query in time are the ones at larger positions.

    Returns:
        The mask to pass as ``mask=`` to ``nn.TransformerEncoder``: a query reads its own key and
        the unhidden keys before it in time (see the module docstring).
    """
    if hidden.dim() != 2:
        raise DataError(f"causal_attention_mask: hidden must be [B, S], got {tuple(hidden.shape)}")
    positions = torch.arange(hidden.shape[1], device=hidden.device)  # [S]
    query, key = positions.unsqueeze(1), positions.unsqueeze(0)  # [S, 1], [1, S]
    later = key < query if newest_first else key > query  # [S, S]: the key comes after the query in time
    blocked = later.unsqueeze(0) | hidden.unsqueeze(1)  # [B, S, S]
    blocked = blocked & ~(query == key).unsqueeze(0)  # [B, S, S]: every query reads itself
    return blocked.repeat_interleave(num_heads, dim=0)  # [B * heads, S, S]
