"""Near-duplicate removal: greedy dHash clustering per group (kernel), the paper's loop (reference),
Dask assembly over the catalog with per-group incremental state (graph), and reports (report)."""
