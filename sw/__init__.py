"""bnnflow: an open FPGA design flow for binarized neural networks.

Importing ``bnnflow`` never imports torch; only the commands that train or export do.
"""

__all__ = ["__version__", "GENERATOR_VERSION"]

__version__ = "0.1.0"

#: Bumped whenever the hardware generator's output changes for the same IR and folding; part
#: of the design ID that the board reports and the driver checks.
GENERATOR_VERSION = "1"
