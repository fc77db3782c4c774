"""Where a layer keeps its weights, chosen by its fold depth.

An MVTU lane reads one weight bit per cycle out of ``depth = NF*SF`` bits (its fold depth).
The cheapest home for those bits depends on that depth:

* ``"const"`` (depth 1, a fully parallel layer): the weights are constants; the XNOR with a
  constant is a wire or an inverter and disappears into the popcount's first LUT level.
* ``"lut"`` (a few weights per lane): a LUT ROM indexed by the step counter, registered like a
  memory read; a LUT4 holds an 8-entry ROM together with the lane's XNOR, a 16-entry one takes
  two LUT4s and a PFUMX.
* ``"bram"`` (many weights per lane): block RAM (ECP5 DP16KD, 18 kbit, at most 36 bits wide).

Why :data:`LUT_MAX_DEPTH` is 16: block RAM costs no LUTs for the weights themselves, but a
DP16KD delivers at most 36 bits per cycle, so a layer of ``L`` lanes needs ``ceil(L/36)`` of
them whatever its depth. At depth 16 each uses 576 of its 18,432 bits, and a layer folded that
shallow is a wide one: SFC's first layer at 16 cycles per frame has 12,544 lanes, 349 DP16KD,
more than the 208 of the ULX3S-85F. LUT ROMs cost about one LUT4 per lane up to depth 8 and
two up to 16 (``python -m bnnflow.lanecost``); beyond that block RAM is both cheaper and fits.

:func:`weight_storage` is the single definition both the generator and the resource model use.
"""

from __future__ import annotations

__all__ = ["STORAGES", "LUT_MAX_DEPTH", "EBR_MODES", "BRAM_PORT_BITS", "BRAM_HALF",
           "weight_storage", "ebr_count", "port_columns", "rom_banks", "rom_blocks"]

#: The storage kinds, cheapest first for a shallow layer.
STORAGES = ("const", "lut", "bram")

#: Deepest fold for which a LUT ROM is chosen over block RAM.
LUT_MAX_DEPTH = 16


def weight_storage(depth: int) -> str:
    """The storage kind for a layer whose lanes cycle through ``depth`` weights each.

    Parameters
    ----------
    depth
        ``NF*SF``, the words of the layer's weight memory; ``>= 1``.

    Returns
    -------
    str
        One of :data:`STORAGES`.
    """
    if depth < 1:
        raise ValueError(f"fold depth {depth} < 1")
    if depth == 1:
        return "const"
    if depth <= LUT_MAX_DEPTH:
        return "lut"
    return "bram"


#: Data bits of one DP16KD port in its 1,024-word (true dual-port) mode. A memory cut into
#: columns this wide never takes the 36-bit pseudo dual-port mode, whose output register the
#: board build leaves alone (:mod:`bnnflow.boards.outreg`).
BRAM_PORT_BITS = 18


def port_columns(width: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` bit ranges cutting a ``width``-bit word into columns of at most
    :data:`BRAM_PORT_BITS` bits, lowest first."""
    return [(lo, min(width, lo + BRAM_PORT_BITS)) for lo in range(0, width, BRAM_PORT_BITS)]


#: ECP5 DP16KD aspect ratios, ``(width, depth)``: 18 kbit at 9/18/36 bits, 16 kbit below.
EBR_MODES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


def ebr_count(width: int, depth: int) -> int:
    """DP16KD blocks for a ``width``-bit, ``depth``-word memory in its cheapest aspect ratio.

    Parameters
    ----------
    width, depth
        Word width and number of words; ``>= 1``.

    Returns
    -------
    int
        ``min(ceil(width/w) * ceil(depth/d))`` over :data:`EBR_MODES`.
    """
    if width < 1 or depth < 1:
        raise ValueError(f"a memory of {width} bits x {depth} words")
    return min(-(-width // w) * -(-depth // d) for w, d in EBR_MODES)


#: Words of half a DP16KD in its 1,024-word mode: a bank this shallow is read through both
#: ports of its blocks, one 18-bit column each (:func:`bnnflow.hw.mvtu._bram_read`).
BRAM_HALF = 512


def rom_banks(width: int, depth: int) -> tuple[int, int]:
    """How a block-RAM ROM is cut into DP16KD blocks: ``(column_bits, bank_depth)``.

    The ROM's words are cut into banks of ``bank_depth`` consecutive words and its bits into
    columns; each column of a bank is one DP16KD in a true dual-port mode (18 x 1,024 ...
    1 x 16,384), except that ``column_bits`` 36 means banks of :data:`BRAM_HALF` words whose
    18-bit columns go two to a block, read through both ports. Of these shapes the one with
    the fewest blocks is taken and, among those, the fewest banks. A ROM of up to
    :data:`BRAM_HALF` words is always one bank of column pairs. Every bank is read and
    registered (the register the board build moves into the block) before a multiplexer
    picks one, so no read crosses the fabric straight from a block's pins.
    """
    if width < 1 or depth < 1:
        raise ValueError(f"a memory of {width} bits x {depth} words")
    return min(EBR_MODES, key=lambda mode: (_blocks(width, depth, *mode), -(-depth // mode[1])))


def _blocks(width: int, depth: int, bits: int, bank: int) -> int:
    per_bank = -(-len(port_columns(width)) // 2) if bits > BRAM_PORT_BITS else -(-width // bits)
    return per_bank * -(-depth // bank)


def rom_blocks(width: int, depth: int) -> int:
    """DP16KD blocks of a ``width``-bit, ``depth``-word block-RAM ROM cut as
    :func:`rom_banks` says."""
    return _blocks(width, depth, *rom_banks(width, depth))
