"""Evaluation metrics: per-head ROC AUC and normalized entropy."""

from recsys.metrics.classification import HeadMetrics, normalized_entropy, roc_auc

__all__ = ["HeadMetrics", "normalized_entropy", "roc_auc"]
