"""What every stage shares: typed configuration (config), the run directory (workdir), the zarr store
(store), the Parquet catalog and stage tables (catalog), patch re-extraction (patches), catalog
geometry (geometry: axis/plane <-> volume index maps), atomic file writes (atomic) and the Dask
cluster launcher (cluster). Imports nothing else of cem."""
