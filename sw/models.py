"""The model zoo: 1W1A Brevitas networks with the topologies of ``brevitas_examples.bnn_pynq``.

Imports torch and brevitas: only the training and export commands import this module.
The quantizers are bnn_pynq's own (constant scale 1.0), so a binary layer's accumulator is an
exact integer dot product and the final layer's scores are exact integers.
"""

from __future__ import annotations

import torch
from brevitas.nn import QuantIdentity, QuantLinear
from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant
from torch import nn

__all__ = ["BinaryMLP", "build_model", "MODELS"]


class BinaryMLP(nn.Module):
    """A binarized MLP: binarized input, binary hidden layers with BatchNorm + sign, and a
    final binary layer whose outputs are the integer scores (no TensorNorm, so they stay exact).

    The forward pass takes the input in ``[0, 1]`` (pixel * input_scale) and maps it to
    ``2x - 1`` before the binary input quantizer, as bnn_pynq's FC does.
    """

    def __init__(self, in_features: int, hidden: list[int], num_classes: int,
                 dropout: float = 0.0):
        super().__init__()
        self.in_features = in_features
        layers: list[nn.Module] = [QuantIdentity(act_quant=CommonActQuant, bit_width=1)]
        width = in_features
        for h in hidden:
            layers += [
                QuantLinear(width, h, bias=False, weight_bit_width=1,
                            weight_quant=CommonWeightQuant),
                nn.BatchNorm1d(h),
                QuantIdentity(act_quant=CommonActQuant, bit_width=1),
            ]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(QuantLinear(width, num_classes, bias=False, weight_bit_width=1,
                                  weight_quant=CommonWeightQuant))
        self.features = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, QuantLinear):
                # Small latent weights: signs flip easily early on. bnn_pynq's U(-1, 1) starts
                # at the clip limit and trained the digits TFC ~5 points worse here.
                nn.init.uniform_(m.weight.data, -0.1, 0.1)

    def clip_weights(self, limit: float = 1.0) -> None:
        """Keep latent weights in [-limit, limit] (the STE passes no gradient outside)."""
        for m in self.modules():
            if isinstance(m, QuantLinear):
                m.weight.data.clamp_(-limit, limit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1)
        x = 2.0 * x - torch.tensor([1.0], device=x.device)
        return self.features(x)


def _tfc(in_features: int, num_classes: int) -> BinaryMLP:
    # TFC's shape (three hidden layers of 64) on any input size.
    return BinaryMLP(in_features, [64, 64, 64], num_classes)


MODELS = {"tfc": _tfc}


def build_model(name: str, in_features: int, num_classes: int) -> nn.Module:
    try:
        return MODELS[name](in_features, num_classes)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
