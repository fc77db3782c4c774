"""The board registry: what the flow needs to know about each supported board.

Each board family module (:mod:`.ulx3s`, :mod:`.orangecrab`, :mod:`.colorlight`,
:mod:`.ecp5_evn`) defines its platforms and calls :func:`register` for each board; importing
this module imports all of them, so :data:`BOARDS` is complete whichever module is imported
first.

The clock contract
------------------
A :class:`BoardInfo` from the registry describes the board as shipped: ``clk_freq`` is its
oscillator. :meth:`BoardInfo.with_clock` returns a copy whose ``clk_freq`` is the frequency of
the ``sync`` domain a build will actually run at (the PLL output, when a target is given) and
whose ``pll`` holds the PLL setting. The host-top factory passed to
:class:`~bnnflow.boards.top.BoardTop` and :func:`~bnnflow.boards.build.build` is called with
that copy, so ``board.clk_freq`` is always the clock its UART divisor must be computed from.
"""

import dataclasses
from dataclasses import dataclass

from amaranth.vendor import LatticePlatform

from .pll import PLLConfig, pll_config

__all__ = ["DeviceResources", "DEVICES", "BoardInfo", "BOARDS", "register", "get_board",
           "list_boards"]


@dataclass(frozen=True)
class DeviceResources:
    """What one ECP5 device offers the design.

    Attributes
    ----------
    lut4 : int
        LUT4 slots (nextpnr's ``TRELLIS_COMB``; carry-chain halves count as LUT4 slots).
    ff : int
        Flip-flops (``TRELLIS_FF``).
    ebr : int
        18-kbit block RAMs (``DP16KD``).
    dsp : int
        18x18 multipliers.
    """

    lut4: int
    ff: int
    ebr: int
    dsp: int


#: Resources per device, from the ECP5 family data sheet (FPGA-DS-02012) and nextpnr's chip
#: databases. The LFE5U-12F is the 25F die, but only its data-sheet share (12K LUT, 32 EBR) is
#: counted here: that is what Lattice guarantees.
DEVICES: dict[str, DeviceResources] = {
    "LFE5U-12F": DeviceResources(lut4=12288, ff=12288, ebr=32, dsp=28),
    "LFE5U-25F": DeviceResources(lut4=24288, ff=24288, ebr=56, dsp=28),
    "LFE5U-45F": DeviceResources(lut4=43848, ff=43848, ebr=108, dsp=72),
    "LFE5U-85F": DeviceResources(lut4=83640, ff=83640, ebr=208, dsp=156),
    "LFE5UM5G-85F": DeviceResources(lut4=83640, ff=83640, ebr=208, dsp=156),
}


@dataclass(frozen=True)
class BoardInfo:
    """What the flow needs to know about one board.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"ulx3s-85f"``.
    platform : type
        The Amaranth platform class; instantiate it once per build.
    clock : str
        Resource name of the board oscillator.
    clk_freq : float
        Frequency in Hz of the ``sync`` domain: the oscillator's, unless :attr:`pll` is set.
    link : str
        Host link kind; every board so far uses ``"uart"`` (8N1, no flow control).
    link_resource : tuple of (str, int)
        Resource name and number of the host link, for ``platform.request``.
    link_via : str
        What carries the UART to the host computer, and on which FPGA pins.
    max_baud : int
        Fastest baud rate the link's USB-serial bridge is known to carry.
    led : tuple or None
        ``(resource, number)`` or ``(resource, number, subsignal)`` of an LED for a heartbeat.
    pll : PLLConfig or None
        Set by :meth:`with_clock` when ``sync`` comes from a PLL.
    """

    name: str
    platform: type[LatticePlatform]
    clock: str
    clk_freq: float
    link: str
    link_resource: tuple[str, int]
    link_via: str
    max_baud: int
    led: tuple | None = ("led", 0)
    pll: PLLConfig | None = None

    @property
    def device(self) -> str:
        """The ECP5 device, e.g. ``"LFE5U-85F"``."""
        return self.platform.device

    @property
    def part(self) -> str:
        """Full Lattice part number, e.g. ``"LFE5U-85F-6BG381C"``."""
        p = self.platform
        return f"{p.device}-{p.speed}{p.package}{p.grade}"

    @property
    def resources(self) -> DeviceResources:
        """LUT4, FF, EBR and DSP of the board's device."""
        return DEVICES[self.device]

    @property
    def programmer(self) -> str:
        """openFPGALoader's ``-b`` name for the board."""
        return self.platform.openfpgaloader_board

    @property
    def osc_freq(self) -> float:
        """Frequency in Hz of the board oscillator (the PLL input, if there is a PLL)."""
        return self.pll.fin_hz if self.pll is not None else self.clk_freq

    def with_clock(self, target_mhz: float | None) -> "BoardInfo":
        """Return the board as a build at ``target_mhz`` sees it.

        Parameters
        ----------
        target_mhz : float or None
            Wanted ``sync`` frequency in MHz; ``None`` runs ``sync`` from the oscillator.

        Returns
        -------
        BoardInfo
            With ``clk_freq`` the achieved frequency (the closest the PLL can make) and
            ``pll`` its setting; ``self`` unchanged when ``target_mhz`` is ``None``.

        Raises
        ------
        PLLError
            If the PLL cannot make anything near ``target_mhz`` (outside 3.125–400 MHz).
        """
        base = dataclasses.replace(self, clk_freq=self.osc_freq, pll=None)
        if target_mhz is None:
            return base
        config = pll_config(base.clk_freq, float(target_mhz) * 1e6)
        return dataclasses.replace(base, clk_freq=config.fout_hz, pll=config)

    def summary(self) -> dict:
        """One row of :func:`list_boards`."""
        return {"name": self.name, "part": self.part, "link": self.link,
                "link_via": self.link_via, "clock_mhz": self.osc_freq / 1e6,
                "max_baud": self.max_baud, "programmer": self.programmer}


#: Every supported board, by name; filled by the family modules through :func:`register`.
BOARDS: dict[str, BoardInfo] = {}


def register(*boards: BoardInfo) -> None:
    """Add boards to :data:`BOARDS`.

    Parameters
    ----------
    *boards : BoardInfo

    Raises
    ------
    ValueError
        If a name is already taken by a different board.
    """
    for board in boards:
        if BOARDS.get(board.name, board) != board:
            raise ValueError(f"board name {board.name!r} registered twice")
        BOARDS[board.name] = board


def get_board(name: "str | BoardInfo") -> BoardInfo:
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


def list_boards() -> list[dict]:
    """Describe every supported board, for ``bnnflow boards``.

    Returns
    -------
    list of dict
        Sorted by name; keys ``name``, ``part``, ``link``, ``link_via``, ``clock_mhz`` (the
        oscillator), ``max_baud`` and ``programmer`` (openFPGALoader's board name).
    """
    return [BOARDS[name].summary() for name in sorted(BOARDS)]


# The families register their boards on import; at the bottom, so that they find
# `BoardInfo` and `register` defined whichever module is imported first.
from . import colorlight, ecp5_evn, orangecrab, ulx3s  # noqa: E402, F401, I001
