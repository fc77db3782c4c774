"""Move the flip-flop after a block-RAM read into the DP16KD's own output register.

An ECP5 DP16KD read without its output register (``REGMODE_x = "NOREG"``) reaches its pins
about 5.8 ns after the clock (nextpnr's timing database, speed grade 6), which leaves 2.2 ns
of a 125 MHz clock to route to a flip-flop; a block placed twenty rows from its read
register, as nextpnr does now and then, misses it. With ``REGMODE_x = "OUTREG"`` the block
registers its data itself, one cycle later, and the clock-to-output delay is that of a
register. Yosys' ECP5 block-RAM mapping never sets it (``brams_16kd.txt`` has no such
option), so the generator registers every block-RAM read in the fabric
(:meth:`bnnflow.hw.mvtu.MVTU._storage`) and this pass, run on Yosys' JSON netlist before
nextpnr, moves those registers into the blocks.

A port is rewritten only when the result is the same circuit, cycle for cycle:

* the DP16KD is in true dual-port mode (data widths up to 18; which pins the pseudo
  dual-port 36-bit mode's output register drives is not documented, and the generator does
  not use that mode, see :func:`bnnflow.hw.mvtu._bram_read`);
* the port's output register is off, its output enable ``OCEx`` is tied high and its reset
  ``RSTx`` tied low, and its clock is not inverted;
* every output bit of the port that is used at all drives exactly one load, the data input
  of a ``TRELLIS_FF`` on the port's clock net, with its clock enable tied high, no set/reset
  (``LSR`` tied low), reset value 0, no ``keep`` attribute, and no module port on that net.

Then the port's ``REGMODE`` becomes ``"OUTREG"``, each flip-flop is deleted and its output
net is driven by the block's output pin instead. The output register, like the flip-flop,
holds 0 after configuration.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

__all__ = ["absorb_output_registers"]

_PORT_BITS = 18


def _const(bits: list, value: str) -> bool:
    return bits == [value]


def _plain_ff(cell: dict, clock: list) -> bool:
    """A flip-flop that registers its input every cycle of ``clock``, with no set/reset."""
    if cell["type"] != "TRELLIS_FF":
        return False
    params, conns = cell["parameters"], cell["connections"]
    keep = cell.get("attributes", {}).get("keep")
    if keep is not None and _width(keep):
        return False
    ce_on = params.get("CEMUX", "CE").strip() == "1" or _const(conns.get("CE", ["1"]), "1")
    lsr_off = _const(conns.get("LSR", ["0"]), "0") and params.get("LSRMUX", "LSR") == "LSR"
    return (conns.get("CLK") == clock and params.get("CLKMUX", "CLK") == "CLK" and ce_on
            and lsr_off and params.get("REGSET", "RESET") == "RESET")


def _width(value) -> int:
    return int(value, 2) if isinstance(value, str) else int(value)


def absorb_output_registers(netlist: Path, top: str | None = None) -> dict:
    """Rewrite ``netlist`` (Yosys JSON) in place, moving read registers into DP16KD ports.

    Parameters
    ----------
    netlist
        The JSON netlist ``synth_ecp5`` wrote.
    top
        Name of the top module; by default the one with the ``top`` attribute.

    Returns
    -------
    dict
        ``ports``: DP16KD ports now using their output register, ``bits``: flip-flops
        removed, ``left``: read ports (with used outputs) left as they were.
    """
    doc = json.loads(Path(netlist).read_text())
    modules = doc["modules"]
    if top is None:
        top = next((name for name, mod in modules.items()
                    if _width(mod.get("attributes", {}).get("top", 0))), None)
    if top is None or top not in modules:
        raise ValueError(f"{netlist}: no top module {top or ''} in the netlist")
    module = modules[top]
    cells = module["cells"]

    # Every load of every net bit: (cell name, port), and the bits module ports carry.
    loads = defaultdict(list)
    for name, cell in cells.items():
        directions = cell.get("port_directions", {})
        for port, bits in cell["connections"].items():
            if directions.get(port, "input") != "output":
                for bit in bits:
                    if isinstance(bit, int):
                        loads[bit].append((name, port))
    port_bits = {bit for p in module.get("ports", {}).values() for bit in p["bits"]
                 if isinstance(bit, int)}

    ports = bits = left = 0
    doomed = []
    for cell in cells.values():
        if cell["type"] != "DP16KD":
            continue
        params, conns = cell["parameters"], cell["connections"]
        pdp = any(_width(params.get(f"DATA_WIDTH_{p}", 18)) > _PORT_BITS for p in "AB")
        for p in "AB":
            used = {}
            for k in range(_PORT_BITS):
                out = conns.get(f"DO{p}{k}", [])
                if out and isinstance(out[0], int) and (loads.get(out[0]) or out[0] in port_bits):
                    used[k] = out[0]
            if not used:
                continue
            clock = conns.get(f"CLK{p}")
            ffs = []
            ok = (not pdp and params.get(f"REGMODE_{p}", "NOREG") == "NOREG"
                  and params.get(f"CLK{p}MUX", f"CLK{p}") == f"CLK{p}"
                  and _const(conns.get(f"OCE{p}", []), "1")
                  and _const(conns.get(f"RST{p}", []), "0")
                  and clock is not None and isinstance(clock[0], int))
            for k, bit in used.items():
                if not ok:
                    break
                sinks = loads.get(bit, [])
                if bit in port_bits or len(sinks) != 1 or sinks[0][1] != "DI":
                    ok = False
                    break
                ff = cells[sinks[0][0]]
                if not _plain_ff(ff, clock):
                    ok = False
                    break
                ffs.append((k, sinks[0][0]))
            if not ok:
                left += 1
                continue
            for k, ff_name in ffs:
                conns[f"DO{p}{k}"] = list(cells[ff_name]["connections"]["Q"])
                doomed.append(ff_name)
            params[f"REGMODE_{p}"] = "OUTREG"
            ports += 1
            bits += len(ffs)
    for name in doomed:
        del cells[name]
    Path(netlist).write_text(json.dumps(doc))
    return {"ports": ports, "bits": bits, "left": left}
