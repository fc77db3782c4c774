"""The top level of a board build: clock (optionally through a PLL), reset, link pins, LED."""

from collections.abc import Callable

from amaranth import ClockDomain, Const, Elaboratable, Module, Shape, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer

from bnnflow.hw.resets import local_reset

from .pll import ECP5PLL
from .registry import BoardInfo, get_board

__all__ = ["BoardTop"]


def _check_host(host) -> None:
    if not isinstance(host, wiring.Component):
        raise TypeError(f"the host top must be a wiring.Component, not {host!r}")
    members = host.signature.members
    for port, flow in (("rx", wiring.In), ("tx", wiring.Out)):
        member = members[port] if port in members else None
        if (member is None or not member.is_port or member.flow != flow
                or Shape.cast(member.shape).width != 1):
            raise TypeError(f"the host top needs a port `{port}: {flow.name}(1)`; "
                            f"its signature is {host.signature!r}")


class BoardTop(Elaboratable):
    """The top level of a board build: clock, reset, host link pins and a heartbeat LED.

    Without a target frequency the ``sync`` domain runs from the board oscillator with a
    power-on reset. With one, it runs from an ECP5 PLL (:mod:`.pll`) at the closest frequency
    the PLL can make, held in reset until the PLL locks. The domain itself has no reset: the
    request reaches the host's blocks through its reset tree (:mod:`bnnflow.hw.resets`,
    ``host.reset_req``), or a registered copy for a host without one. The UART receive pin
    goes straight to the host top, whose UART receiver synchronizes it (it is asynchronous
    to the fabric clock; one synchronizer, not two), and the transmit pin is driven from a
    register that starts high, so the line idles rather than sending a break while the
    design comes out of configuration or waits for the PLL.

    Parameters
    ----------
    host_top_factory : callable
        Called once as ``host_top_factory(board)`` with the :class:`BoardInfo` of this build,
        whose ``clk_freq`` is the actual ``sync`` frequency in Hz (the PLL output when there
        is one; compute the UART divisor from it) and ``max_baud`` the link's limit. Returns a
        ``wiring.Component`` with ports ``rx: In(1)`` and ``tx: Out(1)``, e.g.
        ``hw.hostlink.HostTop``; ``rx`` is the pin itself, which the component must
        synchronize (HostTop's UART receiver does).
    board : str or BoardInfo
        The board, by registry name or description (a description from
        :meth:`BoardInfo.with_clock` keeps its PLL).
    target_mhz : float, optional
        Wanted ``sync`` frequency; ``None`` keeps ``board``'s clock.

    Attributes
    ----------
    board : BoardInfo
        The board as this build sees it (``clk_freq`` and ``pll`` included).
    host : wiring.Component
        The component built by ``host_top_factory``.

    Raises
    ------
    PLLError
        If the PLL cannot make ``target_mhz``.
    """

    def __init__(self, host_top_factory: Callable[[BoardInfo], wiring.Component],
                 board: str | BoardInfo, *, target_mhz: float | None = None):
        try:
            board = get_board(board)
            self.board = board.with_clock(target_mhz) if target_mhz is not None else board
            self.host = host_top_factory(self.board)
            _check_host(self.host)
        except BaseException:
            # Amaranth would also warn that this half-built top was never elaborated.
            self._MustUse__silence = True
            raise

    def _clock(self, m: Module, platform) -> Signal:
        """The ``sync`` domain, and the reset request: high from configuration until two
        cycles after the PLL locks (two cycles after configuration without a PLL)."""
        board = self.board
        m.submodules.clk_buf = clk_buf = io.Buffer("i", platform.request(board.clock, dir="-"))
        # No reset net of its own: one net to every flip-flop with a reset spans the chip and
        # takes 7-8 ns to route on a full 85F. The host's blocks are reset by a tree of
        # registered copies of `request` instead (bnnflow.hw.resets); everything else starts
        # from its initial value, as after a reset.
        m.domains.sync = cd_sync = ClockDomain("sync", reset_less=True)
        request = Signal(name="reset_request")
        if board.pll is None:
            m.d.comb += cd_sync.clk.eq(clk_buf.i)
            m.submodules.reset_sync = FFSynchronizer(Const(0), request, init=1)
            return request
        m.submodules.pll = pll = ECP5PLL(board.pll)
        # No constraint on the PLL output: nextpnr derives it from the oscillator's through
        # the PLL's dividers ("Derived frequency constraint"); Amaranth would attach one to
        # whichever submodule first names the clock net, where nextpnr cannot find it.
        m.d.comb += [pll.clk_in.eq(clk_buf.i), cd_sync.clk.eq(pll.clk_out)]
        m.submodules.reset_sync = FFSynchronizer(~pll.locked, request, init=1)
        return request

    def elaborate(self, platform):
        if platform is None:
            raise TypeError("BoardTop needs the board's platform; simulate the host top instead")
        board = self.board
        m = Module()
        request = self._clock(m, platform)

        host = self.host
        local_reset(m, "host", host, request)  # a HostTop's own reset tree, if it has one
        link = platform.request(*board.link_resource, dir="-")
        m.submodules.rx_buf = rx_buf = io.Buffer("i", link.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", link.tx)
        m.d.comb += host.rx.eq(rx_buf.i)  # HostTop's UARTRx has the synchronizer
        tx = Signal(init=1)
        m.d.sync += tx.eq(host.tx)
        m.d.comb += tx_buf.o.eq(tx)

        if board.led is not None:
            led = platform.request(*board.led[:2], dir="-")
            if len(board.led) > 2:
                led = getattr(led, board.led[2])
            m.submodules.led_buf = led_buf = io.Buffer("o", led)
            beat = Signal(max(1, int(board.clk_freq) - 1).bit_length())
            m.d.sync += beat.eq(beat + 1)
            m.d.comb += led_buf.o.eq(beat[-1])
        return m
