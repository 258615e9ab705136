"""Metrics for relevance maps; each module is imported on its own (``explainers.metrics.localisation``)."""
