"""The sliding-window unit (SWU): im2col of a pixel stream for k x k convolution and pooling.

The input is a frame of ``H x W`` pixels in raster order, each pixel ``C`` elements (bits, or
signed levels of ``elem_bits`` bits for an integer-input layer) cut into ``B = C/e`` beats of
``e`` elements (the producer's fold: the previous MVTU's PE, or the core's input beat). For
every output position ``(oy, ox)`` in raster order the unit emits the receptive field as
``k*k*B`` beats in ``(ky, kx, b)`` order, so a window's vector is in ``(ky, kx, c)`` order
(:func:`bnnflow.packing.conv_weight_matrix` reorders the weights to match). Positions outside
the image take the pad value: every element bit 1 (+1) or 0 (-1, or integer level 0).

Design choices:

* Line buffer: ``R = k + s`` image rows in one :class:`~amaranth.lib.memory.Memory` (block RAM),
  used as a ring of rows that runs on across frames. The writer fills the next free row while
  the reader works on the ``k`` rows of its window, and keeps ``s`` rows ahead, so in steady
  state the reader never waits for the row it moves to next.
* Bookkeeping is by whole rows: ``done`` counts complete rows not yet released by the reader.
  The writer takes a beat while ``done < R`` (a slot is free for the row it is writing); the
  reader starts an output row once the rows it needs are complete, and releases the rows it
  has passed when it moves on (all remaining rows of the frame after the last output row, so a
  frame's unused bottom rows are consumed too).
* The read side is a two-stage pipeline (address, then memory data) under one enable,
  ``en = ~o.valid | o.ready``, like the MVTU; ``i.ready`` and ``o.valid`` are registers or
  functions of registers, so no combinational path crosses the unit.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .mvtu import beat_layout

__all__ = ["SlidingWindow"]


class SlidingWindow(wiring.Component):
    """Line-buffered k x k sliding window with stride and constant padding.

    Parameters
    ----------
    in_shape
        ``(C, H, W)`` of the input frame.
    kernel, stride, padding
        Square window, as in PyTorch.
    pad_bit
        Bit value of every padded element bit: 1 for a +1 pad, 0 for -1 (or integer level 0).
    beat_elems
        Elements per beat ``e``; must divide ``C``. Defaults to ``C`` (one pixel per beat).
    elem_bits
        Bits per element.

    Attributes
    ----------
    i_stream : In(stream.Signature(beat_layout(beat_elems * elem_bits)))
        Input pixels (``last`` is ignored; the beat count delimits rows and frames).
    o_stream : Out(stream.Signature(beat_layout(beat_elems * elem_bits)))
        ``k*k*B`` beats per output position, ``last`` on the final beat of each window.
    """

    def __init__(self, in_shape, kernel: int, stride: int = 1, padding: int = 0,
                 pad_bit: int = 0, beat_elems: int | None = None, elem_bits: int = 1):
        c, h, w = (int(v) for v in in_shape)
        beat_elems = c if beat_elems is None else beat_elems
        if beat_elems < 1 or c % beat_elems:
            raise ValueError(f"{beat_elems} elements per beat do not divide {c} channels")
        self.c, self.h, self.w = c, h, w
        self.k, self.s, self.p, self.pad_bit = kernel, stride, padding, pad_bit
        self.b = c // beat_elems
        self.width = beat_elems * elem_bits
        self.oh = (h + 2 * padding - kernel) // stride + 1
        self.ow = (w + 2 * padding - kernel) // stride + 1
        if min(self.oh, self.ow) < 1:
            raise ValueError(f"window {kernel}/{stride}/{padding} does not fit {in_shape}")
        self.rows = kernel + stride
        self.row_words = w * self.b
        self.depth = self.rows * self.row_words
        super().__init__({
            "i_stream": In(stream.Signature(beat_layout(self.width))),
            "o_stream": Out(stream.Signature(beat_layout(self.width))),
        })

    @property
    def window_beats(self) -> int:
        """Beats per output position, ``k*k*B``."""
        return self.k * self.k * self.b

    @property
    def cycles(self) -> int:
        """Output beats (cycles at best) per frame, ``OH*OW*k*k*B``."""
        return self.oh * self.ow * self.window_beats

    def elaborate(self, platform):
        m = Module()
        i, o = self.i_stream, self.o_stream
        k, s, p, h, w, nb = self.k, self.s, self.p, self.h, self.w, self.b
        rw, depth = self.row_words, self.depth

        m.submodules.lines = lines = Memory(shape=unsigned(self.width), depth=depth, init=[])
        wr = lines.write_port()
        rd = lines.read_port()

        done = Signal(range(self.rows + 1))  # complete rows the reader has not released
        row_done = Signal()
        release = Signal(range(self.rows + 1))  # rows the reader releases this cycle

        # Writer: consecutive beats go to consecutive addresses of the row ring.
        waddr = Signal(range(depth))
        wpos = Signal(range(rw))
        take = Signal()
        m.d.comb += [
            i.ready.eq(done < self.rows),
            take.eq(i.valid & i.ready),
            wr.addr.eq(waddr), wr.data.eq(i.p.data), wr.en.eq(take),
            row_done.eq(take & (wpos == rw - 1)),
        ]
        with m.If(take):
            m.d.sync += [
                waddr.eq(Mux(waddr == depth - 1, 0, waddr + 1)),
                wpos.eq(Mux(wpos == rw - 1, 0, wpos + 1)),
            ]
        m.d.sync += done.eq(done + row_done - release)

        # Reader, stage S0: counters over (oy, ox, ky, kx, b) and the read address.
        en = Signal()
        m.d.comb += en.eq(~o.valid | o.ready)
        b = Signal(range(nb))
        kx, ky = Signal(range(k)), Signal(range(k))
        ox, oy = Signal(range(self.ow)), Signal(range(self.oh))
        ix0 = Signal(range(-p, w + s + 1), init=-p)  # input column of the window's kx = 0
        iy0 = Signal(range(-p, h + s + 1), init=-p)
        top = Signal(range(depth))  # address of input row `low`, the first row still held
        low = Signal(range(h + s + 1))
        span = Signal(range(-h - s - k, h + s + k + 1))
        bottom = iy0 + k - 1
        last_row = oy == self.oh - 1
        m.d.comb += [
            low.eq(Mux(iy0 < 0, 0, iy0)),
            span.eq(Mux(last_row, h, Mux(bottom > h - 1, h - 1, bottom) + 1) - low),
        ]
        issue = Signal()
        m.d.comb += issue.eq(en & (done >= span))

        iy, ix = iy0 + ky, ix0 + kx
        pad = Signal()
        m.d.comb += pad.eq((iy < 0) | (iy >= h) | (ix < 0) | (ix >= w))
        row = Signal(range(2 * depth))
        m.d.comb += [
            row.eq(top + (iy - low) * rw),  # valid when not padded: 0 <= iy - low < k
            rd.addr.eq(Mux(row >= depth, row - depth, row) + ix * nb + b),
            rd.en.eq(en),
        ]

        last_b, last_kx, last_ky = b == nb - 1, kx == k - 1, ky == k - 1
        last_ox = ox == self.ow - 1
        win_last = last_b & last_kx & last_ky
        next_low = Signal.like(low)
        m.d.comb += next_low.eq(Mux(iy0 + s < 0, 0, iy0 + s))
        with m.If(issue & win_last & last_ox):
            m.d.comb += release.eq(Mux(last_row, h, next_low) - low)
        new_top = Signal(range(2 * depth))
        m.d.comb += new_top.eq(top + release * rw)
        with m.If(issue):
            m.d.sync += b.eq(Mux(last_b, 0, b + 1))
            with m.If(last_b):
                m.d.sync += kx.eq(Mux(last_kx, 0, kx + 1))
            with m.If(last_b & last_kx):
                m.d.sync += ky.eq(Mux(last_ky, 0, ky + 1))
            with m.If(win_last):
                m.d.sync += [
                    ox.eq(Mux(last_ox, 0, ox + 1)),
                    ix0.eq(Mux(last_ox, -p, ix0 + s)),
                ]
            with m.If(win_last & last_ox):
                m.d.sync += [
                    oy.eq(Mux(last_row, 0, oy + 1)),
                    iy0.eq(Mux(last_row, -p, iy0 + s)),
                    top.eq(Mux(new_top >= depth, new_top - depth, new_top)),
                ]

        # S1: the memory word (or the pad value) and its flags; then the output register.
        s1_valid, s1_pad, s1_last = Signal(), Signal(), Signal()
        pad_word = Const((1 << self.width) - 1 if self.pad_bit else 0, self.width)
        with m.If(en):
            m.d.sync += [
                s1_valid.eq(issue), s1_pad.eq(pad), s1_last.eq(win_last),
                o.valid.eq(s1_valid),
                o.p.data.eq(Mux(s1_pad, pad_word, rd.data)),
                o.p.last.eq(s1_last),
            ]
        return m
