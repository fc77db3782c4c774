"""Resource model: LUT4, FF and EBR (DP16KD) per layer of a folded core, without any tool.

The estimate is structural arithmetic on the network and its folding, fast enough to be asked
for every candidate folding of an automatic folder (:mod:`bnnflow.autofold`):

* **EBR** follow Yosys' own packing (``memory_libmap`` with the ECP5 library): every DP16KD
  shape (1, 2, 4, 9, 18 or 36 bits wide by 16k ... 512 words) is priced at 128 per block plus
  0.5 per read-multiplexer bit, and the cheapest taken (:func:`ebr_blocks`). Weight and
  threshold memories follow :func:`bnnflow.hw.storage.weight_storage` (constants, LUT ROMs,
  or block RAM forced by a ``ram_style`` attribute); a memory without that attribute, like
  the sliding window's line buffer, goes wherever Yosys finds it cheapest, against soft logic
  at 1/16 per ROM bit or 1 per RAM bit, or ``DPR16X4`` LUT RAM at 4 each (:func:`memory_map`).
  Like Yosys, the model drops ROM bit columns that are the same in every word (a threshold's
  high bits often are), so it reads the weights and thresholds, not just the shapes.
* **LUT4 and FF** are a weighted sum of counted structures of each block: lanes, popcount
  adder bits, accumulator and threshold-compare bits per PE, the fill and compute registers
  (``MW`` bits each), LUT-ROM bits of the weights and thresholds, pipeline and stream
  registers, counters. The weights (:data:`LUT_COEF`, :data:`FF_COEF`) are fitted by least
  squares against ``synth_ecp5`` (``python -m bnnflow.calibrate --fit`` prints new ones after
  a hardware change).

LUT4 means LUT4 slots as nextpnr counts them before packing (its "Total LUT4s" line): Yosys'
``LUT4`` cells, two per ``CCU2C`` carry cell and six per ``TRELLIS_DPR16X4`` (four RAM and two
RAMW slots). nextpnr's post-packing ``TRELLIS_COMB`` count, which the build report calls
``lut4``, adds feed-through LUTs on top (about 5-8 % on our designs). FF is ``TRELLIS_FF``.

The sliding window's and max-pool's main terms are fitted on a small conv net only (two
foldings); features no calibration net exercises (integer-input lanes beyond it, LUT-RAM line
buffers, pixel ROMs in logic) keep structural priors (one LUT4 or FF per counted bit) and are
the ones missing from :data:`CALIBRATED`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from math import ceil

from .folding import Folding
from .ir import Conv, MaxPool, Network

__all__ = [
    "EBR_SHAPES", "LUT_COEF", "FF_COEF", "CALIBRATED", "LayerCost", "Estimate", "MemoryMap",
    "memory_map", "ebr_blocks", "rom_luts", "tree_profile", "weight_columns", "word_columns",
    "block_features", "estimate",
]

#: DP16KD (and PDPW16KD) shapes Yosys can use: (width, depth) of one 18-kbit block.
EBR_SHAPES = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))

_EBR_COST = 128  # per block, from Yosys' techlibs/lattice/brams_16kd.txt
_MUX_COST = 0.5  # per read-data bit per extra depth slice (memory_libmap FACTOR_MUX)
_ROM_BIT_COST = 1 / 16  # memory_libmap -logic-cost-rom default
_RAM_BIT_COST = 1.0  # memory_libmap -logic-cost-ram default
_DPR_COST = 4  # per TRELLIS_DPR16X4 (16 words x 4 bits), lutrams_trellis.txt

# Fitted by `python -m bnnflow.calibrate --fit` (see CALIBRATED for which are fitted).
LUT_COEF: dict[str, float] = {
    "mvtu.const": 0.0,
    "mvtu.counter_bits": 2.1099,
    "mvtu.x_in": 0.9958,
    "mvtu.x_fresh": 0.6053,
    "mvtu.x_rot": 0.0,
    "mvtu.x_pick": 1.0,
    "mvtu.x_ram": 1.0,
    "mvtu.lanes": 1.3986,
    "mvtu.pc_bits": 1.0177,
    "mvtu.acc_bits": 2.3074,
    "mvtu.cmp_bits": 1.2834,
    "mvtu.rom_luts": 0.5352,
    "mvtu.int_lane_bits": 1.0,
    "mvtu.queue_luts": 1.0,
    "argmax.const": 14.7323,
    "argmax.lane_bits": 0.8424,
    "swu.const": 43.3718,
    "swu.addr_bits": 13.0513,
    "swu.width": 1.0,
    "swu.mem_luts": 1.0,
    "pool.width": 7.5833,
    "pixels.rom_luts": 1.0,
    "fifo.luts": 1.0,
}
FF_COEF: dict[str, float] = {
    "mvtu.const": 0.0,
    "mvtu.counter_bits": 0.8765,
    "mvtu.data_regs": 0.9846,
    "mvtu.tree_regs": 0.1918,
    "mvtu.rom_regs": 0.9579,
    "mvtu.queue_regs": 1.0,
    "mvtu.dup_regs": 1.0,
    "argmax.const": 0.0,
    "argmax.regs": 1.0025,
    "swu.const": 39.1387,
    "swu.counter_bits": 1.0,
    "swu.width": 1.0,
    "swu.mem_regs": 1.0,
    "pool.width": 1.0,
    "pixels.regs": 1.0,
    "fifo.regs": 1.0,
}

#: Coefficients fitted against Yosys; the rest are structural priors (1 per counted bit).
CALIBRATED = frozenset({
    "lut4:mvtu.const", "lut4:mvtu.counter_bits", "lut4:mvtu.x_in", "lut4:mvtu.x_fresh",
    "lut4:mvtu.x_rot",
    "lut4:mvtu.lanes", "lut4:mvtu.pc_bits", "lut4:mvtu.acc_bits", "lut4:mvtu.cmp_bits",
    "lut4:mvtu.rom_luts", "lut4:argmax.const", "lut4:argmax.lane_bits",
    "ff:mvtu.const", "ff:mvtu.counter_bits", "ff:mvtu.data_regs", "ff:mvtu.tree_regs",
    "ff:mvtu.rom_regs",
    "ff:argmax.const", "ff:argmax.regs",
    "lut4:swu.const", "lut4:swu.addr_bits", "lut4:pool.width", "ff:swu.const",
})


def _bits(n: int) -> int:
    """Bits of a counter over ``range(n)`` (Amaranth ``Signal(range(n))``)."""
    return max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class MemoryMap:
    """Where Yosys puts one memory: ``kind`` is ``"bram"``, ``"logic"`` or ``"lutram"``."""

    kind: str
    ebr: int
    width: int
    depth: int

    @property
    def bits(self) -> int:
        return self.width * self.depth


def ebr_blocks(width: int, depth: int) -> tuple[int, float]:
    """The cheapest packing of a ``width x depth`` memory into DP16KD blocks.

    Yosys tries every block shape; a memory deeper than one block is cut into ``ceil(depth /
    block_depth)`` address slices whose bits it packs side by side, so the block count is
    ``ceil(slices * width / block_width)``, plus a read multiplexer between the slices.

    Returns
    -------
    (blocks, cost)
        Block count and Yosys' cost of that choice (128 per block, 0.5 per mux bit).
    """
    if width < 1 or depth < 1:
        raise ValueError(f"memory of {width} x {depth} bits")
    best = None
    for bw, bd in EBR_SHAPES:
        slices = ceil(depth / bd)
        blocks = ceil(slices * width / bw)
        cost = _EBR_COST * blocks + _MUX_COST * (slices - 1) * width
        if best is None or cost < best[1]:
            best = (blocks, cost)
    return best


def memory_map(width: int, depth: int, writable: bool = False) -> MemoryMap:
    """What Yosys makes of one memory with a synchronous read port: EBR, LUT RAM or logic.

    Parameters
    ----------
    width, depth
        Word width and number of words.
    writable
        A RAM (one write port) rather than an initialised ROM.
    """
    blocks, cost = ebr_blocks(width, depth)
    bit_cost = _RAM_BIT_COST if writable else _ROM_BIT_COST
    # Soft logic first: Yosys keeps a memory in logic when it costs no more than the blocks.
    options = [(width * depth * bit_cost, "logic", 0), (cost, "bram", blocks)]
    if writable:  # LUT RAM is not offered for ROMs (prune_rom)
        slices = ceil(depth / 16)
        dpr = ceil(width / 4) * slices
        options.append((_DPR_COST * dpr + _MUX_COST * (slices - 1) * width, "lutram", 0))
    cost, kind, ebr = min(options, key=lambda o: o[0])
    return MemoryMap(kind, ebr, width, depth)


def rom_luts(depth: int) -> float:
    """LUT4 per output bit of a ``depth``-word ROM in soft logic.

    One LUT4 holds 16 words of one bit; up to 64 words the slice multiplexers (PFUMX,
    L6MUX21) join them for free, beyond that each further level of 4:1 multiplexing costs
    about one LUT4 per 4 inputs.
    """
    if depth <= 1:
        return 0.0
    luts = ceil(depth / 16)
    groups = ceil(depth / 64)
    while groups > 1:
        groups = ceil(groups / 4)
        luts += groups
    return float(luts)


@dataclass(frozen=True)
class LayerCost:
    """Estimated resources of one layer (or of a piece of glue logic).

    Attributes
    ----------
    name
        The layer's name, or ``"argmax"`` / ``"pixels"`` for glue.
    kind
        ``"dense"``, ``"conv"`` (its MVTU and sliding window), ``"pool"``, ``"argmax"`` or
        ``"pixels"``.
    lut4, ff, ebr
        LUT4 slots, flip-flops, DP16KD blocks.
    storage
        Where the weights live (:func:`bnnflow.hw.storage.weight_storage`), ``""`` without
        weights.
    lanes
        ``PE * SIMD``.
    depth
        Fold depth ``NF * SF``.
    weight_ebr, threshold_ebr, buffer_ebr
        The EBR split by memory: weights, thresholds, and the sliding window's line buffer (or
        the pixel ROM).
    features
        The counted structures behind the estimate (``"lut4:..."``/``"ff:..."``), for the
        calibration.
    """

    name: str
    kind: str
    lut4: int
    ff: int
    ebr: int
    storage: str = ""
    lanes: int = 0
    depth: int = 0
    weight_ebr: int = 0
    threshold_ebr: int = 0
    buffer_ebr: int = 0
    features: Mapping[str, float] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Estimate:
    """Estimated resources of a core: its layers, its glue and the totals."""

    layers: tuple[LayerCost, ...]
    glue: tuple[LayerCost, ...]

    @property
    def blocks(self) -> tuple[LayerCost, ...]:
        return self.layers + self.glue

    @property
    def lut4(self) -> int:
        return sum(c.lut4 for c in self.blocks)

    @property
    def ff(self) -> int:
        return sum(c.ff for c in self.blocks)

    @property
    def ebr(self) -> int:
        return sum(c.ebr for c in self.blocks)

    def __getitem__(self, name: str) -> LayerCost:
        for c in self.blocks:
            if c.name == name:
                return c
        raise KeyError(name)


def tree_profile(n: int, leaf: int = 1, levels_per_stage=None) -> tuple[int, int, int]:
    """The pipelined adder tree of :func:`bnnflow.hw.popcount.adder_tree` over ``n`` terms of
    ``leaf`` bits: adjacent terms added pairwise level by level, a register after each
    stage's levels (:func:`~bnnflow.hw.popcount.stage_levels`).

    Returns
    -------
    (adder_bits, stage_reg_bits, stages)
        Sum of the adders' result widths; bits of the registers between stages (the final
        result register not included); registers on the path.
    """
    from bnnflow.hw.popcount import LEVELS_PER_STAGE, adder_level, stage_levels, tree_levels

    per = LEVELS_PER_STAGE if levels_per_stage is None else levels_per_stage
    schedule = stage_levels(tree_levels(n), per)
    added = []  # the width of every adder's result

    def add(a: int, b: int) -> int:
        added.append(max(a, b) + 1)
        return added[-1]

    widths = [leaf] * n
    reg_bits = 0
    for stage, levels in enumerate(schedule):
        for _ in range(levels):
            widths = adder_level(widths, add)
        if stage < len(schedule) - 1:
            reg_bits += sum(widths)
    return sum(added), reg_bits, len(schedule)


def weight_columns(weights, pe: int, simd: int) -> tuple[int, int]:
    """Bit columns of a weight memory (:func:`bnnflow.packing.weight_words` layout) that vary
    over its words, and those that are constantly 1.

    Yosys drops a ROM column that never changes (``opt_mem``) and keeps a constant instead, so
    only the varying ones take memory or LUTs; a register after a constant-1 column stays (it
    starts at 0).
    """
    import numpy as np

    w = np.asarray(weights, np.uint8)
    mh, mw = w.shape
    cols = w.reshape(mh // pe, pe, mw // simd, simd).transpose(1, 3, 0, 2).reshape(pe * simd, -1)
    const = (cols == cols[:, :1]).all(axis=1)
    return int((~const).sum()), int((const & (cols[:, 0] == 1)).sum())


def word_columns(words, width: int) -> tuple[int, int]:
    """Like :func:`weight_columns`, for a memory given as its words."""
    first, varying = words[0], 0
    for w in words[1:]:
        varying |= w ^ first
    ones = first & ~varying & ((1 << width) - 1)
    return varying.bit_count(), ones.bit_count()


def _rom(kind: str, columns: tuple[int, int], depth: int) -> tuple[float, float, int]:
    """LUT4, FF and EBR of a ROM read four cycles after its address (the MVTU's storage:
    block RAM plus three registers, or a three times registered address and a LUT ROM), with
    ``columns`` = (varying, constant-1) bit columns."""
    varying, ones = columns
    if kind == "const" or varying == 0:
        return 0.0, 0.0, 0
    if kind == "bram":
        # The MVTU cuts these memories into blocks itself (rom_blocks) and marks them
        # ram_style/rom_style "block", so Yosys takes block RAM even where memory_map() would
        # pick logic. With one bank its read is registered three times; with several, each
        # bank's read twice, then a multiplexer (about half a LUT4 per input bit) picks one
        # into the third register.
        from bnnflow.hw.fanout import copies_for
        from bnnflow.hw.mvtu import pick_bits
        from bnnflow.hw.storage import rom_banks, rom_blocks

        banks = -(-depth // rom_banks(varying, depth)[1])
        bits = varying + ones
        if banks == 1:
            return 0.0, float(3 * bits), rom_blocks(varying, depth)
        # the bank index's copies, and the bank index delayed beside the first registers
        picks = (copies_for(bits, pick_bits(banks)) + 1) * _bits(banks)
        return (0.5 * bits * (banks - 1), float((2 * banks + 1) * bits + picks),
                rom_blocks(varying, depth))
    return varying * rom_luts(depth), float(varying + ones + 2 * _bits(depth)), 0


def _mvtu(weights, thresholds: list[int] | None, pe: int, simd: int, in_width: int, eb: int,
          bound: int, storage: str | None = None) -> dict:
    """Counted structures of one MVTU (:class:`bnnflow.hw.mvtu.MVTU`) of ``weights`` (the
    ``(MH, MW)`` bit matrix it stores) and ``thresholds`` (its threshold words, ``None`` for
    the scores layer), its weights stored as ``storage`` (by default as its fold depth
    chooses)."""
    from bnnflow import packing
    from bnnflow.hw.fanout import FANOUT, copies_for
    from bnnflow.hw.mvtu import BLOCKS_PER_ADDR, COPY_GROUP, MVTU, PE_PER_COPY
    from bnnflow.hw.popcount import popcount_width
    from bnnflow.hw.storage import weight_storage

    mh, mw = weights.shape
    hidden = thresholds is not None
    nf, sf = mh // pe, mw // simd
    depth = nf * sf
    lanes = pe * simd
    storage = weight_storage(depth) if storage is None else storage
    beats = ceil(mw * eb / in_width)
    integer = eb > 1
    acc_bits = packing.signed_threshold_bits(bound) if integer else popcount_width(mw)
    lane_bits = acc_bits if integer else popcount_width(simd)
    out_width = pe if hidden else pe * popcount_width(mw)
    adder_bits, stage_regs, stages = tree_profile(simd, eb + 1 if integer else 1)
    late_regs = 0
    if storage == "bram" and not integer:
        # The MVTU's trees over xnor_pairs (their LUTs are the "lanes" feature's), waiting a
        # register at the end where that takes a stage less.
        adder_bits, stage_regs, pair_stages = tree_profile(-(-simd // 2), 2)
        late_regs = (stages - pair_stages) * pe * popcount_width(simd)

    x_copies = copies_for(pe, PE_PER_COPY)  # the input slice's register, per PE_PER_COPY PEs
    x_groups = copies_for(x_copies, COPY_GROUP)  # and the registers between (_copy_tree)
    columns = weight_columns(weights, pe, simd)
    if storage == "lut" and not integer:
        # A LUT4 holds an 8-entry ROM and the XNOR with the input bit together (a deeper ROM
        # takes one more LUT4 for the XNOR); the S4 register takes the XNOR bits (every lane,
        # constant columns too: x varies).
        w_luts = lanes * (1.0 if depth <= 8 else rom_luts(depth) + 1)
        w_regs, weight_ebr = float(lanes + 2 * _bits(depth)), 0
        x_regs = simd * (1 + x_groups + x_copies)
    else:
        w_luts, w_regs, weight_ebr = _rom(storage, columns, depth)
        x_regs = (simd * eb * (2 + x_groups + x_copies)
                  + (simd * (eb + 1) * (1 + x_groups + x_copies) if integer else 0))
    t_luts = t_regs = 0.0
    threshold_ebr = 0
    if hidden:
        tbits = acc_bits if integer else packing.threshold_bits(mw)
        t_luts, t_regs, threshold_ebr = _rom(
            weight_storage(nf), word_columns(thresholds, pe * (tbits + 1)), nf)
    queue_luts, queue_regs = _queue(out_width + 1, MVTU.queue_depth(simd, sf))
    # Copies of high-fanout registers (bnnflow.hw.fanout): the compute register's load, step
    # and fresh-vector decisions, the fill register's shift enable, a LUT ROM's address, the
    # accumulator's enable and clear, the picked slice's index.
    buffer = MVTU.input_buffer(in_width, simd, sf, eb)
    ram, picking = buffer == "ram", buffer == "pick"
    # a second multiplexer on the input register (none with a LUT RAM buffer)
    shifting = MVTU.loads_shifting(beats, depth) and not ram
    decisions = 1 + (not picking) + shifting
    dup_regs = 0 if ram else decisions * copies_for(mw * eb) + copies_for(in_width * beats)
    slice_bits = simd * eb
    if ram:
        # per FANOUT slice bits: a write enable, write and read addresses (slot and bank),
        # and the gathering shift register's enables
        dup_regs += (copies_for(slice_bits) * (1 + 2 * (_bits(sf) + 1))
                     + copies_for(slice_bits - in_width))
    if picking:
        dup_regs += copies_for(simd * eb) * _bits(sf)
    ram_luts = 0.0
    if ram:
        # TRELLIS_DPR16X4 (16 words of 4 bits, 4 LUT4 each) for both banks, and a two-way
        # multiplexer per slice bit for each 16-word block beyond the first.
        rows = -(-(2 << (sf - 1).bit_length()) // 16)
        ram_luts = _DPR_COST * rows * -(-simd * eb // 4) + simd * eb * (rows - 1)
    if storage == "lut":
        dup_regs += copies_for(lanes) * _bits(depth)
    if storage == "bram":
        dup_regs += copies_for(weight_ebr, BLOCKS_PER_ADDR) * _bits(depth)
    dup_regs += 2 * -(-pe // max(1, FANOUT // acc_bits))
    flag_bits = 4 + _bits(nf)
    counter_bits = _bits(depth) + _bits(sf) + _bits(nf) + _bits(beats)
    if ram:  # the write side's lane and slice counters, and the two bank bits
        counter_bits += _bits(simd * eb // in_width) + _bits(sf) + 2
    lut = {
        "mvtu.const": 1,
        "mvtu.counter_bits": counter_bits,
        # Rotating: one load-or-rotate multiplexer per bit, a second one where it loads the
        # shifting fill register. Picking: the fresh-or-filled multiplexer alone, then an
        # SF-way one per slice bit (a LUT4 for two slices, two for three). A LUT RAM: none.
        "mvtu.x_in": mw * eb if not ram and (shifting or not picking) else 0,
        "mvtu.x_fresh": mw * eb if shifting and not picking else 0,
        "mvtu.x_rot": mw * eb if sf > 1 and buffer == "rotate" else 0,
        "mvtu.x_pick": simd * eb * (1 if sf == 2 else 2) if picking else 0,
        "mvtu.x_ram": ram_luts,
        "mvtu.lanes": lanes if storage == "bram" and not integer else 0,
        "mvtu.pc_bits": 0 if integer else pe * adder_bits,
        "mvtu.int_lane_bits": pe * (simd * eb + adder_bits) if integer else 0,
        "mvtu.acc_bits": pe * acc_bits if sf > 1 else 0,
        "mvtu.cmp_bits": pe * acc_bits if hidden else 0,
        "mvtu.rom_luts": w_luts + t_luts,
        "mvtu.queue_luts": queue_luts,
    }
    ff = {
        "mvtu.const": 1,
        "mvtu.counter_bits": counter_bits + flag_bits * (stages + 4),
        "mvtu.data_regs": ((slice_bits if ram else in_width * (beats + 1) + mw * eb)
                           + x_regs + pe * lane_bits + pe * acc_bits + out_width),
        "mvtu.tree_regs": pe * stage_regs + late_regs,
        "mvtu.rom_regs": w_regs + t_regs,
        "mvtu.queue_regs": queue_regs,
        "mvtu.dup_regs": dup_regs,
    }
    return {"lut": lut, "ff": ff, "storage": storage, "lanes": lanes, "depth": depth,
            "weight_ebr": weight_ebr, "threshold_ebr": threshold_ebr}


def _soft_ram_luts(kind: str, width: int, depth: int) -> float:
    """LUT4 of a writable memory Yosys did not put in block RAM: ``DPR16X4`` LUT RAM (six
    slots each, read multiplexers beyond 16 words) for ``kind == "lutram"``, else logic (a
    register per bit and a ROM-like read)."""
    if kind == "lutram":
        return 6 * ceil(width / 4) * ceil(depth / 16) + width * rom_luts(ceil(depth / 16))
    return width * (rom_luts(depth) + 1)


def _queue(width: int, depth: int) -> tuple[float, float]:
    """LUT4 and FF of a credit-fed output queue (Amaranth ``SyncFIFO``, asynchronous read):
    its LUT RAM, two pointers and a level counter, and the credit counter beside it."""
    mem = memory_map(width, depth, writable=True)
    luts = _soft_ram_luts(mem.kind, width, depth)  # an asynchronous read: never block RAM
    counters = 4 * _bits(depth + 1)
    return luts + 2 * counters, counters + (width * depth if mem.kind == "logic" else 0)


def _window(in_shape, kernel: int, stride: int, padding: int, elems: int, eb: int) -> dict:
    """Counted structures of a sliding window (:class:`bnnflow.hw.swu.SlidingWindow`)."""
    from bnnflow.hw.storage import port_columns
    from bnnflow.hw.swu import QUEUE_DEPTH

    c, h, w = in_shape
    width = elems * eb
    nb = c // elems
    rows = kernel + stride
    depth = rows * w * nb
    oh = (h + 2 * padding - kernel) // stride + 1
    ow = (w + 2 * padding - kernel) // stride + 1
    # The line buffer is cut into port_columns, one memory each.
    mem_luts = mem_regs = 0.0
    ebr = 0
    for lo, hi in port_columns(width):
        cw = hi - lo
        mem = memory_map(cw, depth, writable=True)
        ebr += mem.ebr
        if mem.kind != "bram":
            mem_luts += _soft_ram_luts(mem.kind, cw, depth)
            # The synchronous read, emulated after the asynchronous LUT RAM; or every bit.
            mem_regs += cw if mem.kind == "lutram" else cw * depth
    span = _bits(h + w + 2 * stride + 2 * padding + kernel + 1)
    counter_bits = (_bits(rows + 1) + 2 * _bits(depth) + _bits(w * nb) + _bits(nb)
                    + 2 * _bits(kernel) + _bits(ow) + _bits(oh) + 2 * span)
    queue_luts, queue_regs = _queue(width + 1, QUEUE_DEPTH)
    lut = {"swu.const": 1, "swu.addr_bits": _bits(2 * depth), "swu.width": width,
           "swu.mem_luts": mem_luts + queue_luts}
    ff = {"swu.const": 1, "swu.counter_bits": counter_bits, "swu.width": width,
          "swu.mem_regs": mem_regs + queue_regs}
    return {"lut": lut, "ff": ff, "ebr": ebr}


def _fifo(layer, elems: int) -> dict:
    """Counted structures of the row FIFO in front of a window or pool that is not first
    (:class:`bnnflow.hw.fifo.RowFifo`, :func:`bnnflow.hw.core.fifo_depth`). Not calibrated:
    its memory as Yosys maps it, two addresses and two level counters, the write and read
    data registers, and the credit-fed output queue."""
    from bnnflow.hw.core import fifo_depth
    from bnnflow.hw.fifo import QUEUE_DEPTH

    width, depth = elems + 1, fifo_depth(layer, elems)
    mem = memory_map(width, depth, writable=True)
    mem_luts = 0.0 if mem.kind == "bram" else _soft_ram_luts(mem.kind, width, depth)
    counters = 4 * _bits(depth + 1)
    soft = width * depth if mem.kind == "logic" else 0
    queue_luts, queue_regs = _queue(width, QUEUE_DEPTH)
    return {"lut": {"fifo.luts": mem_luts + 2 * counters + queue_luts},
            "ff": {"fifo.regs": counters + 3 * width + 4 + soft + queue_regs},
            "ebr": mem.ebr}


def _merge(*dicts: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def block_features(net: Network, folding: Folding, in_width: int = 8,
                   storages: Mapping[str, str] | None = None) -> list[dict]:
    """The counted structures of every block of the core, in pipeline order.

    ``storages`` (layer name -> ``"const"``/``"lut"``/``"bram"``) overrides the weight storage
    of the layers it names, as :func:`bnnflow.hw.core.storage_plan` may under an EBR budget.

    Returns
    -------
    list of dict
        One per layer, then the glue (``pixels`` first if any, ``argmax`` last); each with
        ``name``, ``kind``, ``lut`` and ``ff`` (feature -> count), ``ebr`` (fixed by the
        memory mapping), ``storage``, ``lanes``, ``depth`` and the EBR split.
    """
    from bnnflow import packing
    from bnnflow.hw.popcount import popcount_width

    folding.validate(net)
    blocks, glue = [], []
    eb = 1
    if net.input.binary:
        elems = in_width
    else:
        pb = packing.pixel_bits(net.input.pixel_max)
        elems = max(1, in_width // pb)
        eb = packing.level_bits(net.input.levels)
        depth = len(net.input.levels)
        # One asynchronous ROM read per pixel of a beat; Yosys moves the output register into
        # the read port, which then may go to block RAM (two read ports per DP16KD).
        mem = memory_map(eb, depth)
        if mem.kind == "bram":
            glue.append({"name": "pixels", "kind": "pixels",
                         "buffer_ebr": mem.ebr * ceil(elems / 2),
                         "lut": {"pixels.rom_luts": 0}, "ff": {"pixels.regs": 2}})
        else:
            glue.append({"name": "pixels", "kind": "pixels",
                         "lut": {"pixels.rom_luts": elems * eb * rom_luts(depth)},
                         "ff": {"pixels.regs": elems * eb + 2}})
    bound = net.input.max_level
    pixel_order = False  # as in BnnCore: activations travel as HWC pixels after a conv
    for index, (layer, shape) in enumerate(zip(net.layers, net.shapes(), strict=False)):
        fifo = {"lut": {}, "ff": {}, "ebr": 0}
        if index > 0 and isinstance(layer, (Conv, MaxPool)):
            fifo = _fifo(layer, elems)
        if isinstance(layer, MaxPool):
            win = _window(layer.in_shape, layer.kernel, layer.stride, 0, elems, 1)
            width = elems
            blocks.append({"name": layer.name, "kind": "pool",
                           "buffer_ebr": win["ebr"] + fifo["ebr"],
                           "lut": _merge(win["lut"], {"pool.width": width}, fifo["lut"]),
                           "ff": _merge(win["ff"], {"pool.width": width}, fifo["ff"])})
            continue
        f = folding[layer.name]
        layer_eb = eb if layer.integer_input else 1
        if isinstance(layer, Conv):
            weights, pixel_order = packing.conv_weight_matrix(layer), True
        elif pixel_order:
            weights, pixel_order = packing.hwc_dense_weights(layer.weights, shape), False
        else:
            weights = layer.weights
        thresholds = None
        if layer.thresholds is not None and layer.integer_input:
            thresholds = packing.signed_threshold_words(layer.thresholds, bound * layer.fan_in,
                                                        f.pe)
        elif layer.thresholds is not None:
            thresholds = packing.threshold_words(layer.thresholds, layer.fan_in, f.pe)
        unit = _mvtu(weights, thresholds, f.pe, f.simd, elems * layer_eb, layer_eb,
                     bound * layer.fan_in, (storages or {}).get(layer.name))
        entry = {"name": layer.name, "kind": "dense", "buffer_ebr": 0, **unit}
        if isinstance(layer, Conv):
            win = _window(layer.in_shape, layer.kernel, layer.stride, layer.padding, elems,
                          layer_eb)
            entry.update(kind="conv", buffer_ebr=win["ebr"] + fifo["ebr"],
                         lut=_merge(unit["lut"], win["lut"], fifo["lut"]),
                         ff=_merge(unit["ff"], win["ff"], fifo["ff"]))
        blocks.append(entry)
        elems, eb = f.pe, 1
    final = net.layers[-1]
    classes, pe, n = final.out_features, folding[final.name].pe, final.in_features
    cw, sw = popcount_width(n), n.bit_length() + 1
    beats = classes // pe
    cls_bits = max(1, _bits(classes))
    glue.append({
        "name": "argmax", "kind": "argmax",
        # Per lane: its compare and value/index multiplexer in the max tree, and its score.
        "lut": {"argmax.const": 1, "argmax.lane_bits": pe * (2 * cw + cls_bits + sw)},
        "ff": {"argmax.const": 1,
               "argmax.regs": ((beats - 1) * pe * sw + classes * sw + 2 * cls_bits + cw
                               + _bits(beats) + _bits(classes))},
    })
    return blocks + glue


def _cost(block: Mapping, lut_coef: Mapping[str, float], ff_coef: Mapping[str, float]
          ) -> LayerCost:
    lut = sum(lut_coef[k] * v for k, v in block["lut"].items())
    ff = sum(ff_coef[k] * v for k, v in block["ff"].items())
    wb, tb, bb = block.get("weight_ebr", 0), block.get("threshold_ebr", 0), \
        block.get("buffer_ebr", 0)
    features = {**{f"lut4:{k}": v for k, v in block["lut"].items()},
                **{f"ff:{k}": v for k, v in block["ff"].items()}}
    return LayerCost(block["name"], block["kind"], max(0, round(lut)), max(0, round(ff)),
                     wb + tb + bb, block.get("storage", ""), block.get("lanes", 0),
                     block.get("depth", 0), wb, tb, bb, features)


def estimate(net: Network, folding: Folding, in_width: int = 8, *,
             storages: Mapping[str, str] | None = None,
             lut_coef: Mapping[str, float] | None = None,
             ff_coef: Mapping[str, float] | None = None) -> Estimate:
    """Estimate the LUT4, FF and EBR of the core for ``net`` at ``folding``.

    Parameters
    ----------
    net, folding, in_width
        As for :class:`bnnflow.hw.core.BnnCore`.
    storages
        Weight storage per layer name where it is not the fold depth's default
        (:func:`bnnflow.hw.storage.weight_storage`), e.g. the plan
        :func:`bnnflow.hw.core.storage_plan` makes under an EBR budget.
    lut_coef, ff_coef
        Coefficients to use instead of :data:`LUT_COEF` / :data:`FF_COEF` (calibration).

    Returns
    -------
    Estimate
        One :class:`LayerCost` per layer (max-pools included), the glue (pixel ROM, argmax)
        and the totals.

    Raises
    ------
    bnnflow.folding.FoldingError
        If the folding does not fit the network.
    """
    lut_coef = LUT_COEF if lut_coef is None else lut_coef
    ff_coef = FF_COEF if ff_coef is None else ff_coef
    costs = [_cost(b, lut_coef, ff_coef)
             for b in block_features(net, folding, in_width, storages)]
    layers = tuple(c for c in costs if c.kind in ("dense", "conv", "pool"))
    glue = tuple(c for c in costs if c.kind not in ("dense", "conv", "pool"))
    return Estimate(layers, glue)
