"""Training side of cem: input pipelines (training.data), MoCoV2 pre-training and segmentation transfer."""
