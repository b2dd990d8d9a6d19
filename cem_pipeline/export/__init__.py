"""Export. Reads: the catalog joined with the dedup and score stage tables, and the pixels in
store.zarr. Writes: WORKDIR/export/*.beton (ffcv), their sidecars (sidecar: the schema trainers
read) and the `export` stage table. select picks the rows, blocks hands them to ffcv read block by block
through core.patches, writer drives ffcv's DatasetWriter."""
