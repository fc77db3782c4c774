"""Colorlight i5 (v7.0, LFE5U-25F) and i9 (v7.2, LFE5U-45F) modules on their extension board.

amaranth-boards has no platform for these, so the pins are written here from public sources:

* LiteX-Boards ``litex_boards/platforms/colorlight_i5.py`` (``_io_v7_0`` documented by
  @smunaut, ``_io_v7_2`` for the i9 and the ``pmod*`` connectors of the extension board);
* Muse Lab's board repository, github.com/wuxx/Colorlight-FPGA-Projects:
  ``colorlight_i9_v7.2.md`` (25 MHz clock on P3, LED on L2), the i5/i9 extension-board
  schematic ``schematic/i5-i9-extboard.pdf`` and pinout ``doc/i5_extboard_v1.2_pinout.png``;
* Tom Verbeure, "The Colorlight i5 as Lattice ECP5 FPGA Development Board" (2021), whose
  board shows a LiteX BIOS over the extension board's DAPLink serial port (``ttyACM0``).

Host link: UART to the extension board's USB bridge. The extension board has no CH340; its
USB-C port goes to an STM32F103 running DAPLink, which is both the JTAG probe (CMSIS-DAP) and a
USB CDC-ACM serial port wired to FPGA J17 (FPGA tx) and H18 (FPGA rx), LiteX's ``serial``;
both pins are also on header P5. DAPLink's UART bridge is slow and drops bytes when its small
buffer overruns, so the link is rated at 115200 baud.
"""

from amaranth.build import Attrs, Clock, Connector, Pins, Resource
from amaranth.vendor import LatticePlatform
from amaranth_boards.resources import LEDResources, UARTResource

from .program import LoaderPlatformMixin
from .registry import BoardInfo, register

__all__ = ["ColorlightI5R7_0Platform", "ColorlightI9R7_2Platform"]

_LVCMOS33 = Attrs(IO_TYPE="LVCMOS33")


def _resources(led: str) -> list:
    return [
        Resource("clk25", 0, Pins("P3", dir="i"), Clock(25e6), _LVCMOS33),
        *LEDResources(pins=led, invert=True, attrs=Attrs(IO_TYPE="LVCMOS33", DRIVE="4")),
        # PULLMODE=UP: the rx line idles high before the DAPLink drives it.
        UARTResource(0, rx="H18", tx="J17", attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP")),
    ]


def _pmod(number: int, pins: str) -> Connector:
    # LiteX lists the 8 signal pins; a PMOD's pins 5, 6, 11, 12 are power.
    p = pins.split()
    return Connector("pmod", number, " ".join([*p[:4], "-", "-", *p[4:], "-", "-"]))


# Extension-board PMOD pairs, numbered as headers P2a/P2b … P6a/P6b (LiteX pmodc … pmodl).
_PMODS = {
    0: "P17 R18 C18 L2 M17 R17 T18 K18",  # P2
    1: "J20 L18 M18 N17 G20 K20 L20 N18",
    2: "C17 B18 B20 F20 A18 A19 B19 D20",  # P3
    3: "D1 C1 C2 E3 E2 D2 B1 A3",
    4: "H4 G3 F1 F2 H3 F3 E4 E1",  # P4
    5: "- E19 B3 K5 - B2 K4 A2",
    6: "D18 G5 F5 E5 D17 D16 E6 F4",  # P5
    7: "J17 H17 H16 G16 H18 G18 F18 E18",
    8: "R3 M4 L5 J16 N4 L4 P16 J18",  # P6
    9: "R1 U1 W1 M1 T1 Y2 V1 N2",
}


class _ColorlightPlatform(LoaderPlatformMixin, LatticePlatform):
    package = "BG381"
    speed = "6"
    default_clk = "clk25"

    def toolchain_prepare(self, fragment, name, **kwargs):
        overrides = dict(ecppack_opts="--compress")
        overrides.update(kwargs)
        return super().toolchain_prepare(fragment, name, **overrides)


class ColorlightI5R7_0Platform(_ColorlightPlatform):
    device = "LFE5U-25F"
    openfpgaloader_board = "colorlight-i5"
    resources = _resources(led="U16")
    # LiteX documents only header P3 for the i5 (v7.0); the others are listed for the i9.
    connectors = [_pmod(n, _PMODS[n]) for n in (2, 3)]


class ColorlightI9R7_2Platform(_ColorlightPlatform):
    device = "LFE5U-45F"
    openfpgaloader_board = "colorlight-i9"
    resources = _resources(led="L2")
    connectors = [_pmod(n, pins) for n, pins in _PMODS.items()]


for _name, _platform in (("colorlight-i5", ColorlightI5R7_0Platform),
                         ("colorlight-i9", ColorlightI9R7_2Platform)):
    register(BoardInfo(
        name=_name, platform=_platform, clock="clk25", clk_freq=25e6,
        link="uart", link_resource=("uart", 0),
        link_via="extension board's DAPLink USB CDC-ACM serial, USB-C port "
                 "(FPGA rx H18, tx J17)",
        max_baud=115_200, led=("led", 0)))
