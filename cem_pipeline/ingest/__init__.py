"""Ingest (paper: 'Data curation', patch extraction). Reads: the sources' volumes. Writes:
WORKDIR/store.zarr (one standardised uint8 array per volume), WORKDIR/catalog/ (one Parquet row per
224² patch with its dHash and moments) and WORKDIR/errors.parquet. graph assembles the Dask work;
standardize, tiling and hashing are kernels on one block; report counts
the catalog for `cem catalog`."""
