"""Byte transports between the host driver and a device, and the driver's errors.

:class:`Transport` is what :class:`bnnflow.driver.Accelerator` talks to; :class:`SerialTransport`
is a board's USB-serial bridge. The simulated design (:class:`bnnflow.sim.transport.SimTransport`)
and the fault injector (:class:`bnnflow.sim.faults.FaultInjector`) implement the same interface.
"""

from __future__ import annotations

import abc

__all__ = ["DEFAULT_BAUD", "DriverError", "DeviceTimeout", "DesignMismatch", "Transport",
           "SerialTransport"]

DEFAULT_BAUD = 115200


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
    cycle_time : float
        Upper bound of the seconds one fabric clock cycle takes (0: use the device's clock).
    baud : float or None
        The link's baud rate, when the transport knows it.
    """

    byte_time: float = 0.0
    cycle_time: float = 0.0
    baud: float | None = None

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
        Must match the design's UART divisor (``clk_hz / baud``).
    """

    def __init__(self, port: str, baud: int = DEFAULT_BAUD):
        import serial  # only needed for real ports

        self.port, self.baud = port, baud
        self.byte_time = 10 / baud  # 8N1
        self._serial = serial.serial_for_url(port, baudrate=baud, timeout=0)
        self._serial.reset_input_buffer()

    def write(self, data: bytes) -> None:
        self._serial.write(data)

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
