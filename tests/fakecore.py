"""A small stand-in for ``bnnflow.hw.core.BnnCore`` with the same stream ports, and its model.

Scores are ``2*popcount(image & mask_c) - popcount(mask_c)`` for random per-class masks and the
class is their first argmax, so results depend on every input bit and scores go negative.
Optionally the core stalls its input at random (LFSR) and holds each result a few cycles.
"""

import numpy as np
from amaranth.hdl import Array, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from streams import recv, send

from bnnflow.hw.hostlink import core_in_layout, core_out_layout
from bnnflow.packing import image_bytes
from bnnflow.protocol import FrameDecoder

__all__ = ["FakeCore", "byte_host"]


class FakeCore(wiring.Component):
    def __init__(self, n_inputs, num_classes, *, seed=0, stall=False, latency=3):
        self.n_inputs, self.num_classes = n_inputs, num_classes
        self.nbytes = (n_inputs + 7) // 8
        self.score_bits = n_inputs.bit_length() + 1
        self.cls_bits = max(1, (num_classes - 1).bit_length())
        rng = np.random.default_rng(seed)
        self.masks = rng.integers(0, 2, (num_classes, n_inputs), dtype=np.uint8)
        self.stall, self.latency = stall, latency
        super().__init__({
            "s_axis": In(stream.Signature(core_in_layout())),
            "m_axis": Out(stream.Signature(
                core_out_layout(num_classes, self.cls_bits, self.score_bits))),
        })

    def predict(self, bits):
        """Model: classes (N,) and scores (N, C) for bits (N, n)."""
        bits = np.asarray(bits, np.int64)
        scores = 2 * (bits @ self.masks.T.astype(np.int64)) - self.masks.sum(1)
        return scores.argmax(1), scores

    def elaborate(self, platform):
        m = Module()
        mask_bytes = [image_bytes(row) for row in self.masks]
        offsets = [-int(row.sum()) for row in self.masks]
        beat = Signal(range(self.nbytes))
        acc = [Signal(data.signed(self.score_bits), init=offsets[c], name=f"acc{c}")
               for c in range(self.num_classes)]
        wait = Signal(range(self.latency + 1))
        pending = Signal()
        lfsr = Signal(16, init=0xACE1)
        m.d.sync += lfsr.eq((lfsr << 1) | (lfsr[15] ^ lfsr[13] ^ lfsr[12] ^ lfsr[10]))
        stalled = (lfsr[0] & lfsr[5]) if self.stall else Const(0)

        out = self.m_axis.payload
        m.d.comb += self.s_axis.ready.eq(~pending & ~self.m_axis.valid & ~stalled)
        with m.If(self.s_axis.valid & self.s_axis.ready):
            m.d.sync += beat.eq(beat + 1)
            for c in range(self.num_classes):
                word = Array(Const(b, 8) for b in mask_bytes[c])[beat]
                masked = self.s_axis.payload.data & word
                new = acc[c] + 2 * sum(masked[k] for k in range(8))
                with m.If(beat == self.nbytes - 1):
                    m.d.sync += [acc[c].eq(offsets[c]), out.scores[c].eq(new)]
                with m.Else():
                    m.d.sync += acc[c].eq(new)
            with m.If(beat == self.nbytes - 1):
                m.d.sync += [beat.eq(0), pending.eq(1), wait.eq(self.latency)]
        with m.If(pending):
            m.d.sync += wait.eq(wait - 1)
            with m.If(wait == 0):
                m.d.sync += [pending.eq(0), self.m_axis.valid.eq(1)]
        with m.If(self.m_axis.valid & self.m_axis.ready):
            m.d.sync += self.m_axis.valid.eq(0)

        # First maximum of the registered scores, so it holds with them.
        best, best_c = out.scores[0], Const(0, self.cls_bits)
        for c in range(1, self.num_classes):
            better = out.scores[c] > best
            best = Mux(better, out.scores[c], best)
            best_c = Mux(better, c, best_c)
        m.d.comb += [out.cls.eq(best_c), out.last.eq(1)]
        return m


def byte_host(link, requests, events, responses, rng, *, wire=None):
    """The host side of a :class:`HostLink`'s byte streams, as two testbenches.

    The first sends each request's bytes into ``link.rx`` with 30 % idle cycles; the second
    takes bytes from ``link.tx`` with 30 % back-pressure (appending them to ``wire`` if given)
    and decodes frames into ``events`` until there are ``responses`` of them.
    """
    async def host_tx(ctx):
        for request in requests:
            await send(ctx, link.rx, [{"data": b} for b in request], rng=rng, idle=0.3)

    async def host_rx(ctx):
        decoder = FrameDecoder()
        while len(events) < responses:
            (beat,) = await recv(ctx, link.tx, 1, rng=rng, stall=0.3)
            if wire is not None:
                wire.append(beat.data)
            events.extend(decoder.feed(bytes([beat.data])))

    return host_tx, host_rx
