"""Uninformative-patch filtering (paper: 'Uninformative patch filtering'): label, train, score.

Modules: classifier (resnet34 build/load/train), features (random-forest alternative),
scoring (batched kernel + Dask assembly), labels (the labels table), report (ROC, montage),
pixels (the single place that reads patch pixels from the store).
"""
