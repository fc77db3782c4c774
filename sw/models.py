"""The model zoo: 1W1A Brevitas networks with the topologies of ``brevitas_examples.bnn_pynq``,
with the literature's training methods as options of their hidden layers (:class:`Methods`).

Imports torch and brevitas: only the training and export commands import this module.
The quantizers are bnn_pynq's own (constant scale 1.0), so a binary layer's accumulator is an
exact integer dot product and the final layer (never scaled, shifted or multi-base, whatever
the methods) outputs exact integer scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from brevitas.core.restrict_val import RestrictValueType
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant
from torch import nn
from torch.nn import functional as F

__all__ = ["Methods", "WEIGHT_SCALING", "ClipSTE", "Shift", "ScaledBinary", "abc_bases",
           "ABCLinear", "ABCConv2d", "BinaryNet", "BinaryMLP", "BinaryConvNet", "MODELS",
           "build_model"]

WEIGHT_SCALING = ("none", "backward", "forward")


@dataclass(frozen=True)
class Methods:
    """Which training methods the hidden binary layers use. Each leaves the export foldable
    into integer thresholds, except ABC-Net's bases.

    Parameters
    ----------
    t_clip : float
        The STE passes the gradient of a hidden sign only where ``|x| <= t_clip`` (Bethge et
        al.: 0.5 beats the classic 1.0). A training-only autograd op before the quantizer.
    weight_scaling : {"none", "backward", "forward"}
        XNOR-Net's per-output-channel ``alpha = mean|W|``: in the forward pass (exported as a
        positive per-channel ``Mul``, which the front end folds), or in the gradient only.
    binealnet : bool
        BiNealNet's ``sign(PReLU(x + b0) + b1)``: learnable per-channel shifts, PReLU slope
        kept ``>= 0`` by :meth:`BinaryNet.clip_weights` (monotone: one threshold per channel).
    abc_bases : int
        ABC-Net's ``M`` weight bases with least-squares coefficients; 1 is an ordinary binary
        layer. Software only: the export is a sum of ``M`` binary layers, which the hardware
        does not support yet.
    """

    t_clip: float = 0.5
    weight_scaling: str = "none"
    binealnet: bool = False
    abc_bases: int = 1

    def __post_init__(self):
        if not self.t_clip > 0:
            raise ValueError(f"t_clip must be > 0, got {self.t_clip}")
        if self.weight_scaling not in WEIGHT_SCALING:
            raise ValueError(f"weight_scaling must be one of {WEIGHT_SCALING}")
        if self.abc_bases < 1:
            raise ValueError(f"abc_bases must be >= 1, got {self.abc_bases}")
        if self.abc_bases > 1 and self.weight_scaling != "none":
            raise ValueError("ABC-Net bases carry their own least-squares scales: no weight "
                             "scaling with abc_bases > 1")


def _constant(t: torch.Tensor) -> torch.Tensor:
    # In an ONNX export, a value computed from the weights would be traced as ops on the
    # initializer (Abs, ReduceMean, ...), which the front end does not evaluate.
    if torch.onnx.is_in_onnx_export():
        return torch.from_numpy(t.detach().cpu().numpy().copy())
    return t


def _channels(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.reshape((1, -1) + (1,) * (ndim - 2))


class _ClipSTEFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, t_clip):
        ctx.save_for_backward(x)
        ctx.t_clip = t_clip
        # Brevitas' binary quantizer clamps at its scale (1.0), zeroing gradients beyond it;
        # shrinking by max(t_clip, 1) keeps |x| <= t_clip inside. The sign is unchanged.
        return x / max(t_clip, 1.0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= ctx.t_clip).to(grad.dtype), None


class ClipSTE(nn.Module):
    """Training only: the gradient passes where ``|x| <= t_clip`` and is zero elsewhere.

    Identity in eval mode (and so absent from the export). Place it right before a binary
    ``QuantIdentity``.
    """

    def __init__(self, t_clip: float):
        super().__init__()
        self.t_clip = float(t_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ClipSTEFn.apply(x, self.t_clip) if self.training else x


class Shift(nn.Module):
    """A learnable per-channel shift ``x + b`` (BiNealNet's ``b0`` and ``b1``), initially 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _channels(self.bias, x.dim())


class _BackwardScaleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, alpha):
        ctx.save_for_backward(alpha)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        (alpha,) = ctx.saved_tensors
        return grad * alpha, None


class ScaledBinary(nn.Module):
    """A binary layer and its per-output-channel scale ``alpha = mean|W|`` (latent weights).

    ``mode="forward"`` outputs ``alpha * layer(x)`` (exported as a ``Mul`` by a positive
    constant); ``mode="backward"`` outputs ``layer(x)`` and back-propagates as if it were
    ``alpha * layer(x)`` (Zhou et al.'s backward-only mode, as evaluated by Bethge et al.).
    """

    def __init__(self, layer: nn.Module, mode: str):
        super().__init__()
        if mode not in ("forward", "backward"):
            raise ValueError(f"mode must be 'forward' or 'backward', got {mode!r}")
        self.layer, self.mode = layer, mode

    def alpha(self) -> torch.Tensor:
        """The per-output-channel scale ``mean|W|`` (kept > 0)."""
        w = self.layer.weight
        return w.abs().mean(dim=tuple(range(1, w.dim()))).clamp_min(1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        if self.mode == "forward":
            return y * _constant(_channels(self.alpha(), y.dim()))
        if self.training:
            return _BackwardScaleFn.apply(y, _channels(self.alpha().detach(), y.dim()))
        return y


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)  # sign(0) = +1, as Brevitas


@torch.no_grad()
def abc_bases(w: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ABC-Net's binary bases of ``w`` and their least-squares coefficients.

    Parameters
    ----------
    w : torch.Tensor
        Real-valued (latent) weights of any shape.
    m : int
        Number of bases ``M``.

    Returns
    -------
    bases : torch.Tensor
        ``(M, *w.shape)``: ``B_i = sign(W - mean(W) + u_i std(W))``, ``u_i`` evenly spaced
        in [-1, 1] (0 for ``M = 1``).
    alpha : torch.Tensor
        ``(M,)``: the coefficients minimising ``||W - sum_i alpha_i B_i||^2``.
    """
    mu, sd = w.mean(), w.std()
    u = torch.linspace(-1.0, 1.0, m) if m > 1 else torch.zeros(1)
    bases = torch.stack([_sign(w - mu + ui * sd) for ui in u])
    a = torch.linalg.lstsq(bases.reshape(m, -1).T.double(), w.reshape(-1, 1).double()).solution
    return bases, a.reshape(m).to(w.dtype)


class _ABCLayer(nn.Module):
    def __init__(self, shape: tuple[int, ...], bases: int, op):
        super().__init__()
        if bases < 1:
            raise ValueError(f"bases must be >= 1, got {bases}")
        self.bases, self._op = bases, op
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.uniform_(self.weight, -0.1, 0.1)

    def approximation(self) -> torch.Tensor:
        """``sum_i alpha_i B_i``, with the straight-through gradient ``sum_i alpha_i`` to W."""
        b, a = abc_bases(self.weight.detach(), self.bases)
        wa = torch.tensordot(a, b, dims=1)
        return wa + a.sum() * (self.weight - self.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return self._op(x, self.approximation())
        # Exported as it would be computed in hardware: one binary layer per base, scaled and
        # summed. The front end refuses that sum (multi-base layers are not supported yet).
        b, a = abc_bases(self.weight, self.bases)
        out = None
        for bi, ai in zip(b, a, strict=True):
            y = self._op(x, _constant(bi)) * _constant(ai)
            out = y if out is None else out + y
        return out


class ABCLinear(_ABCLayer):
    """A dense layer (no bias) with ABC-Net's ``bases`` binary weight bases."""

    def __init__(self, in_features: int, out_features: int, bases: int):
        super().__init__((out_features, in_features), bases, F.linear)
        self.in_features, self.out_features = in_features, out_features


class ABCConv2d(_ABCLayer):
    """A 2-D convolution (no padding, stride 1, no bias) with ABC-Net's binary weight bases."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bases: int):
        super().__init__((out_channels, in_channels, kernel_size, kernel_size), bases, F.conv2d)


_LATENT = (QuantLinear, QuantConv2d, _ABCLayer)


def _hidden(m: Methods, n_in: int, n_out: int, kernel: int | None = None) -> nn.Module:
    # A hidden binary layer (dense, or conv with a kernel) with the methods' weights.
    if m.abc_bases > 1:
        return (ABCLinear(n_in, n_out, m.abc_bases) if kernel is None
                else ABCConv2d(n_in, n_out, kernel, m.abc_bases))
    quant = dict(bias=False, weight_bit_width=1, weight_quant=CommonWeightQuant)
    layer = (QuantLinear(n_in, n_out, **quant) if kernel is None
             else QuantConv2d(n_in, n_out, kernel, **quant))
    return layer if m.weight_scaling == "none" else ScaledBinary(layer, m.weight_scaling)


def _activation(channels: int, m: Methods) -> list[nn.Module]:
    mods: list[nn.Module] = []
    if m.binealnet:
        mods += [Shift(channels), nn.PReLU(channels), Shift(channels)]
    return mods + [ClipSTE(m.t_clip), QuantIdentity(act_quant=CommonActQuant, bit_width=1)]


def _dense_stack(m: Methods, width: int, hidden: list[int], num_classes: int, dropout: float,
                 eps: float) -> list[nn.Module]:
    # Hidden binary dense layers (BatchNorm + sign), then the integer scores layer.
    layers: list[nn.Module] = []
    for n in hidden:
        layers += [_hidden(m, width, n), nn.BatchNorm1d(n, eps=eps), *_activation(n, m)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = n
    return layers + [QuantLinear(width, num_classes, bias=False, weight_bit_width=1,
                                 weight_quant=CommonWeightQuant)]


class BinaryNet(nn.Module):
    """Common behaviour of the zoo's networks. ``score_fan_in`` is the number n of the final
    layer's inputs: the scores are integers in ``[-n, n]``."""

    def _init_weights(self) -> None:
        for mod in self.modules():
            if isinstance(mod, (QuantLinear, QuantConv2d)):
                # Small latent weights: signs flip easily early on. bnn_pynq's U(-1, 1) starts
                # at the clip limit and trained the digits TFC ~5 points worse here.
                nn.init.uniform_(mod.weight.data, -0.1, 0.1)

    def clip_weights(self, limit: float = 1.0) -> None:
        """Keep latent weights in [-limit, limit] (the STE passes no gradient outside) and
        PReLU slopes >= 0 (so each activation stays monotone and folds into a threshold).
        Call after every optimizer step."""
        for mod in self.modules():
            if isinstance(mod, _LATENT):
                mod.weight.data.clamp_(-limit, limit)
            elif isinstance(mod, nn.PReLU):
                mod.weight.data.clamp_(min=0.0)


class BinaryMLP(BinaryNet):
    """A binarized MLP: binarized input, binary hidden layers with BatchNorm + sign, and a
    final binary layer whose outputs are the integer scores (no TensorNorm, so they stay exact).

    The forward pass takes the input in ``[0, 1]`` (pixel * input_scale) and maps it to
    ``2x - 1`` before the binary input quantizer, as bnn_pynq's FC does (``2x - 2t`` for an
    ``input_threshold`` t other than 0.5; the front end folds either into one threshold).

    Parameters
    ----------
    in_features : int
        Inputs (pixels) per example; any input shape is flattened.
    hidden : list of int
        Widths of the hidden layers.
    num_classes : int
        Outputs of the final layer.
    dropout : float
        Dropout after each hidden activation (training only).
    methods : Methods, optional
        Training methods of the hidden layers; ``Methods()`` by default.
    input_threshold : float
        A pixel binarizes to +1 when ``pixel * input_scale >= input_threshold``: 0.5 is
        bnn_pynq's ``sign(2x - 1)``; about 0.1 keeps far more of Fashion-MNIST's shapes.
    """

    def __init__(self, in_features: int, hidden: list[int], num_classes: int,
                 dropout: float = 0.0, *, methods: Methods | None = None,
                 input_threshold: float = 0.5):
        super().__init__()
        if not 0.0 < input_threshold < 1.0:
            raise ValueError(f"input_threshold must be in (0, 1), got {input_threshold}")
        m = methods or Methods()
        self.in_features, self.methods = in_features, m
        self.input_threshold = float(input_threshold)
        self.features = nn.Sequential(
            QuantIdentity(act_quant=CommonActQuant, bit_width=1),
            *_dense_stack(m, in_features, hidden, num_classes, dropout, 1e-5))
        self.score_fan_in = self.features[-1].in_features
        self._init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = 2.0 * x.reshape(x.shape[0], -1) - torch.tensor([2.0 * self.input_threshold])
        return self.features(x)


class BinaryConvNet(BinaryNet):
    """A 1W1A conv net: valid (unpadded) binary convs with BatchNorm + sign and optional 2x2
    max-pooling, then binary dense layers, then the integer scores layer.

    As in bnn_pynq's CNV, the input is mapped to ``2x - 1`` and quantized to 8 bits (Q1.7), so
    the first conv multiplies integer levels by binary weights.

    Parameters
    ----------
    input_shape : tuple of int
        ``(H, W)`` (one channel) or ``(C, H, W)``, as the dataset stores its images.
    convs : list of (int, int, bool)
        Per conv layer: output channels, kernel size, whether a 2x2 max-pool follows.
    hidden : list of int
        Widths of the binary dense layers after the convs.
    num_classes : int
        Outputs of the final layer.
    dropout, methods
        As for :class:`BinaryMLP`.
    """

    def __init__(self, input_shape: tuple[int, ...], convs: list[tuple[int, int, bool]],
                 hidden: list[int], num_classes: int, dropout: float = 0.0, *,
                 methods: Methods | None = None):
        super().__init__()
        m = methods or Methods()
        if len(input_shape) not in (2, 3):
            raise ValueError(f"a conv net needs (H, W) or (C, H, W) images, got {input_shape}")
        self.chw = tuple(input_shape) if len(input_shape) == 3 else (1, *input_shape)
        self.methods = m
        c, h, w = self.chw
        feats: list[nn.Module] = [QuantIdentity(
            act_quant=CommonActQuant, bit_width=8, min_val=-1.0, max_val=1.0 - 2.0 ** -7,
            narrow_range=False, restrict_scaling_type=RestrictValueType.POWER_OF_TWO)]
        for out, k, pool in convs:
            feats += [_hidden(m, c, out, k), nn.BatchNorm2d(out, eps=1e-4), *_activation(out, m)]
            h, w, c = h - k + 1, w - k + 1, out
            if pool:
                feats.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            if min(h, w) < 1:
                raise ValueError(f"images of shape {tuple(input_shape)} are too small for "
                                 f"this network's convs {convs}")
        self.conv_features = nn.Sequential(*feats)
        self.linear_features = nn.Sequential(
            *_dense_stack(m, c * h * w, hidden, num_classes, dropout, 1e-4))
        self.score_fan_in = self.linear_features[-1].in_features
        self._init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_features(2.0 * x.reshape(x.shape[0], *self.chw) - torch.tensor([1.0]))
        return self.linear_features(x.reshape(x.shape[0], -1))


def _mlp(hidden: list[int]):
    def build(input_shape, num_classes, methods=None, dropout=0.0, input_threshold=0.5):
        return BinaryMLP(math.prod(input_shape), hidden, num_classes, dropout, methods=methods,
                         input_threshold=input_threshold)
    return build


# bnn_pynq CNV: 3x3 convs 64-64-pool-128-128-pool-256-256 (32x32 -> 1x1), FC 512-512.
# LeNet-5-like for 28x28: 8-bit input -> conv5x5 32 -> pool -> conv5x5 64 -> pool (4x4x64) ->
# FC 512. Widths are multiples of 32 so every layer folds evenly.
_CONV_NETS = {"cnv": ([(64, 3, False), (64, 3, True), (128, 3, False), (128, 3, True),
                       (256, 3, False), (256, 3, False)], [512, 512]),
              "lenet": ([(32, 5, True), (64, 5, True)], [512])}


def _conv_net(name: str):
    convs, hidden = _CONV_NETS[name]

    def build(input_shape, num_classes, methods=None, dropout=0.0, input_threshold=0.5):
        if input_threshold != 0.5:
            raise ValueError("conv nets take the 8-bit pixels themselves: input_threshold "
                             "applies to the MLPs' binarized input only")
        return BinaryConvNet(input_shape, convs, hidden, num_classes, dropout, methods=methods)
    return build


#: name -> ``build(input_shape, num_classes, methods, dropout, input_threshold)``. ``tfc``,
#: ``sfc``, ``lfc``: bnn_pynq's MLPs (3x64, 3x256, 3x1024; binarized input of any size).
#: ``cnv``: bnn_pynq's CNV for 3x32x32. ``lenet``: a LeNet-like net for 28x28 (``_CONV_NETS``).
MODELS = {"tfc": _mlp([64, 64, 64]), "sfc": _mlp([256, 256, 256]),
          "lfc": _mlp([1024, 1024, 1024]), "cnv": _conv_net("cnv"),
          "lenet": _conv_net("lenet")}


def build_model(name: str, input_shape: int | tuple[int, ...], num_classes: int,
                methods: Methods | None = None, dropout: float = 0.0,
                input_threshold: float = 0.5) -> BinaryNet:
    """Build a zoo model for inputs of ``input_shape`` (an int means flat inputs).

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`.
    input_shape : int or tuple of int
        One example's shape as the dataset stores it (e.g. ``(28, 28)``, ``(3, 32, 32)``).
    num_classes : int
        Number of scores.
    methods, dropout, input_threshold
        As for :class:`BinaryMLP` (conv nets have no input threshold: it must stay 0.5).

    Raises
    ------
    ValueError
        For an unknown name or an input shape the model cannot take.
    """
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    try:
        build = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}") from None
    return build(shape, num_classes, methods, dropout, input_threshold)
