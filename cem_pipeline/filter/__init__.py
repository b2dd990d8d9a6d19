"""Uninformative-patch filtering (paper: 'Uninformative patch filtering'). Reads: dedup exemplars'
pixels and WORKDIR/labels.parquet. Writes: labels (label_app, the `cem label` page), models under
WORKDIR/models, and the `score` stage table (score, informative).

Modules: stage (what `cem label`, `cem train-filter` and `cem filter` call), protocol (the
Classifier interface), models (the resnet34 and random-forest classifiers behind it), classifier
(the resnet34 network, its preprocessing and training), features (the random forest's image
features and training), holdout (the split and AUROC both share), scoring (the network's batched
kernel + the Dask assembly that runs any Classifier), labels (the labels table), selection (which
patches get labelled and scored), report (ROC, montage)."""
