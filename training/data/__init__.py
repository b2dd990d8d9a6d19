"""Input pipelines: the exported .beton through ffcv (MoCoV2), and in-memory image/mask pairs (segmentation)."""
