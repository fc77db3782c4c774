"""bnnflow: an open FPGA design flow for binarized neural networks.

Importing ``bnnflow`` never imports torch; only the commands that train or export do.
:class:`Accelerator` (the host driver, :mod:`bnnflow.driver`) is imported on first use.
"""

__all__ = ["__version__", "GENERATOR_VERSION", "Accelerator"]

__version__ = "0.1.0"

#: Bumped whenever the hardware generator's output changes for the same IR and folding; part
#: of the design ID that the board reports and the driver checks.
GENERATOR_VERSION = "13"

_LAZY = {"Accelerator": "bnnflow.driver"}


def __getattr__(name):
    # PEP 562: keeps `import bnnflow` free of the driver's imports until they are needed.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bnnflow' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
