"""Automatic folding: the fastest balanced folding that fits a device, or one that meets a rate.

Both searches walk the pipeline's achievable cycle counts (every ``NF*SF`` a layer can take,
times its output pixels for a conv layer), fold each candidate with
:func:`bnnflow.folding.default_folding` (each layer the fewest lanes that meet the target, so
the pipeline stays balanced) and keep

* for a frame rate (:func:`fold_for_fps`), the default folding at the cycle budget the rate
  leaves: each layer the fewest lanes that meet it, the cheapest design that is fast enough;
* for a device (:func:`fold_for_budget`), the fastest candidate whose resource estimate
  (:func:`bnnflow.resources.estimate`) fits the budget: the largest balanced folding.

:func:`check_fit` is the fit test itself. It runs before any synthesis, and its error names the
resource that overflows and the layer that takes most of it, so a design that cannot fit is
refused in seconds rather than after a failed place-and-route.
"""

from __future__ import annotations

from dataclasses import dataclass

from .folding import Folding, FoldingError, default_folding, divisors
from .ir import Conv, MaxPool, Network

__all__ = ["HOST_LINK", "LUT_UTILIZATION", "Budget", "FitError", "board_budget",
           "candidate_targets", "check_fit", "fold_for_fps", "fold_for_budget"]

#: Share of the device's LUT4 a design's estimate may fill by default. The estimate counts
#: LUT4 before packing; nextpnr adds feed-through LUTs, and the model reads low on the widest
#: layers: SFC at 28 cycles per frame, estimated at 77 % of the ULX3S-85F, was placed at 92 %
#: and router2 still had 70,900 overused wires after 15 minutes. At 70 % SFC takes 64 cycles
#: (placed at 28 % of the LUT4 on generator 8, routed) and CNV 8,100 (placed at 72 %, routed).
LUT_UTILIZATION = 0.70

#: What the board top adds beside the core (UART, framing, responder, replay meter and its
#: CRC-32; ULX3S-85F build of the tiny test net). The image buffer's EBR are counted apart.
HOST_LINK = {"lut4": 3000, "ff": 2000}


class FitError(FoldingError):
    """The network (or a given folding of it) does not fit the device or budget."""


@dataclass(frozen=True)
class Budget:
    """Resources the core may use, and where the figures come from (for messages)."""

    lut4: int
    ff: int
    ebr: int
    source: str


def _image_buffer_ebr(net: Network) -> int:
    """EBR of the host link's two image banks (at least 1 KiB each, one image at least)."""
    bits = net.input.size * (1 if net.input.binary else 8)
    bank = max(1024, -(-bits // 8))
    return -(-2 * bank * 8 // 16384)


def board_budget(net: Network, board: str, lut_budget: int | None = None,
                 ebr_budget: int | None = None,
                 utilization: float = LUT_UTILIZATION) -> Budget:
    """The core's budget on ``board``: the device less the host link.

    Parameters
    ----------
    net
        The network (its image size sets the host link's buffer).
    board
        A board name of :mod:`bnnflow.boards.registry`.
    lut_budget, ebr_budget
        Caps on the core's LUT4 and EBR; they only lower the device's own figures.
    utilization
        Share of the device's LUT4 the whole design may fill.
    """
    from bnnflow.boards.registry import get_board

    try:
        info = get_board(board)
    except ValueError as e:
        raise FitError(f"--board: {e}") from None
    dev = info.resources
    lut4 = int(dev.lut4 * utilization) - HOST_LINK["lut4"]
    ebr = dev.ebr - _image_buffer_ebr(net)
    source = (f"{info.name} ({info.device}: {utilization:.0%} of {dev.lut4:,} LUT4 and "
              f"{dev.ebr} EBR, less the host link)")
    if lut_budget is not None:
        if lut_budget < 1:
            raise FitError(f"--lut-budget {lut_budget}: must be positive")
        lut4, source = min(lut4, lut_budget), f"{source}, --lut-budget {lut_budget:,}"
    if ebr_budget is not None:
        if ebr_budget < 0:
            raise FitError(f"--ebr-budget {ebr_budget}: must not be negative")
        ebr, source = min(ebr, ebr_budget), f"{source}, --ebr-budget {ebr_budget}"
    return Budget(lut4=lut4, ff=dev.ff - HOST_LINK["ff"], ebr=ebr, source=source)


def candidate_targets(net: Network) -> list[int]:
    """Every cycle count a layer of ``net`` can take, ascending (the searches' candidates)."""
    shapes = net.shapes()
    out = set()
    for layer, shape in zip(net.layers, shapes, strict=False):
        if isinstance(layer, MaxPool):
            continue
        pixels = 1
        if isinstance(layer, Conv):
            _, oh, ow = layer.out_shape(shape)
            pixels = oh * ow
        mh, mw = layer.out_channels, layer.fan_in
        out.update(pixels * (mh // pe) * (mw // simd)
                   for pe in divisors(mh) for simd in divisors(mw))
    return sorted(out)


def _foldings(net: Network, in_elems: int, targets: list[int]):
    """``(target, folding, cycles_per_frame)`` for each target, skipping repeated foldings."""
    seen = set()
    for target in targets:
        folding = default_folding(net, target, in_elems)
        key = tuple(sorted((n, f.pe, f.simd) for n, f in folding.layers.items()))
        if key in seen:
            continue
        seen.add(key)
        yield target, folding, folding.cycles_per_frame(net, in_elems)


def fold_for_fps(net: Network, fps: float, clock_hz: float, in_elems: int) -> Folding:
    """The cheapest balanced folding that reaches ``fps`` frames/s at ``clock_hz``.

    Raises
    ------
    FitError
        If no folding is fast enough: the message names the layer that limits the rate.
    """
    if fps <= 0 or clock_hz <= 0:
        raise FitError(f"--target-fps {fps} at {clock_hz / 1e6:g} MHz: both must be positive")
    budget_cycles = int(clock_hz // fps)
    folding = default_folding(net, max(1, budget_cycles), in_elems)
    per_layer = folding.layer_cycles(net, in_elems)
    name = max(per_layer, key=per_layer.get)
    if per_layer[name] > budget_cycles:
        raise FitError(
            f"--target-fps {fps:,.0f} at {clock_hz / 1e6:g} MHz needs <= {budget_cycles:,} "
            f"cycles per frame, but layer {name} takes at least {per_layer[name]:,} at any "
            f"folding (at most {clock_hz / per_layer[name]:,.0f} frames/s)")
    return folding


def check_fit(net: Network, folding: Folding, budget: Budget, in_width: int,
              source: str = "folding"):
    """Estimate ``folding``'s resources and refuse it if they exceed ``budget``.

    Returns
    -------
    bnnflow.resources.Estimate

    Raises
    ------
    FitError
        Naming the resource, the estimate against the budget, and the layer that takes most.
    """
    from .resources import estimate

    est = estimate(net, folding, in_width)
    for resource in ("lut4", "ebr", "ff"):
        need, have = getattr(est, resource), getattr(budget, resource)
        if need > have:
            top = max(est.layers, key=lambda c: getattr(c, resource))
            f = folding.layers.get(top.name)
            how = f" at PE {f.pe} x SIMD {f.simd}" if f else ""
            raise FitError(
                f"{source} does not fit {budget.source}: {resource.upper()} {need:,} estimated "
                f"> {have:,} available; layer {top.name} alone needs "
                f"{getattr(top, resource):,} {resource.upper()}{how}"
                f"{f' ({top.storage} weights)' if top.storage else ''}")
    return est


def fold_for_budget(net: Network, budget: Budget, in_elems: int, in_width: int) -> Folding:
    """The fastest balanced folding whose estimate fits ``budget``.

    Raises
    ------
    FitError
        If even the most folded design does not fit; the message is :func:`check_fit`'s for
        that design (resource and layer named).
    """
    last = None
    for _, folding, _ in _foldings(net, in_elems, candidate_targets(net)):
        last = folding
        try:
            check_fit(net, folding, budget, in_width)
        except FitError:
            continue
        return folding
    check_fit(net, last, budget, in_width, source=f"{net.name} (even the most folded design)")
    raise AssertionError("unreachable: the most folded design fitted on a second look")
