"""The ground-truth engagement model: how likely each action is on one impression.

Actions follow ``DEFAULT_ACTIONS`` = (click, save, hide, long_view) and are drawn in stages:

- click with ``sigmoid(click_bias + click_affinity * a + q + surface_bias[s] - position_decay * log1p(p))``
  where ``a`` is the cosine affinity between the user's interest vector and the item's content
  embedding, ``q`` the item's quality, ``s`` the surface and ``p`` the slot's position in its page;
- given a click, save and long_view, each more likely at high affinity and quality;
- without a click, hide, more likely at low affinity and quality.

:func:`action_probabilities` returns the marginal probability of each action, ``[n, A]``.

Shape letters: n impressions, A = 4 actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.data.schema import DEFAULT_ACTIONS

CLICK, SAVE, HIDE, LONG_VIEW = (DEFAULT_ACTIONS.index(name) for name in ("click", "save", "hide", "long_view"))


@dataclass(frozen=True)
class EngagementModel:
    """Logit coefficients of the staged action model (see the module docstring)."""

    click_bias: float = -4.8
    click_affinity: float = 3.0
    position_decay: float = 0.35
    surface_bias: tuple[float, ...] = (0.0, 0.4, 0.2)  # home, search, related
    save_bias: float = -3.6
    save_affinity: float = 2.0
    long_view_bias: float = -1.5
    long_view_affinity: float = 1.5
    hide_bias: float = -2.5
    hide_affinity: float = 3.0


@dataclass
class StageProbabilities:
    """Conditional probabilities of the stages, each ``[n]`` float64."""

    click: np.ndarray
    save_given_click: np.ndarray
    long_view_given_click: np.ndarray
    hide_given_no_click: np.ndarray


def stage_probabilities(
    model: EngagementModel, affinity: np.ndarray, quality: np.ndarray, surface: np.ndarray, position: np.ndarray
) -> StageProbabilities:
    """Conditional stage probabilities from ``[n]`` affinity, quality, surface and page position."""
    surface_bias = np.asarray(model.surface_bias)[surface]
    click = model.click_bias + model.click_affinity * affinity + quality + surface_bias
    click -= model.position_decay * np.log1p(position)
    return StageProbabilities(
        click=_sigmoid(click),
        save_given_click=_sigmoid(model.save_bias + model.save_affinity * affinity + quality),
        long_view_given_click=_sigmoid(model.long_view_bias + model.long_view_affinity * affinity + quality),
        hide_given_no_click=_sigmoid(model.hide_bias - model.hide_affinity * affinity - quality),
    )


def action_probabilities(stages: StageProbabilities) -> np.ndarray:
    """``[n, A]`` float64 marginal probability of each action in ``DEFAULT_ACTIONS`` order."""
    probs = np.empty((stages.click.shape[0], len(DEFAULT_ACTIONS)))
    probs[:, CLICK] = stages.click
    probs[:, SAVE] = stages.click * stages.save_given_click
    probs[:, HIDE] = (1.0 - stages.click) * stages.hide_given_no_click
    probs[:, LONG_VIEW] = stages.click * stages.long_view_given_click
    return probs


def draw_actions(stages: StageProbabilities, uniforms: np.ndarray) -> np.ndarray:
    """``[n, 3]`` uniforms -> ``[n]`` int32 action bit masks drawn from the stages."""
    clicked = uniforms[:, 0] < stages.click
    saved = clicked & (uniforms[:, 1] < stages.save_given_click)
    long_view = clicked & (uniforms[:, 2] < stages.long_view_given_click)
    hidden = ~clicked & (uniforms[:, 1] < stages.hide_given_no_click)
    mask = (clicked << CLICK) | (saved << SAVE) | (hidden << HIDE) | (long_view << LONG_VIEW)
    return mask.astype(np.int32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
