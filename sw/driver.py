"""Host driver: talks to an accelerator over an abstract byte transport.

The same :class:`Accelerator` code drives a board over a serial port (:class:`SerialTransport`)
and the simulated design (:class:`bnnflow.sim.transport.SimTransport`, the generated Verilog
under Verilator), so simulation tests exercise the real driver. Only the protocol, packing and
numpy are imported here; never the generators.

Example::

    with Accelerator.open("serial:/dev/ttyUSB0", expected_id=build_id) as acc:
        classes, scores = acc.predict(bits)
"""

from __future__ import annotations

import abc
import json
import time
from pathlib import Path

import numpy as np

from .protocol import (
    Command,
    DecodeError,
    DeviceInfo,
    ErrorCode,
    Frame,
    FrameDecoder,
    encode_frame,
    pack_images,
    unpack_results,
)

__all__ = [
    "DriverError",
    "DeviceTimeout",
    "DesignMismatch",
    "Transport",
    "SerialTransport",
    "Accelerator",
]

DEFAULT_BAUD = 115200
_RETRYABLE = {ErrorCode.BAD_CRC.value, ErrorCode.OVERFLOW.value}


class DriverError(RuntimeError):
    """The device answered something the driver cannot use."""


class DeviceTimeout(DriverError, TimeoutError):
    """No valid response after every retry."""


class DesignMismatch(DriverError):
    """The device runs another design than the build the driver was given."""


class Transport(abc.ABC):
    """A bidirectional byte pipe to a device.

    Attributes
    ----------
    byte_time : float
        Upper bound of the seconds one byte takes on the link; the driver stretches its
        timeouts by it for long frames.
    """

    byte_time: float = 0.0

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send all of ``data``."""

    @abc.abstractmethod
    def read(self, n: int, timeout: float) -> bytes:
        """Return 1 to ``n`` bytes as soon as any are available, or ``b""`` after ``timeout``
        seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the transport; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SerialTransport(Transport):
    """A serial port (a board's USB-UART bridge), via pyserial.

    Parameters
    ----------
    port : str
        Device path (``/dev/ttyUSB0``, ``COM3``) or any pyserial URL.
    baud : int
        Must match the design's UART divisor (``clk_hz // baud``).
    """

    def __init__(self, port: str, baud: int = DEFAULT_BAUD):
        import serial  # only needed for real ports

        self.port = port
        self.byte_time = 10 / baud  # 8N1
        self._serial = serial.serial_for_url(port, baudrate=baud, timeout=0)
        self._serial.reset_input_buffer()

    def write(self, data: bytes) -> None:
        self._serial.write(data)
        self._serial.flush()

    def read(self, n: int, timeout: float) -> bytes:
        self._serial.timeout = max(0.0, timeout)
        first = self._serial.read(1)
        if not first or n == 1:
            return first
        self._serial.timeout = 0
        return first + self._serial.read(min(n - 1, self._serial.in_waiting))

    def close(self) -> None:
        self._serial.close()

    def __repr__(self):
        return f"serial:{self.port}"


def _parse_id(design_id) -> bytes | None:
    if design_id is None:
        return None
    if isinstance(design_id, str):
        design_id = bytes.fromhex(design_id)
    if len(design_id) != 8:
        raise ValueError(f"a design ID is 8 bytes, got {len(design_id)}")
    return bytes(design_id)


class Accelerator:
    """A bnnflow accelerator behind a :class:`Transport`.

    Parameters
    ----------
    transport : Transport
        Owned by the accelerator from now on (closed by :meth:`close`).
    expected_id : bytes or str, optional
        The design ID of the build (8 bytes or 16 hex digits); a device reporting another one
        is refused with :class:`DesignMismatch`.
    timeout : float
        Seconds to wait for each response.
    retries : int
        Resends of a request whose response is lost, corrupted or rejected as corrupted.
    """

    def __init__(self, transport: Transport, *, expected_id=None, timeout: float = 2.0,
                 retries: int = 3):
        self.transport = transport
        self.expected_id = _parse_id(expected_id)
        self.timeout, self.retries = timeout, retries
        self.retried = 0  # requests resent so far, for tests and statistics
        self._decoder = FrameDecoder()
        self._seq = 0
        self._info: DeviceInfo | None = None

    @classmethod
    def open(cls, spec: str, expected_id=None, **kwargs) -> Accelerator:
        """Open ``"serial:PORT[@BAUD]"`` or ``"sim:BUILD_DIR"`` and check the design.

        For ``sim:``, ``expected_id`` defaults to the ``design_id`` of the build's
        ``manifest.json`` when it has one. Other keyword arguments go to :class:`Accelerator`.
        """
        kind, sep, where = spec.partition(":")
        if not sep or not where:
            raise ValueError(f"{spec!r}: expected 'serial:PORT[@BAUD]' or 'sim:BUILD_DIR'")
        if kind == "serial":
            _parse_id(expected_id)  # fail before opening the port
            port, _, baud = where.rpartition("@") if "@" in where else (where, "", "")
            transport = SerialTransport(port, int(baud) if baud else DEFAULT_BAUD)
        elif kind == "sim":
            from .sim.transport import SimTransport  # lazily: compiles with Verilator

            if expected_id is None:
                manifest = Path(where) / "manifest.json"
                if manifest.is_file():
                    expected_id = json.loads(manifest.read_text()).get("design_id")
            _parse_id(expected_id)  # fail before starting a simulation
            transport = SimTransport(where)
        else:
            raise ValueError(f"{spec!r}: unknown transport {kind!r} (serial or sim)")
        acc = cls(transport, expected_id=expected_id, **kwargs)
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

    # -- requests ---------------------------------------------------------------------

    def identify(self) -> DeviceInfo:
        """Ask the device what it is; refuse it if its ID is not ``expected_id``."""
        info = DeviceInfo.unpack(self._transact(Command.IDENTIFY, b"", DeviceInfo.SIZE))
        if self.expected_id is not None and info.design_id != self.expected_id:
            raise DesignMismatch(f"{self.transport!r} runs design {info.design_id.hex()}, the "
                                 f"build expects {self.expected_id.hex()}: program the board "
                                 f"with this build's bitstream (or use the matching build)")
        self._info = info
        return info

    @property
    def info(self) -> DeviceInfo:
        """The device's :class:`DeviceInfo` (identifying it on first use)."""
        return self._info if self._info is not None else self.identify()

    def predict(self, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Classify binary images.

        Parameters
        ----------
        bits : numpy.ndarray
            ``(N, n)`` array of 0/1 (1 for +1), ``n`` the design's input bits.

        Returns
        -------
        classes : numpy.ndarray
            ``(N,)`` int64.
        scores : numpy.ndarray
            ``(N, C)`` int64.
        """
        info = self.info
        bits = np.asarray(bits)
        if bits.ndim != 2 or bits.shape[1] != info.n_inputs:
            raise ValueError(f"expected images of shape (N, {info.n_inputs}), got {bits.shape}")
        if bits.size and (bits.min() < 0 or bits.max() > 1):
            raise ValueError("images must be bits (0 or 1)")
        classes = np.zeros(len(bits), np.int64)
        scores = np.zeros((len(bits), info.num_classes), np.int64)
        for start in range(0, len(bits), info.max_images):
            chunk = bits[start:start + info.max_images]
            payload = self._transact(Command.INFER, pack_images(chunk),
                                     len(chunk) * info.record_size)
            if len(payload) != len(chunk) * info.record_size:
                raise DriverError(f"INFER of {len(chunk)} images returned {len(payload)} bytes, "
                                  f"expected {len(chunk) * info.record_size}")
            cls, sc = unpack_results(payload, info.num_classes)
            classes[start:start + len(chunk)] = cls
            scores[start:start + len(chunk)] = sc
        return classes, scores

    def _transact(self, cmd: Command, payload: bytes, response_size: int = 0) -> bytes:
        """Send a request until its response arrives; return the response payload.

        Every attempt gets a fresh sequence number, so a late response to an earlier attempt
        is recognized and ignored; INFER is a pure function, so a resend never changes results.
        The wait is ``timeout`` plus the time the request and the (at worst fully escaped)
        response take on the link.
        """
        problems = []
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFF
            frame = encode_frame(cmd, seq, payload)
            wire = len(frame) + 2 * (response_size + 6)
            self.transport.write(frame)
            problem = self._await(cmd, seq, self.timeout + wire * self.transport.byte_time)
            if isinstance(problem, bytes):
                return problem
            problems.append(problem)
        kind = DeviceTimeout if all(p.startswith("no response") for p in problems) else DriverError
        raise kind(f"{cmd.name} on {self.transport!r} failed {len(problems)} times: "
                   + "; ".join(problems))

    def _await(self, cmd: Command, seq: int, wait: float) -> bytes | str:
        """The response payload for ``(cmd, seq)``, or a string saying why it is worth a
        retry. Non-retryable device errors raise."""
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            data = self.transport.read(4096, remaining)
            for event in self._decoder.feed(data):
                if isinstance(event, DecodeError):
                    return f"corrupted response ({event.kind}: {event.detail})"
                assert isinstance(event, Frame)
                if event.seq != seq:
                    continue  # a late answer to an earlier attempt
                if event.cmd == Command.ERROR:
                    code = event.payload[0] if event.payload else 0
                    try:
                        name = ErrorCode(code).name
                    except ValueError:
                        name = f"error 0x{code:02x}"
                    if code in _RETRYABLE:
                        return f"device reported {name}"
                    raise DriverError(f"device rejected {cmd.name} seq {seq}: {name}")
                if event.cmd != cmd:
                    raise DriverError(f"{cmd.name} seq {seq} answered by {event.cmd!r}")
                return event.payload
        return f"no response within {wait:.3g} s"
