"""edgecompress: prune, distill, export and quantize a PyTorch model into a faster engine for an edge device."""
__version__ = "0.1.0"
