"""The accelerator core: input bits or pixels in, class and scores out, over AXI4-Stream ports.

``s_axis ─► [PixelLevels] ─► layer 0 ─► … ─► MVTU (scores layer) ─► Argmax ─► m_axis``

A dense layer is an MVTU; a conv layer a :class:`~bnnflow.hw.swu.SlidingWindow` feeding an
MVTU that runs once per output pixel; a max-pool a :class:`~bnnflow.hw.pool.MaxPoolUnit`.
Between conv/pool layers activations travel as pixels in raster order, each cut into ``C/PE``
beats of the producing MVTU's ``PE`` channels; a dense layer after them takes that HWC order,
its weight columns permuted once, in :func:`bnnflow.packing.hwc_dense_weights`.

Frame format
------------
* Input: one frame is the network's binary input vector of ``n`` bits (bit 1 = +1), LSB first
  in ``ceil(n/in_width)`` beats of ``data``: bit ``i`` of the vector is bit ``i % in_width`` of
  beat ``i // in_width``; pad bits of the last beat are ignored. ``last`` should be 1 on the
  final beat (AXI4-Stream), but the core does not look at it: the beat count alone defines a
  frame, so a sender must never send a short frame.
* Integer-input networks take *pixels*, not bits: ``pixel_bits`` (8) bits each, ``in_width /
  pixel_bits`` pixels per beat, in :func:`bnnflow.packing.frame_pixels` order (HWC when the
  first layer is a conv); a ROM (:class:`~bnnflow.hw.pixels.PixelLevels`) maps them to
  levels. The pixels per beat must divide the first conv's channels.
* A binary-input conv network takes its bits in HWC order, ``in_width`` per beat, which must
  divide the first conv's channels.
* Output: exactly one beat per frame, ``cls`` the argmax of the scores (first maximum on ties),
  ``scores[k] = 2*popcount_k - n`` of the final layer, and ``last = 1``.

The result is bit-exact with ``bnnflow.reference.run(net, pixels)`` (or ``run(net, bits,
bits=True)`` for binary inputs).
"""

from __future__ import annotations

from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from bnnflow import packing
from bnnflow.folding import Folding
from bnnflow.ir import Conv, Dense, MaxPool, Network

from .argmax import Argmax, result_layout, score_width
from .mvtu import MVTU, beat_layout
from .pixels import PixelLevels
from .pool import MaxPoolUnit
from .swu import SlidingWindow

__all__ = [
    "input_layout", "output_layout", "score_bits", "latency", "stream_elems", "BnnCore",
    "generate_verilog",
]


def stream_elems(net: Network, in_width: int) -> int:
    """Input elements (bits, or pixels of an integer-input network) per ``s_axis`` beat.

    Raises
    ------
    ValueError
        If the core cannot take that beat width for this network.
    """
    if net.input.binary:
        elems = in_width
    else:
        pb = packing.pixel_bits(net.input.pixel_max)
        if in_width % pb:
            raise ValueError(f"input beats of {in_width} bits do not hold whole {pb}-bit pixels")
        elems = in_width // pb
    first = net.layers[0]
    if isinstance(first, MaxPool):
        raise ValueError(f"layer {first.name}: a max-pool cannot be the first layer")
    if isinstance(first, Conv) and first.in_shape[0] % elems:
        raise ValueError(f"layer {first.name}: {elems} input elements per beat do not divide "
                         f"its {first.in_shape[0]} channels (choose in_width accordingly)")
    if net.layers[-1].integer_input:
        raise ValueError(f"layer {net.layers[-1].name}: an integer-input scores layer is not "
                         "supported")
    return elems


def input_layout(in_width: int) -> data.StructLayout:
    """Payload of ``s_axis``: ``{"data": unsigned(in_width), "last": unsigned(1)}``."""
    return beat_layout(in_width)


def score_bits(net: Network) -> int:
    """Signed bits of a score of the final layer, enough for every value in ``[-n, n]``."""
    return score_width(net.layers[-1].in_features)


def output_layout(net: Network) -> data.StructLayout:
    """Payload of ``m_axis``.

    Returns
    -------
    data.StructLayout
        ``{"cls": unsigned(max(1, ceil(log2 C))), "scores": ArrayLayout(signed(score_bits(net)),
        C), "last": unsigned(1)}`` for ``C = net.num_classes``.
    """
    return result_layout(net.num_classes, net.layers[-1].in_features)


def latency(net: Network, folding: Folding) -> int:
    """Cycles from the transfer of a frame's last input beat to the transfer of its result.

    For dense networks. Holds when the pipeline is idle before the frame and ``m_axis`` is
    ready. Each layer adds
    :attr:`MVTU.LATENCY` plus ``NF*SF - 1`` steps from its first to its last output beat
    (the next layer starts only once it has the whole vector); the argmax adds one register.
    """
    total = 1
    for layer in net.layers:
        f = folding[layer.name]
        total += MVTU.LATENCY + (layer.out_features // f.pe) * (layer.in_features // f.simd) - 1
    return total


class BnnCore(wiring.Component):
    """A streaming binarized-network accelerator: one MVTU per layer, then an argmax.

    Parameters
    ----------
    net
        The network; weights and thresholds become initialised on-chip memories.
    folding
        PE/SIMD per layer; validated against ``net``. The core sustains one frame per
        ``folding.cycles_per_frame(net)`` cycles when the input can keep up
        (``ceil(n/in_width)`` beats per frame at most that many) and ``m_axis`` is ready.
    in_width
        Bits per ``s_axis`` beat.

    Attributes
    ----------
    s_axis : In(stream.Signature(input_layout(in_width)))
        Input frames (see the module documentation for the format).
    m_axis : Out(stream.Signature(output_layout(net)))
        One result beat per frame.
    """

    def __init__(self, net: Network, folding: Folding, in_width: int = 8):
        folding.validate(net)
        self.net, self.folding, self.in_width = net, folding, in_width
        self.elems = stream_elems(net, in_width)
        #: Bits of one frame on ``s_axis`` (pixels count ``pixel_bits`` each).
        self.n_inputs = net.input.size
        if not net.input.binary:
            self.n_inputs *= packing.pixel_bits(net.input.pixel_max)
        super().__init__({
            "s_axis": In(stream.Signature(input_layout(in_width))),
            "m_axis": Out(stream.Signature(output_layout(net))),
        })

    def elaborate(self, platform):
        m = Module()
        net = self.net
        upstream, elems, eb = wiring.flipped(self.s_axis), self.elems, 1
        if not net.input.binary:
            m.submodules.pixels = pixels = PixelLevels(
                net.input.levels, elems, packing.pixel_bits(net.input.pixel_max))
            wiring.connect(m, upstream, pixels.i_stream)
            upstream, eb = pixels.o_stream, pixels.level_bits
        pixel_order = False  # the stream carries (C, H, W) activations as HWC pixels
        for index, (layer, shape) in enumerate(zip(net.layers, net.shapes(), strict=False)):
            if isinstance(layer, MaxPool):
                block = MaxPoolUnit(layer.in_shape, layer.kernel, layer.stride, elems)
                m.submodules[f"layer{index}"] = block
                wiring.connect(m, upstream, block.i_stream)
                upstream = block.o_stream
                continue
            if isinstance(layer, Conv):
                swu = SlidingWindow(layer.in_shape, layer.kernel, layer.stride, layer.padding,
                                    int(layer.pad_value > 0), elems, eb)
                m.submodules[f"window{index}"] = swu
                wiring.connect(m, upstream, swu.i_stream)
                upstream, pixel_order = swu.o_stream, True
                weights = packing.conv_weight_matrix(layer)
            elif pixel_order:
                weights = packing.hwc_dense_weights(layer.weights, shape)
                pixel_order = False
            else:
                weights = layer.weights
            f = self.folding[layer.name]
            matrix = Dense(layer.name, weights, layer.thresholds, layer.integer_input)
            mvtu = MVTU(matrix, f.pe, f.simd, elems * eb, eb, net.input.max_level)
            m.submodules[f"layer{index}"] = mvtu
            wiring.connect(m, upstream, mvtu.i_stream)
            upstream, elems, eb = mvtu.o_stream, f.pe, 1
        final = self.net.layers[-1]
        m.submodules.argmax = argmax = Argmax(
            final.out_features, self.folding[final.name].pe, final.in_features)
        wiring.connect(m, upstream, argmax.i_stream)
        wiring.connect(m, argmax.o_stream, wiring.flipped(self.m_axis))
        return m


def generate_verilog(net: Network, folding: Folding, path, in_width: int = 8,
                     name: str = "bnn_core") -> None:
    """Write the core as a Verilog module.

    Parameters
    ----------
    net, folding, in_width
        As for :class:`BnnCore`.
    path
        Output file.
    name
        Verilog module name. The ports are ``clk``, ``rst``, ``s_axis__payload``,
        ``s_axis__valid``, ``s_axis__ready``, ``m_axis__payload``, ``m_axis__valid`` and
        ``m_axis__ready``; payloads are packed LSB first in layout field order.
    """
    core = BnnCore(net, folding, in_width)
    Path(path).write_text(verilog.convert(core, name=name))
