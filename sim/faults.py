"""Fault injection on the host link: a transport wrapper that damages frames, each way.

:class:`FaultInjector` wraps any :class:`~bnnflow.driver.Transport` (the simulated design, a
serial port, a fake device) and, from a seeded random generator, drops, truncates, corrupts
or delays whole frames going to the device and coming back, and can flip random bits in any
byte. It splits each clean byte stream into frames by their START byte and length, so every
fault hits exactly one frame, and it counts what it injected so a test can compare that with
what the driver detected and retried.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from dataclasses import dataclass

from ..driver import Transport
from ..protocol import CRC_SIZE, ESCAPE, ESCAPE_XOR, HEADER_SIZE, START

__all__ = ["Faults", "FrameSplitter", "FaultInjector"]

DIRECTIONS = ("to_device", "from_device")


@dataclass(frozen=True)
class Faults:
    """Fault rates for one direction.

    Parameters
    ----------
    drop, truncate, corrupt : float
        Probabilities that a frame is dropped whole, cut short at a random byte, or has one
        byte after its START replaced by another value (at most one of the three per frame).
    delay : float
        Probability that a frame (and what follows it) is held back ``delay_seconds``.
    delay_seconds : float
    byte_error : float
        Probability that any byte, START included, has one random bit flipped.
    """

    drop: float = 0.0
    truncate: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    delay_seconds: float = 0.05
    byte_error: float = 0.0

    def __post_init__(self):
        if self.drop + self.truncate + self.corrupt > 1:
            raise ValueError("drop + truncate + corrupt must not exceed 1")


class FrameSplitter:
    """Splits a byte stream into whole frames (from START to the end its length gives) and
    runs of bytes between frames, keeping every byte in order."""

    def __init__(self):
        self._frame = bytearray()  # the frame being collected, empty outside one
        self._count = self._length = 0
        self._escape = False

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the frames and inter-frame runs completed by it."""
        out: list[bytes] = []
        stray = bytearray()
        for byte in data:
            if byte == START:
                if stray:
                    out.append(bytes(stray))
                    stray.clear()
                if self._frame:  # cut short by the next frame: pass it on as it is
                    out.append(bytes(self._frame))
                self._frame = bytearray((START,))
                self._count = self._length = 0
                self._escape = False
                continue
            if not self._frame:
                stray.append(byte)
                continue
            self._frame.append(byte)
            if byte == ESCAPE and not self._escape:
                self._escape = True
                continue
            value = byte ^ ESCAPE_XOR if self._escape else byte
            self._escape = False
            self._count += 1
            if self._count in (3, 4):  # the length, little-endian
                self._length |= value << (8 * (self._count - 3))
            if self._count >= HEADER_SIZE and self._count == HEADER_SIZE + self._length + \
                    CRC_SIZE:
                out.append(bytes(self._frame))
                self._frame = bytearray()
        if stray:
            out.append(bytes(stray))
        return out


class FaultInjector(Transport):
    """A transport that damages the frames crossing it, reproducibly.

    Parameters
    ----------
    inner : Transport
        The real transport; closed with this one. Its other attributes (``counters`` of the
        simulated design, ``divisor``...) are reachable through the wrapper.
    to_device, from_device : Faults
        Fault rates of the requests and of the responses.
    seed : int

    Attributes
    ----------
    injected : dict of str to collections.Counter
        Per direction (``"to_device"``, ``"from_device"``), the frames seen (``"frames"``) and
        the faults injected by kind (``"drop"``, ``"truncate"``, ``"corrupt"``, ``"delay"``,
        ``"byte_error"``).
    """

    def __init__(self, inner: Transport, *, to_device: Faults = Faults(),
                 from_device: Faults = Faults(), seed: int = 0):
        self.inner = inner
        self.faults = {"to_device": to_device, "from_device": from_device}
        self.byte_time, self.cycle_time, self.baud = inner.byte_time, inner.cycle_time, \
            inner.baud
        self.injected = {d: Counter() for d in DIRECTIONS}
        self._rng = random.Random(seed)
        self._split = {d: FrameSplitter() for d in DIRECTIONS}
        self._held: deque[tuple[float, bytes]] = deque()  # responses with their release time
        self._ready = bytearray()

    def __getattr__(self, name):
        if name == "inner":  # not yet set: avoid recursing
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self):
        return f"faulty({self.inner!r})"

    @property
    def frames_damaged(self) -> int:
        """Frames dropped, truncated or corrupted (not counting delays and bit errors)."""
        return sum(self.injected[d][k] for d in DIRECTIONS
                   for k in ("drop", "truncate", "corrupt"))

    def _damage(self, piece: bytes, direction: str) -> tuple[bytes, float]:
        """The piece as it crosses the link, and the seconds it is held back."""
        faults, rng, count = self.faults[direction], self._rng, self.injected[direction]
        delay = 0.0
        if piece[0] == START and len(piece) > 1:
            count["frames"] += 1
            r = rng.random()
            if r < faults.drop:
                count["drop"] += 1
                return b"", 0.0
            if r < faults.drop + faults.truncate:
                count["truncate"] += 1
                piece = piece[:rng.randrange(1, len(piece))]
            elif r < faults.drop + faults.truncate + faults.corrupt:
                count["corrupt"] += 1
                at = rng.randrange(1, len(piece))
                piece = piece[:at] + bytes([piece[at] ^ rng.randrange(1, 256)]) + piece[at + 1:]
            if rng.random() < faults.delay:
                count["delay"] += 1
                delay = faults.delay_seconds
        if faults.byte_error:
            damaged = bytearray(piece)
            for i in range(len(damaged)):
                if rng.random() < faults.byte_error:
                    count["byte_error"] += 1
                    damaged[i] ^= 1 << rng.randrange(8)
            piece = bytes(damaged)
        return piece, delay

    def write(self, data: bytes) -> None:
        for piece in self._split["to_device"].feed(data):
            piece, delay = self._damage(piece, "to_device")
            if delay:
                time.sleep(delay)
            if piece:
                self.inner.write(piece)

    def read(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            while self._held and self._held[0][0] <= now:
                self._ready += self._held.popleft()[1]
            if self._ready:
                out = bytes(self._ready[:n])
                del self._ready[:n]
                return out
            wait = deadline - now
            if wait <= 0:
                return b""
            if self._held:
                wait = min(wait, self._held[0][0] - now)
            for piece in self._split["from_device"].feed(self.inner.read(n, wait)):
                piece, delay = self._damage(piece, "from_device")
                # Later bytes never overtake a held frame: a serial line keeps order.
                release = max(time.monotonic() + delay,
                              self._held[-1][0] if self._held else 0.0)
                if piece:
                    self._held.append((release, piece))

    def close(self) -> None:
        self.inner.close()
