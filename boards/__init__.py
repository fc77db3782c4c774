"""Boards: platforms per board family, bitstream builds, the bitstream cache, programming.

* :mod:`.registry` -- :class:`~.registry.BoardInfo`, ``BOARDS``, ``get_board``, ``list_boards``
* :mod:`.ulx3s`, :mod:`.orangecrab`, :mod:`.colorlight`, :mod:`.ecp5_evn` -- one file per family
* :mod:`.pll` -- ECP5 PLL settings; :mod:`.top` -- ``BoardTop``
* :mod:`.build` -- ``build()``; :mod:`.cache` -- its bitstream cache
* :mod:`.program` -- ``program()`` with openFPGALoader; :mod:`.toolchain` -- tools and parsers

Nothing is imported here, so ``import bnnflow.boards`` stays cheap.
"""

__all__: list[str] = []
