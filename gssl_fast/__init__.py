"""gssl_fast: Gated Self-Supervised Learning at full loader speed.

Two floors, imports one way: ``pipelines`` (datasets, sampling, batched ops, the torch,
DALI and FFCV loaders) imports nothing of ``gssl_fast``; ``gssl_fast`` trains on top of it.
Kept light on purpose: ``gssl_fast.load_model`` imports the trainer's modules on first use.
"""

__version__ = "0.1.0"


def load_model(path, *, device="cpu", calibrated=False):
    """The trained model of a run folder or checkpoint: ``[B, 3, H, W]`` float pixels in
    [0, 1] -> ``[B, K]`` class logits, eval mode; ``calibrated``: divided by the temperature
    ``python -m gssl_fast.evaluate RUN --calibration`` fitted
    (``gssl_fast.analysis.inference.load_model``)."""
    from gssl_fast.analysis.inference import load_model as load

    return load(path, device=device, calibrated=calibrated)
