"""Pixel input of an integer-input network: 8-bit pixels in, signed input levels out.

The compiled hardware takes the pixels themselves (one byte each on ``s_axis``), not
pre-computed levels, so the host sends the same bytes whatever the input quantizer; a small ROM
holding :attr:`bnnflow.ir.InputSpec.levels` maps each pixel to its level here.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from bnnflow import packing

from .mvtu import beat_layout

__all__ = ["PixelLevels"]


class PixelLevels(wiring.Component):
    """Map each pixel of a beat to its signed input level through a ROM.

    Parameters
    ----------
    levels
        Level of every pixel value ``0..len(levels)-1``.
    pixels
        Pixels per beat.
    pixel_bits
        Bits per pixel on the input (:func:`bnnflow.packing.pixel_bits`); values above
        ``len(levels)-1`` are not allowed.

    Attributes
    ----------
    i_stream : In(stream.Signature(beat_layout(pixels * pixel_bits)))
        Pixel ``j`` of a beat in bits ``j*pixel_bits`` upwards.
    o_stream : Out(stream.Signature(beat_layout(pixels * level_bits)))
        Level ``j`` in bits ``j*level_bits`` upwards, ``level_bits =
        packing.level_bits(levels)``; ``last`` passes through.
    """

    def __init__(self, levels, pixels: int, pixel_bits: int = 8):
        self.levels = tuple(int(v) for v in levels)
        self.pixels, self.pixel_bits = pixels, pixel_bits
        self.level_bits = packing.level_bits(self.levels)
        super().__init__({
            "i_stream": In(stream.Signature(beat_layout(pixels * pixel_bits))),
            "o_stream": Out(stream.Signature(beat_layout(pixels * self.level_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        m.submodules.rom = rom = Memory(shape=signed(self.level_bits), depth=len(self.levels),
                                        init=self.levels)
        looked_up = []
        for j in range(self.pixels):
            port = rom.read_port(domain="comb")  # a LUT ROM: 2**pixel_bits small words
            m.d.comb += port.addr.eq(i.p.data[j * self.pixel_bits:(j + 1) * self.pixel_bits])
            looked_up.append(port.data)
        m.d.comb += i.ready.eq(~o.valid | o.ready)
        with m.If(o.valid & o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(i.valid & i.ready):
            m.d.sync += [o.valid.eq(1), o.p.data.eq(Cat(looked_up)), o.p.last.eq(i.p.last)]
        return m
