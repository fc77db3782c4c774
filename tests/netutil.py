"""Random IR networks for tests (they live in :mod:`bnnflow.synthetic`)."""

from bnnflow.synthetic import LEVELS, random_conv_net, random_net, zoo_net

__all__ = ["LEVELS", "random_conv_net", "random_net", "zoo_net"]
