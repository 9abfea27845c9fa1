"""recsys-zoo: recommenders for long user-behaviour sequences on TorchRec.

``import recsys`` loads nothing heavy; ``recsys.load(run_dir)`` (:func:`recsys.inference.load`)
imports torch and the model zoo when first called.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("recsys-zoo")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    if name == "load":
        from recsys.inference import load

        return load
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")


__all__ = ["__version__", "load"]
