"""trafficlip: an MLOps workflow that fine-tunes CLIP for traffic text-to-image retrieval."""

__version__ = "0.1.0"
