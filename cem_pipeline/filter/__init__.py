"""Uninformative-patch filtering (paper: 'Uninformative patch filtering'). Reads: dedup exemplars'
pixels and WORKDIR/labels.parquet. Writes: labels (label_app, the `cem label` page), models under
WORKDIR/models, and the `score` stage table (score, informative).

Modules: classifier (the resnet34 and random-forest classifiers behind one protocol), features
(the random forest's image features), scoring (batched kernel + Dask assembly), labels (the labels
table), selection (which patches get labelled and scored), report (ROC, montage)."""
