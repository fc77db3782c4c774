"""Host driver: talks to an accelerator over an abstract byte transport.

The same :class:`Accelerator` code drives a board over a serial port (:class:`SerialTransport`)
and the simulated design (:class:`bnnflow.sim.transport.SimTransport`, the generated Verilog
under Verilator), so simulation tests exercise the real driver. Only the protocol, the build
manifest and numpy are imported here; never the generators.

Images go out as the build's network takes them: input bits, packed eight to a byte, for a
binary-input network; one byte per pixel, in :func:`bnnflow.packing.frame_pixels` order, for an
integer-input one (e.g. a conv network on 8-bit pixels), which needs the build folder.

Requests are pipelined: up to ``window`` (default 2) are outstanding, which is what the
gateware's two buffer banks take, so the link's transmit line stays busy. Every attempt gets a
fresh sequence number and responses come in order, so a lost, corrupted or late response is
recognized, its request resent, and every result lands at its image's index exactly once.

Example::

    with Accelerator.open("serial:/dev/ttyUSB0@3000000", build="build") as acc:
        classes, scores = acc.predict(pixels)
        print(acc.benchmark(pixels[:100], repeats=1000).report())
"""

from __future__ import annotations

import heapq
import json
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .link import (
    DEFAULT_BAUD,
    DesignMismatch,
    DeviceTimeout,
    DriverError,
    SerialTransport,
    Transport,
)
from .protocol import (
    DEFAULT_ESCAPED,
    Command,
    DecodeError,
    DeviceInfo,
    ErrorCode,
    Frame,
    FrameDecoder,
    ReplaySummary,
    encode_frame,
    pack_images,
    pack_pixels,
    pack_replay,
    unpack_results,
)

__all__ = [
    "DriverError",
    "DeviceTimeout",
    "DesignMismatch",
    "Transport",
    "SerialTransport",
    "LinkStats",
    "Accelerator",
]

_RETRYABLE = {ErrorCode.BAD_CRC.value, ErrorCode.OVERFLOW.value}
_UNKNOWN_CYCLES_PER_FRAME = 10_000  # only to size REPLAY's wait when the build is not known


@dataclass
class LinkStats:
    """What the driver saw on the link since it opened.

    ``retries`` counts resent requests; each resend has one of these causes: ``timeouts``
    (silence, every outstanding request resent), ``lost`` (a later request was answered
    first), ``device_errors`` (the device rejected a corrupted request) or a corrupted
    response (``decode_errors`` also counts corrupted frames the driver could ignore).
    ``stale`` counts valid responses to requests already resent.
    """

    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    lost: int = 0
    device_errors: int = 0
    decode_errors: int = 0
    stale: int = 0
    bytes_out: int = 0
    bytes_in: int = 0


def _parse_id(design_id) -> bytes | None:
    if design_id is None:
        return None
    if isinstance(design_id, str):
        design_id = bytes.fromhex(design_id)
    if len(design_id) != 8:
        raise ValueError(f"a design ID is 8 bytes, got {len(design_id)}")
    return bytes(design_id)


def _read_manifest(build) -> dict:
    path = Path(build) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DriverError(f"{path}: cannot read the build's manifest ({e})") from None


def _build_baud(build) -> int:
    """The baud rate ``bnnflow build`` recorded in the build's report, else the default."""
    try:
        return int(json.loads((Path(build) / "report.json").read_text())["baud"])
    except (TypeError, OSError, ValueError, KeyError):
        return DEFAULT_BAUD


class Accelerator:
    """A bnnflow accelerator behind a :class:`Transport`.

    Parameters
    ----------
    transport : Transport
        Owned by the accelerator from now on (closed by :meth:`close`).
    expected_id : bytes or str, optional
        The design ID of the build (8 bytes or 16 hex digits); a device reporting another one
        is refused with :class:`DesignMismatch`.
    build : str or os.PathLike, optional
        The build folder: its network says whether the device takes input bits or pixels,
        turns pixels into input bits for a binary-input network, and gives the reference
        results :meth:`benchmark` checks against.
    timeout : float
        Seconds to wait for a response, on top of the time its bytes take on the link.
    retries : int
        Resends of a request whose response is lost, corrupted or rejected as corrupted.
    window : int
        Requests outstanding at once (2 keeps the link busy; more overrun the device).
    escaped : set of int
        Bytes to escape in requests (see :mod:`bnnflow.protocol`).
    """

    def __init__(self, transport: Transport, *, expected_id=None, build=None,
                 timeout: float = 2.0, retries: int = 3, window: int = 2,
                 escaped=DEFAULT_ESCAPED):
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.transport = transport
        self.expected_id = _parse_id(expected_id)
        self.build = None if build is None else Path(build)
        self.timeout, self.retries, self.window = timeout, retries, window
        self.escaped = escaped
        self.stats = LinkStats()
        self._decoder = FrameDecoder()
        self._events: deque = deque()
        self._seq = 0
        self._info: DeviceInfo | None = None
        self._net = None

    @classmethod
    def open(cls, spec: str, expected_id=None, *, build=None, **kwargs) -> Accelerator:
        """Open ``"serial:PORT[@BAUD]"`` or ``"sim:BUILD_DIR"`` and check the design.

        The design ID to expect defaults to the ``design_id`` in ``build``'s manifest, and
        ``build`` to the simulated build folder for ``sim:``. The baud rate defaults to the one
        ``bnnflow build`` recorded in the build's ``report.json`` (else 115200). Other keyword
        arguments go to :class:`Accelerator`. Use it as a context manager.
        """
        kind, sep, where = spec.partition(":")
        if not sep or not where:
            raise ValueError(f"{spec!r}: expected 'serial:PORT[@BAUD]' or 'sim:BUILD_DIR'")
        if kind not in ("serial", "sim"):
            raise ValueError(f"{spec!r}: unknown transport {kind!r} (serial or sim)")
        if build is None and kind == "sim":
            build = where
        if expected_id is None and build is not None:
            manifest = Path(build) / "manifest.json"
            if kind == "serial" or manifest.is_file():
                expected_id = _read_manifest(build).get("design_id")
        _parse_id(expected_id)  # fail before opening the port or starting a simulation
        if kind == "serial":
            port, _, baud = where.rpartition("@") if "@" in where else (where, "", "")
            transport = SerialTransport(port, int(baud) if baud else _build_baud(build))
        else:
            from .sim.transport import SimTransport  # lazily: compiles with Verilator

            transport = SimTransport(where)
        acc = cls(transport, expected_id=expected_id, build=build, **kwargs)
        try:
            acc.identify()
        except BaseException:
            acc.close()
            raise
        return acc

    def close(self) -> None:
        """Close the transport."""
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def retried(self) -> int:
        """Requests resent so far (``stats.retries``)."""
        return self.stats.retries

    @property
    def net(self):
        """The build's :class:`~bnnflow.ir.Network`, or None without a build folder."""
        if self._net is None and self.build is not None and \
                (self.build / "network.json").is_file():
            from .ir import Network

            self._net = Network.load(self.build)
        return self._net

    # -- requests ---------------------------------------------------------------------

    def identify(self) -> DeviceInfo:
        """Ask the device what it is; refuse it if its ID is not ``expected_id``."""
        self._decoder.max_payload = 0xFFFF
        (payload,) = self._exchange(Command.IDENTIFY, [b""], [DeviceInfo.SIZE])
        try:
            info = DeviceInfo.unpack(payload)
        except ValueError as e:
            raise DriverError(f"{self.transport!r}: {e}") from None
        if self.expected_id is not None and info.design_id != self.expected_id:
            raise DesignMismatch(f"{self.transport!r} runs design {info.design_id.hex()}, the "
                                 f"build expects {self.expected_id.hex()}: program the board "
                                 f"with this build's bitstream (or use the matching build)")
        self._info = info
        self._decoder.max_payload = info.max_response
        return info

    @property
    def info(self) -> DeviceInfo:
        """The device's :class:`DeviceInfo` (identifying it on first use)."""
        return self._info if self._info is not None else self.identify()

    def to_bits(self, images, bits: bool | None = None) -> np.ndarray:
        """Input bits ``(N, n)`` of ``images``.

        With ``bits=True`` the images are 0/1 bits (any integer or bool dtype). Otherwise, when
        the build's network is known, any encoding :func:`bnnflow.inputs.to_bits` accepts
        (uint8 pixels, bool or int8 bits, floats in the model's input domain); without it only
        bits.
        """
        info = self.info
        x = np.asarray(images)
        if not bits and self.net is not None:
            from .inputs import to_bits

            return to_bits(self.net, x, "images")
        if bits is False:
            raise ValueError("pixels need the build's network: open the accelerator with build=")
        if x.ndim != 2 or x.shape[1] != info.n_inputs:
            raise ValueError(f"expected images of shape (N, {info.n_inputs}), got {x.shape}")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError("images must be bits (0 or 1); pixels need the build's network: "
                             "open the accelerator with build=")
        return x.astype(np.uint8)

    @property
    def takes_pixels(self) -> bool:
        """The device takes pixels (the build's network has an integer input), not bits."""
        net = self.net
        return net is not None and not net.input.binary

    def to_inputs(self, images, bits: bool | None = None) -> np.ndarray:
        """What the device takes for ``images``: input bits ``(N, n)`` (:meth:`to_bits`), or,
        when :attr:`takes_pixels`, integer pixels ``(N, size)`` in the network's flat order
        (pixels or floats in the model's input domain, see :func:`bnnflow.inputs.to_pixels`).
        """
        if not self.takes_pixels:
            return self.to_bits(images, bits)
        if bits:
            raise ValueError("the build's network takes pixels, not input bits")
        from .inputs import to_pixels
        from .packing import pixel_bits

        net, info = self.net, self.info
        if net.input.size * pixel_bits(net.input.pixel_max) != info.n_inputs:
            raise DriverError(f"{self.transport!r} takes {info.n_inputs}-bit images, but the "
                              f"build's network has {net.input.size} pixels: wrong build?")
        return to_pixels(net, np.asarray(images), "images")

    def _wire(self, x: np.ndarray) -> np.ndarray:
        """Images from :meth:`to_inputs` in the order the core takes them."""
        if not self.takes_pixels:
            return x
        from .packing import frame_pixels

        return frame_pixels(self.net, x)

    def _pack(self, x: np.ndarray) -> bytes:
        """The INFER request payload of images from :meth:`to_inputs`."""
        wire = self._wire(x)
        return pack_pixels(wire) if self.takes_pixels else pack_images(wire)

    def predict(self, images, *, bits: bool | None = None,
                batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Classify images.

        Parameters
        ----------
        images : array_like
            ``(N, n)`` bits, or pixels and other encodings (see :meth:`to_inputs`).
        bits : bool, optional
            True: ``images`` are 0/1 bits whatever their dtype (binary-input networks).
        batch : int, optional
            Images per request (default and at most ``info.max_images``).

        Returns
        -------
        classes : numpy.ndarray
            ``(N,)`` int64.
        scores : numpy.ndarray
            ``(N, C)`` int64.
        """
        info = self.info
        x = self.to_inputs(images, bits)
        batch = min(batch or info.max_images, info.max_images)
        starts = range(0, len(x), batch)
        payloads = [self._pack(x[s:s + batch]) for s in starts]
        sizes = [len(x[s:s + batch]) * info.record_size for s in starts]
        responses = self._exchange(Command.INFER, payloads, sizes, window=self.window)
        classes = np.zeros(len(x), np.int64)
        scores = np.zeros((len(x), info.num_classes), np.int64)
        for s, payload in zip(starts, responses, strict=True):
            classes[s:s + batch], scores[s:s + batch] = unpack_results(payload,
                                                                       info.num_classes)
        return classes, scores

    def replay(self, images, repeats: int, *, bits: bool | None = None,
               wait: float | None = None) -> tuple[ReplaySummary, np.ndarray, np.ndarray]:
        """Run up to ``info.max_images`` images ``repeats`` times on chip (REPLAY).

        Returns the :class:`~bnnflow.protocol.ReplaySummary` and the classes and scores of
        the unmeasured pass that follows. ``wait`` is the seconds to allow for the run
        (default: estimated from the build's cycles per frame).
        """
        info = self.info
        x = self.to_inputs(images, bits)
        if not 1 <= len(x) <= info.max_images:
            raise ValueError(f"REPLAY takes 1..{info.max_images} images, got {len(x)}")
        if wait is None:
            per_frame = _UNKNOWN_CYCLES_PER_FRAME
            if self.build is not None and (self.build / "manifest.json").is_file():
                per_frame = _read_manifest(self.build).get("cycles_per_frame", per_frame)
            cycle_time = self.transport.cycle_time or 1 / (info.clk_hz or 1e6)
            wait = 2 * (repeats + 1) * len(x) * max(per_frame, info.image_size) * cycle_time
        size = ReplaySummary.SIZE + len(x) * info.record_size
        request = pack_replay(self._wire(x), repeats, pixels=self.takes_pixels)
        (payload,) = self._exchange(Command.REPLAY, [request], [size], extra_wait=wait)
        classes, scores = unpack_results(payload[ReplaySummary.SIZE:], info.num_classes)
        return ReplaySummary.unpack(payload), classes, scores

    def benchmark(self, images, repeats: int = 100, **kwargs):
        """Fabric and link throughput; see :func:`bnnflow.bench.benchmark`."""
        from .bench import benchmark

        return benchmark(self, images, repeats, **kwargs)

    # -- the pipelined exchange ----------------------------------------------------------

    def _exchange(self, cmd: Command, payloads: list[bytes], sizes: list[int], *,
                  window: int = 1, extra_wait: float = 0.0) -> list[bytes]:
        """Send every request, keeping up to ``window`` outstanding, and return the response
        payloads in request order. Lost, corrupted and rejected requests are resent with a
        new sequence number, at most ``retries`` times each."""
        results: list[bytes | None] = [None] * len(payloads)
        attempts = [0] * len(payloads)
        problems: list[list[str]] = [[] for _ in payloads]
        todo = list(range(len(payloads)))  # a heap: the earliest unanswered request first
        inflight: list[tuple[int, int]] = []  # (seq, index) in send order
        deadline = None

        def resend(entries, why):
            for _, index in entries:
                problems[index].append(why)
                heapq.heappush(todo, index)

        while todo or inflight:
            while todo and len(inflight) < window:
                index = heapq.heappop(todo)
                if attempts[index] > self.retries:
                    raise self._failed(cmd, problems[index])
                self.stats.retries += attempts[index] > 0
                attempts[index] += 1
                inflight.append((self._send(cmd, payloads[index]), index))
                deadline = None
            if deadline is None:
                # Worst case: the requests still to cross, then fully escaped responses.
                wire = sum(len(payloads[i]) + 2 * sizes[i] + 16 for _, i in inflight)
                deadline = (time.monotonic() + self.timeout + extra_wait
                            + wire * self.transport.byte_time)
            event = self._next_event(deadline)
            if event is None:
                self.stats.timeouts += 1
                resend(inflight, f"no response within {self.timeout:.3g} s")
                inflight.clear()
                continue
            if isinstance(event, DecodeError):
                self.stats.decode_errors += 1
                if event.kind != "truncated" and len(inflight) == 1:
                    # A complete frame that fails its check: the one outstanding response.
                    resend(inflight, f"corrupted response ({event.kind}: {event.detail})")
                    inflight.clear()
                continue
            position = next((j for j, (seq, _) in enumerate(inflight) if seq == event.seq),
                            None)
            if position is None:
                self.stats.stale += 1
                continue
            # Responses come in order: requests sent before this one were lost.
            self.stats.lost += position
            resend(inflight[:position], "no response (a later request was answered)")
            (_, index), deadline = inflight[position], None
            del inflight[:position + 1]
            if event.cmd == Command.ERROR:
                code = event.payload[0] if event.payload else 0
                try:
                    name = ErrorCode(code).name
                except ValueError:
                    name = f"error 0x{code:02x}"
                if code not in _RETRYABLE:
                    raise DriverError(f"device rejected {cmd.name} seq {event.seq}: {name}")
                self.stats.device_errors += 1
                resend([(event.seq, index)], f"device reported {name}")
                continue
            if event.cmd != cmd:
                raise DriverError(f"{cmd.name} seq {event.seq} answered by {event.cmd!r}")
            if len(event.payload) != sizes[index]:
                raise DriverError(f"{cmd.name} seq {event.seq} returned {len(event.payload)} "
                                  f"bytes, expected {sizes[index]}")
            results[index] = event.payload
        return results

    def _send(self, cmd: Command, payload: bytes) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFF
        frame = encode_frame(cmd, seq, payload, escaped=self.escaped)
        self.transport.write(frame)
        self.stats.requests += 1
        self.stats.bytes_out += len(frame)
        return seq

    def _next_event(self, deadline: float) -> Frame | DecodeError | None:
        """The next decoded frame or decoding error, or None at ``deadline``."""
        while not self._events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            data = self.transport.read(1 << 16, remaining)
            self.stats.bytes_in += len(data)
            self._events.extend(self._decoder.feed(data))
        return self._events.popleft()

    def _failed(self, cmd: Command, problems: list[str]) -> DriverError:
        kind = DeviceTimeout if all(p.startswith("no response") for p in problems) \
            else DriverError
        counts = Counter(problems)  # in order of first appearance
        why = "; ".join(p if n == 1 else f"{n} x {p}" for p, n in counts.items())
        return kind(f"{cmd.name} on {self.transport!r} failed {len(problems)} times: {why}")
