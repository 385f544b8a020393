"""How close a process is to Linux's cap on memory maps, which XLA:CPU spends per kernel.

Every kernel of an XLA:CPU executable is mapped into memory on its own, and Linux caps a
process at `vm.max_map_count` maps (65,530 by default). A job that keeps many large compiled
programs alive at once (every row's serving step, loaded together for interleaved timing)
can run out, and then LLVM aborts the process ("Unable to allocate section memory") instead
of raising. Jobs check their headroom here and say so while they can.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

_MAPS = Path("/proc/self/maps")
_LIMIT = Path("/proc/sys/vm/max_map_count")


def memory_maps() -> tuple[int, int] | None:
    """(memory maps this process holds, the most it may hold), or None off Linux."""
    try:
        held = len(_MAPS.read_bytes().splitlines())
        limit = int(_LIMIT.read_text())
    except (OSError, ValueError):
        return None
    return held, limit


def check_memory_maps(what: str, warn_at: float = 0.8) -> tuple[int, int] | None:
    """Logs this process's memory maps after `what`, with a warning from `warn_at` of the
    limit on: more compiled programs in this process may abort it."""
    maps = memory_maps()
    if maps is None:
        return None
    held, limit = maps
    if held >= warn_at * limit:
        log.warning(
            "%s: this process holds %d of the %d memory maps Linux allows it "
            "(vm.max_map_count); XLA:CPU maps each kernel on its own, and more compiled "
            "programs may abort it in LLVM. Raise the limit (sysctl -w vm.max_map_count=262144) "
            "or compile fewer programs (fewer rows, length buckets or compaction buckets).",
            what,
            held,
            limit,
        )
    else:
        log.info("%s: %d of %d memory maps", what, held, limit)
    return maps
