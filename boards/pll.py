"""The fabric clock from an ECP5 PLL (``EHXPLLL``) at a requested frequency.

:func:`pll_config` picks the dividers the same way Project Trellis' ``ecppll`` does (the
reference for open ECP5 flows), so its answers can be checked against that tool: the closest
output frequency wins, then the VCO nearest 600 MHz (the middle of its range), then the first
found (smallest input divider, i.e. the fastest phase detector). The output feeds back from
``CLKOP``, so ``f_out = f_in * CLKFB_DIV / CLKI_DIV`` and ``f_vco = f_out * CLKOP_DIV``.
Arithmetic is exact (fractions), so a frequency is either achievable or it is not.
"""

import math
from dataclasses import dataclass
from fractions import Fraction

from amaranth import Elaboratable, Instance, Module, Signal

__all__ = ["PLLConfig", "PLLError", "pll_config", "ECP5PLL"]

# Limits from the ECP5 family data sheet (FPGA-DS-02012) as encoded in ecppll.cpp.
_CLKI_HZ = (8e6, 400e6)
_PFD_HZ = (3.125e6, 400e6)
_VCO_HZ = (Fraction(400_000_000), Fraction(800_000_000))
_OUT_HZ = (3.125e6, 400e6)
_CLKI_DIV_MAX = 128
_CLKFB_DIV_MAX = 80  # FPGA Libraries Reference Guide: CLKFB_DIV is 1..80, not 1..128
_CLKOP_DIV_MAX = 128
_VCO_MID_HZ = Fraction(600_000_000)


class PLLError(ValueError):
    """No PLL setting reaches the requested frequency (out of the ECP5 PLL's range)."""


@dataclass(frozen=True)
class PLLConfig:
    """One ``EHXPLLL`` setting with ``CLKOP`` as the feedback path.

    Attributes
    ----------
    fin_hz : float
        Input (board oscillator) frequency.
    fout_hz : float
        Achieved output frequency, ``fin_hz * clkfb_div / clki_div``.
    requested_hz : float
        The frequency asked for.
    vco_hz : float
        ``fout_hz * clkop_div``, within 400–800 MHz.
    clki_div, clkfb_div, clkop_div : int
        The three dividers.
    clkop_cphase : int
        Coarse phase of ``CLKOP`` in VCO cycles: half its period, as ``ecppll`` (and Lattice's
        own tools) set it. ``CLKOP`` is also the feedback, so this does not move its phase
        against the input clock.
    """

    fin_hz: float
    fout_hz: float
    requested_hz: float
    vco_hz: float
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkop_cphase: int

    @property
    def error_hz(self) -> float:
        """``fout_hz - requested_hz``."""
        return self.fout_hz - self.requested_hz

    def as_dict(self) -> dict:
        """The setting in MHz and dividers, for ``report.json``."""
        return {"fin_mhz": self.fin_hz / 1e6, "fout_mhz": round(self.fout_hz / 1e6, 6),
                "requested_mhz": self.requested_hz / 1e6, "vco_mhz": round(self.vco_hz / 1e6, 6),
                "clki_div": self.clki_div, "clkfb_div": self.clkfb_div,
                "clkop_div": self.clkop_div, "clkop_cphase": self.clkop_cphase}


def pll_config(fin_hz: float, fout_hz: float) -> PLLConfig:
    """Choose ``EHXPLLL`` dividers for the output frequency closest to ``fout_hz``.

    Parameters
    ----------
    fin_hz : float
        Frequency of the clock into ``CLKI`` (8–400 MHz).
    fout_hz : float
        Wanted ``CLKOP`` frequency (3.125–400 MHz).

    Returns
    -------
    PLLConfig
        The closest achievable setting; ``fout_hz`` of the result is the frequency to use.

    Raises
    ------
    PLLError
        If either frequency is outside the PLL's range.

    Examples
    --------
    >>> c = pll_config(25e6, 125e6)
    >>> (c.clki_div, c.clkfb_div, c.clkop_div, c.clkop_cphase, c.fout_hz)
    (1, 5, 5, 2, 125000000.0)
    """
    if not _CLKI_HZ[0] <= fin_hz <= _CLKI_HZ[1]:
        raise PLLError(f"the ECP5 PLL takes an input clock of 8–400 MHz, not {fin_hz / 1e6} MHz")
    if not _OUT_HZ[0] <= fout_hz <= _OUT_HZ[1]:
        raise PLLError(f"the ECP5 PLL can make 3.125–400 MHz, not {fout_hz / 1e6} MHz")
    fin, want = Fraction(fin_hz), Fraction(fout_hz)
    best = None
    for clki_div in range(1, _CLKI_DIV_MAX + 1):
        if not _PFD_HZ[0] <= fin / clki_div <= _PFD_HZ[1]:
            continue
        for clkfb_div in range(1, _CLKFB_DIV_MAX + 1):
            fout = fin * clkfb_div / clki_div
            if not _OUT_HZ[0] <= fout <= _OUT_HZ[1]:
                continue
            # The output divider only has to put the VCO in range; nearest 600 MHz is best.
            lo = max(1, math.ceil(_VCO_HZ[0] / fout))
            hi = min(_CLKOP_DIV_MAX, math.floor(_VCO_HZ[1] / fout))
            if lo > hi:
                continue
            mid = math.floor(_VCO_MID_HZ / fout)
            divs = [d for d in (mid, mid + 1) if lo <= d <= hi] or [lo if mid < lo else hi]
            clkop_div = min(divs, key=lambda d: abs(fout * d - _VCO_MID_HZ))
            rank = (abs(fout - want), abs(fout * clkop_div - _VCO_MID_HZ))
            if best is None or rank < best[0]:
                best = (rank, clki_div, clkfb_div, clkop_div, fout)
    if best is None:  # unreachable within the checked ranges, kept as a guard
        raise PLLError(f"no ECP5 PLL setting makes {fout_hz / 1e6} MHz from {fin_hz / 1e6} MHz")
    _, clki_div, clkfb_div, clkop_div, fout = best
    return PLLConfig(fin_hz=float(fin_hz), fout_hz=float(fout), requested_hz=float(fout_hz),
                     vco_hz=float(fout * clkop_div), clki_div=clki_div, clkfb_div=clkfb_div,
                     clkop_div=clkop_div, clkop_cphase=clkop_div // 2)


class ECP5PLL(Elaboratable):
    """An ``EHXPLLL`` with one output, ``CLKOP``, fed back to itself.

    Parameters
    ----------
    config : PLLConfig

    Attributes
    ----------
    clk_in : Signal, in
        The reference clock (from a clock-capable pin).
    clk_out : Signal, out
        ``config.fout_hz``; drive a clock domain's ``clk`` with it.
    locked : Signal, out
        High once the PLL has locked; hold the domain in reset until then.
    """

    def __init__(self, config: PLLConfig):
        self.config = config
        self.clk_in = Signal()
        self.clk_out = Signal()
        self.locked = Signal()

    def elaborate(self, platform):
        c = self.config
        m = Module()
        m.submodules.pll = Instance(
            "EHXPLLL",
            # Loop filter settings ecppll and Lattice's tools emit for every setting.
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            a_FREQUENCY_PIN_CLKI=f"{c.fin_hz / 1e6:.6f}",
            a_FREQUENCY_PIN_CLKOP=f"{c.fout_hz / 1e6:.6f}",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
            p_CLKI_DIV=c.clki_div, p_CLKFB_DIV=c.clkfb_div, p_FEEDBK_PATH="CLKOP",
            p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=c.clkop_div,
            p_CLKOP_CPHASE=c.clkop_cphase, p_CLKOP_FPHASE=0,
            i_CLKI=self.clk_in, i_CLKFB=self.clk_out, o_CLKOP=self.clk_out,
            o_LOCK=self.locked,
            i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=0, i_PHASESTEP=0,
            i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
        )
        return m
