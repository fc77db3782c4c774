"""The accelerator core: input bits in, class and scores out, over AXI4-Stream-like ports.

``s_axis ─► MVTU (layer 0) ─► … ─► MVTU (scores layer) ─► Argmax ─► m_axis``

Frame format
------------
* Input: one frame is the network's binary input vector of ``n`` bits (bit 1 = +1), LSB first
  in ``ceil(n/in_width)`` beats of ``data``: bit ``i`` of the vector is bit ``i % in_width`` of
  beat ``i // in_width``; pad bits of the last beat are ignored. ``last`` should be 1 on the
  final beat (AXI4-Stream), but the core does not look at it: the beat count alone defines a
  frame, so a sender must never send a short frame.
* Output: exactly one beat per frame, ``cls`` the argmax of the scores (first maximum on ties),
  ``scores[k] = 2*popcount_k - n`` of the final layer, and ``last = 1``.

The result is bit-exact with ``bnnflow.reference.run(net, bits, bits=True)``.
"""

from __future__ import annotations

from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from bnnflow.folding import Folding
from bnnflow.ir import Network

from .argmax import Argmax, result_layout, score_width
from .mvtu import MVTU, beat_layout

__all__ = [
    "input_layout", "output_layout", "score_bits", "latency", "BnnCore", "generate_verilog",
]


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

    Holds when the pipeline is idle before the frame and ``m_axis`` is ready. Each layer adds
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
        self.n_inputs = net.input.size
        super().__init__({
            "s_axis": In(stream.Signature(input_layout(in_width))),
            "m_axis": Out(stream.Signature(output_layout(net))),
        })

    def elaborate(self, platform):
        m = Module()
        upstream, width = wiring.flipped(self.s_axis), self.in_width
        for index, layer in enumerate(self.net.layers):
            f = self.folding[layer.name]
            mvtu = MVTU(layer, f.pe, f.simd, width)
            m.submodules[f"layer{index}"] = mvtu
            wiring.connect(m, upstream, mvtu.i_stream)
            upstream, width = mvtu.o_stream, mvtu.out_width
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
