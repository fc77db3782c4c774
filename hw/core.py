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
from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from bnnflow import packing
from bnnflow.folding import Folding
from bnnflow.ir import Conv, Dense, MaxPool, Network

from .argmax import Argmax, result_layout, score_width
from .fifo import RowFifo
from .mvtu import MVTU, beat_layout
from .pixels import PixelLevels
from .pool import MaxPoolUnit
from .resets import local_reset
from .storage import ebr_count, port_columns, rom_blocks, weight_storage
from .swu import SlidingWindow

__all__ = [
    "input_layout", "output_layout", "score_bits", "latency", "stream_elems", "storage_plan",
    "BnnCore", "generate_verilog",
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


def latency(net: Network, folding: Folding, in_width: int = 8) -> int:
    """Cycles from the transfer of a frame's last input beat to the transfer of its result.

    For dense networks. Holds when the pipeline is idle before the frame and ``m_axis`` is
    ready. Each layer adds its MVTU's :attr:`~MVTU.latency` (which grows with the adder tree
    of its SIMD lanes, and by a cycle where its steps outnumber its input beats) plus
    ``NF*SF - 1`` steps from its first to its last output beat (the next layer starts only
    once it has the whole vector); the argmax adds its input register, one register per
    level of its compare tree over the final layer's PE lanes, and its output register.
    """
    total = 1 + Argmax.stage_count(folding[net.layers[-1].name].pe)
    width = stream_elems(net, in_width)
    for layer in net.layers:
        f = folding[layer.name]
        steps = (layer.out_features // f.pe) * (layer.in_features // f.simd)
        beats = -(-layer.in_features // width)
        total += MVTU.pipeline_latency(f.simd, beats, steps) + steps - 1
        width = f.pe
    return total


def storage_plan(net: Network, folding: Folding, in_width: int = 8,
                 ebr_budget: int | None = None) -> tuple[dict[str, str], int]:
    """Weight storage of every MVTU, and the block RAMs (DP16KD) the core is expected to use.

    Each layer takes :func:`~bnnflow.hw.storage.weight_storage` of its fold depth. Block RAM
    gives a lane at most 36 bits per DP16KD whatever the depth, so shallow wide layers can need
    more blocks than the device has; with an ``ebr_budget`` the block-RAM layers with the
    fewest words per lane move to LUT ROMs, one by one, until the estimate fits (or none is
    left). The estimate counts weight and threshold memories and sliding-window line buffers,
    each at its cheapest DP16KD aspect ratio; Yosys may put small ones in LUTs instead.

    Parameters
    ----------
    net, folding, in_width
        As for :class:`BnnCore`.
    ebr_budget
        DP16KD blocks available to the core (208 on an LFE5U-85F), or ``None`` for no limit.

    Returns
    -------
    storages : dict of str to str
        Layer name -> ``"const"``, ``"lut"`` or ``"bram"``.
    ebr : int
        Estimated DP16KD blocks with that plan.
    """
    elems = stream_elems(net, in_width)
    eb = 1 if net.input.binary else packing.level_bits(net.input.levels)
    fixed, weight_ebr, depth, storages = 0, {}, {}, {}
    for layer in net.layers:
        if isinstance(layer, (Conv, MaxPool)):
            c, _, w = layer.in_shape
            rows = layer.kernel + layer.stride
            # The line buffer, in port_columns (SlidingWindow).
            fixed += sum(ebr_count(hi - lo, rows * w * (c // elems))
                         for lo, hi in port_columns(elems * eb))
        if isinstance(layer, MaxPool):
            continue
        f = folding[layer.name]
        nf, sf = layer.out_channels // f.pe, layer.fan_in // f.simd
        depth[layer.name] = nf * sf
        storages[layer.name] = weight_storage(nf * sf)
        weight_ebr[layer.name] = rom_blocks(f.pe * f.simd, nf * sf)
        if layer.thresholds is not None and weight_storage(nf) == "bram":
            fixed += rom_blocks(f.pe * (layer.fan_in.bit_length() + 4), nf)  # upper bound
        elems, eb = f.pe, 1

    def total() -> int:
        return fixed + sum(n for name, n in weight_ebr.items() if storages[name] == "bram")

    if ebr_budget is not None:
        for name in sorted(depth, key=lambda n: (depth[n], -weight_ebr[n])):
            if total() <= ebr_budget:
                break
            if storages[name] == "bram":
                storages[name] = "lut"
    return storages, total()


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
    ebr_budget
        Block RAMs available for weights (see :func:`storage_plan`); ``None`` for no limit.

    Attributes
    ----------
    s_axis : In(stream.Signature(input_layout(in_width)))
        Input frames (see the module documentation for the format).
    m_axis : Out(stream.Signature(output_layout(net)))
        One result beat per frame.
    """

    def __init__(self, net: Network, folding: Folding, in_width: int = 8,
                 ebr_budget: int | None = None):
        folding.validate(net)
        self.net, self.folding, self.in_width = net, folding, in_width
        self.elems = stream_elems(net, in_width)
        #: Weight storage per layer name, and the estimated DP16KD count (:func:`storage_plan`).
        self.storages, self.ebr_estimate = storage_plan(net, folding, in_width, ebr_budget)
        #: Reset request of the blocks' reset tree (:mod:`bnnflow.hw.resets`): already
        #: registered once (the tree's root), driven by :class:`~bnnflow.hw.hostlink.HostTop`.
        self.reset_req = Signal(name="core_reset_req")
        #: Fewest cycles between two results (:class:`~bnnflow.hw.hostlink.HostLink` sizes
        #: REPLAY's CRC by it): no layer issues a frame faster than its own cycles.
        self.result_spacing = folding.cycles_per_frame(net)
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
            pixels = PixelLevels(net.input.levels, elems, packing.pixel_bits(net.input.pixel_max))
            local_reset(m, "pixels", pixels, self.reset_req)
            wiring.connect(m, upstream, pixels.i_stream)
            upstream, eb = pixels.o_stream, pixels.level_bits
        pixel_order = False  # the stream carries (C, H, W) activations as HWC pixels
        for index, (layer, shape) in enumerate(zip(net.layers, net.shapes(), strict=False)):
            if index > 0 and isinstance(layer, (Conv, MaxPool)):
                upstream = _row_fifo(m, upstream, layer, elems, f"fifo{index}", self.reset_req)
            if isinstance(layer, MaxPool):
                block = MaxPoolUnit(layer.in_shape, layer.kernel, layer.stride, elems)
                local_reset(m, f"layer{index}", block, self.reset_req)
                wiring.connect(m, upstream, block.i_stream)
                upstream = block.o_stream
                continue
            if isinstance(layer, Conv):
                swu = SlidingWindow(layer.in_shape, layer.kernel, layer.stride, layer.padding,
                                    int(layer.pad_value > 0), elems, eb)
                local_reset(m, f"window{index}", swu, self.reset_req)
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
            mvtu = MVTU(matrix, f.pe, f.simd, elems * eb, eb, net.input.max_level,
                        self.storages[layer.name])
            local_reset(m, f"layer{index}", mvtu, self.reset_req)
            wiring.connect(m, upstream, mvtu.i_stream)
            upstream, elems, eb = mvtu.o_stream, f.pe, 1
        final = self.net.layers[-1]
        argmax = Argmax(final.out_features, self.folding[final.name].pe, final.in_features)
        local_reset(m, "argmax", argmax, self.reset_req)
        wiring.connect(m, upstream, argmax.i_stream)
        wiring.connect(m, argmax.o_stream, wiring.flipped(self.m_axis))
        return m


#: Largest stream FIFO in front of a window or pool, in beats.
MAX_FIFO_DEPTH = 1024


def fifo_depth(layer, elems: int) -> int:
    """Beats of the FIFO in front of a sliding window or max-pool: one row of its input.

    A window or pool takes its input in bursts (it stops while it emits the windows of a row,
    or while the next block is busy), and the producer before it would stall during them; a
    row of buffering lets the producer run at its own steady rate.
    """
    c, _, w = layer.in_shape
    return max(4, min(MAX_FIFO_DEPTH, w * -(-c // elems)))


def _row_fifo(m: Module, upstream, layer, elems: int, name: str, reset_req):
    """Put a :func:`fifo_depth` :class:`~bnnflow.hw.fifo.RowFifo` after ``upstream``;
    returns its output stream."""
    fifo = RowFifo(len(upstream.payload.data), fifo_depth(layer, elems))
    local_reset(m, name, fifo, reset_req)
    wiring.connect(m, upstream, fifo.i_stream)
    return fifo.o_stream


def generate_verilog(net: Network, folding: Folding, path, in_width: int = 8,
                     name: str = "bnn_core", ebr_budget: int | None = None) -> None:
    """Write the core as a Verilog module.

    Parameters
    ----------
    net, folding, in_width, ebr_budget
        As for :class:`BnnCore`.
    path
        Output file.
    name
        Verilog module name. The ports are ``clk``, ``rst``, ``s_axis__payload``,
        ``s_axis__valid``, ``s_axis__ready``, ``m_axis__payload``, ``m_axis__valid`` and
        ``m_axis__ready``; payloads are packed LSB first in layout field order.
    """
    core = BnnCore(net, folding, in_width, ebr_budget)
    Path(path).write_text(verilog.convert(core, name=name))
