"""edgecompress: prune, distill, export and quantize a PyTorch model into a faster engine for an edge device."""
__version__ = "0.1.0"


def load(run_dir):
    """The engine a run shipped, loaded with the runtime settings it was timed with (deploy.json):
    `edgecompress.load("runs/NAME")(images)`. Imported lazily: `import edgecompress` needs torch only."""
    from edgecompress.targets.deploy import load as _load
    return _load(run_dir)
