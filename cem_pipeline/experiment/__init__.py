"""`cem experiment transfer`: does pre-training on the curated corpus transfer better than on the raw
one, or than no pre-training? Reads a pipeline config (its sources), a MoCo config and seg task
configs; writes, under its output_dir, one folder per unit of work (curate, pretrain/<corpus>/seed<k>,
finetune/<task>/<condition>/seed<k>), results.json, table.md and experiment.log. It runs the stages
in process through their own functions (ingest, dedup, export, training.moco, training.seg); only
the CLI imports this package. See README.md here."""
