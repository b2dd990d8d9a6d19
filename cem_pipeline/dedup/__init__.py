"""Deduplication (paper: 'Deduplication'). Reads: the catalog's dHashes. Writes: the `dedup` stage
table (cluster_id, is_exemplar, distance_to_leader) and per-group state for incremental re-runs.
kernel is the greedy dHash clustering of one group, reference the paper's plain loop, graph the
Dask assembly over the catalog, report the tables and montage."""
