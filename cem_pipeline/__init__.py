"""cem: curate heterogeneous cellular EM into a deduplicated, informative training set (CEM500K pipeline)."""

__version__ = "0.1.0"
