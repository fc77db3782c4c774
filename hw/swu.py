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
* The read side keeps its ring address incrementally: every step of the walk over
  ``(oy, ox, ky, kx, b)`` moves it by one of five constants, so no multiplier or long address
  sum sits between two registers. Only the issue stage waits, for a credit (a free entry of the
  small output queue) and for the rows it needs; the read pipeline behind it never stalls, and
  ``i.ready`` and ``o.valid`` are registers or functions of registers, so no combinational
  path crosses the unit.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring

from .mvtu import beat_ports, credit_issue, output_queue, ring_memory, wrap_counter

__all__ = ["SlidingWindow", "QUEUE_DEPTH"]

#: Entries of the output queue: a credit comes back five cycles after its beat was issued
#: (issue, memory read, data register, queue, refund), so seven keep one beat per cycle.
QUEUE_DEPTH = 7


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
        super().__init__(beat_ports(self.width))

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

        done = Signal(range(self.rows + 1))  # complete rows the reader has not released
        row_done = Signal()
        release = Signal(range(self.rows + 1))  # rows the reader releases this cycle

        # Writer: consecutive beats go to consecutive addresses of the row ring. A taken beat
        # is written a cycle later, from registers, so whatever feeds the window (a row FIFO's
        # block RAM across the chip) ends at a flip-flop rather than at this block RAM's data
        # pins. A row counts as done once its last beat is written; until then `w_row` holds
        # it back from the reader but not from `ready`, which must see every row taken.
        waddr = Signal(range(depth))
        wpos = Signal(range(rw))
        take = Signal()
        w_addr = Signal(range(depth), reset_less=True)
        w_data = Signal(self.width, reset_less=True)
        w_en, w_row = Signal(), Signal()
        m.d.comb += [
            i.ready.eq(Mux(w_row, done < self.rows - 1, done < self.rows)),
            take.eq(i.valid & i.ready),
            row_done.eq(take & (wpos == rw - 1)),
        ]
        m.d.sync += [w_addr.eq(waddr), w_data.eq(i.p.data), w_en.eq(take), w_row.eq(row_done)]
        with m.If(take):
            m.d.sync += [
                waddr.eq(Mux(waddr == depth - 1, 0, waddr + 1)),
                wpos.eq(Mux(wpos == rw - 1, 0, wpos + 1)),
            ]
        m.d.sync += done.eq(done + w_row - release)

        # Reader. Everything the read address needs is kept incrementally: the walk over
        # (oy, ox, ky, kx, b) moves the ring address by one of five constants (next beat, next
        # window row, next window, next output row, next frame), so S0 is one add and a wrap,
        # with no multiplier. The rows an output row needs and the rows it releases depend on
        # `oy` alone and come from tables.
        ow, oh = self.ow, self.oh
        ix0 = Signal(range(-p, w + s + 1), init=-p)  # input column of the window's kx = 0
        iy0 = Signal(range(-p, h + s + 1), init=-p)
        raddr = Signal(range(depth), init=self._address(0, 0, 0, 0, 0))
        need_tab, release_tab = self._row_tables()

        # Only S0 waits: it issues a beat with a credit, a free entry of the output queue, so
        # the read pipeline behind it runs every cycle.
        queue = output_queue(m, o, QUEUE_DEPTH)
        rows_there = Signal()  # the rows the next window row needs are written
        issue = credit_issue(m, queue, rows_there)

        # The walk's counters keep their wrap flags in registers (wrap_counter), so the address
        # step below is chosen by flip-flops, then added in two parallel carry chains.
        row_end, win_last, frame_end = Signal(), Signal(), Signal()
        b, last_b, *_ = wrap_counter(m, "b", nb, issue)
        kx, last_kx, *_ = wrap_counter(m, "kx", k, issue & last_b)
        ky, last_ky, *_ = wrap_counter(m, "ky", k, issue & row_end)
        ox, last_ox, *_ = wrap_counter(m, "ox", ow, issue & win_last)
        oy, last_row, *_ = wrap_counter(m, "oy", oh, issue & frame_end)
        m.d.comb += [
            row_end.eq(last_b & last_kx),
            win_last.eq(row_end & last_ky),
            frame_end.eq(win_last & last_ox),
        ]
        need = Array(Const(v, range(self.rows + 1)) for v in need_tab)[oy]
        m.d.comb += rows_there.eq(done >= need)
        with m.If(issue & frame_end):
            m.d.comb += release.eq(Array(Const(v, range(self.rows + 1))
                                         for v in release_tab)[oy])
        delta = Signal(range(depth))
        delta_wrapped = Signal(range(-depth, 0))  # delta - depth
        # Next beat unless the window row ends, next window row unless the window ends, and so
        # on. Separate `If`s, where the last true one wins: from the frame step down.
        steps = zip([~row_end, ~last_ky, ~last_ox, ~last_row, Const(1)], self._deltas(),
                    strict=True)
        for flag, d in reversed(list(steps)):
            with m.If(flag):
                m.d.comb += [delta.eq(d), delta_wrapped.eq(d - depth)]
        ahead = Signal(range(2 * depth))
        wrapped = Signal(range(-depth, depth))
        m.d.comb += [ahead.eq(raddr + delta), wrapped.eq(raddr + delta_wrapped)]
        with m.If(issue):
            m.d.sync += raddr.eq(Mux(wrapped < 0, ahead, wrapped))
            with m.If(win_last):
                m.d.sync += ix0.eq(Mux(last_ox, -p, ix0 + s))
            with m.If(frame_end):
                m.d.sync += iy0.eq(Mux(last_row, -p, iy0 + s))

        # The line buffer (ring_memory). The reader never wants a row the writer is filling
        # (a padded read of one is discarded), so no read/write collision bypass is needed.
        read = ring_memory(m, "lines", depth, (w_addr, w_data, w_en), raddr)

        iy, ix = iy0 + ky, ix0 + kx
        pad = Signal()
        m.d.comb += [
            pad.eq((iy < 0) | (iy >= h) | (ix < 0) | (ix >= w)),
        ]

        # S1: the memory reads (its data register may sit in the block RAM); S2: the raw word,
        # registered again, then the pad value chosen on the way into the queue.
        s1_valid, s1_pad, s1_last = Signal(), Signal(), Signal()
        s2_valid, s2_pad, s2_last = Signal(), Signal(), Signal()
        s2_data = Signal(self.width, reset_less=True)
        pad_word = Const((1 << self.width) - 1 if self.pad_bit else 0, self.width)
        m.d.sync += [
            s1_valid.eq(issue), s1_pad.eq(pad), s1_last.eq(win_last),
            s2_valid.eq(s1_valid), s2_pad.eq(s1_pad), s2_last.eq(s1_last),
            s2_data.eq(read),
        ]
        m.d.comb += [
            queue.push.eq(s2_valid),
            queue.data.eq(Cat(Mux(s2_pad, pad_word, s2_data), s2_last)),
        ]
        return m

    def _address(self, oy: int, ox: int, ky: int, kx: int, b: int, frame: int = 0) -> int:
        """Ring address of beat ``b`` of input pixel ``(oy*s - p + ky, ox*s - p + kx)`` of frame
        ``frame``, counting rows outside the image as if they were stored (mod the depth)."""
        iy = oy * self.s - self.p + ky + frame * self.h
        ix = ox * self.s - self.p + kx
        return (iy * self.row_words + ix * self.b + b) % self.depth

    def _deltas(self) -> list[int]:
        """Address steps of the walk: next beat of a window row, next window row, next window,
        next output row, next frame (mod the depth)."""
        k, nb, ow, oh = self.k, self.b, self.ow, self.oh
        a = self._address
        here = [a(0, 0, 0, 0, 0), a(0, 0, 0, k - 1, nb - 1), a(0, 0, k - 1, k - 1, nb - 1),
                a(0, ow - 1, k - 1, k - 1, nb - 1), a(oh - 1, ow - 1, k - 1, k - 1, nb - 1)]
        there = [a(0, 0, 0, 0, 1) if nb > 1 else a(0, 0, 0, 1, 0),
                 a(0, 0, 1, 0, 0), a(0, 1, 0, 0, 0), a(1, 0, 0, 0, 0), a(0, 0, 0, 0, 0, 1)]
        return [(t - h) % self.depth for h, t in zip(here, there, strict=True)]

    def _row_tables(self) -> tuple[list[int], list[int]]:
        """Per output row ``oy``: the complete rows the reader needs before it starts the row,
        and the rows it releases when it leaves it (all the rest after the last row)."""
        k, s, p, h = self.k, self.s, self.p, self.h
        need, release = [], []
        for oy in range(self.oh):
            iy0 = oy * s - p
            low = max(iy0, 0)
            last = oy == self.oh - 1
            need.append((h if last else min(iy0 + k - 1, h - 1) + 1) - low)
            release.append((h if last else max(iy0 + s, 0)) - low)
        return need, release
