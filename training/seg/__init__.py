"""Segmentation transfer benchmark: U-Net/ResNet50 fine-tuning from random, MoCoV2 or released encoders,
2D/3D inference over zarr, IoU evaluation (paper: "Benchmark segmentation tasks")."""
