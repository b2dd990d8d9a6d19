"""MoCoV2 pre-training (paper: 'Pre-training'). Reads: an exported .beton and its sidecar. Writes:
checkpoints in the authors' released layout (checkpoint), metrics CSV + TensorBoard (metrics).
model is the MoCo builder, train the DDP trainer, config its typed YAML."""
