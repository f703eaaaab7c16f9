"""The lease clock: wakes at the next lease expiry and hands expired tasks back to the lifecycle
(retry after backoff, or dead letter)."""

from __future__ import annotations

import asyncio

from paradecom.logs import get_logger

from .core import DecompositionLeader

log = get_logger("paradecom.leader.lease_clock")

# Leases can be shortened (a runner's stream dropped) without the clock hearing of it; it looks
# again at least this often.
MAX_SLEEP_S = 0.5


class LeaseClock:
    def __init__(self, leader: DecompositionLeader) -> None:
        self.leader = leader

    def tick(self) -> int:
        """Expire every lease past its deadline now; returns how many projects changed."""
        return self.leader.expire_due()

    async def run(self) -> None:
        while True:
            wait = self.leader.next_lease_expiry_seconds()
            sleep = MAX_SLEEP_S if wait is None else min(wait, MAX_SLEEP_S)
            # A lease expires at its deadline, not before: wait past it by a millisecond.
            await asyncio.sleep(sleep + 0.001)
            try:
                changed = self.tick()
            except Exception:
                # A failing tick (a locked or full disk) must not stop the clock: log, try again.
                log.exception("lease clock tick failed")
                continue
            if changed:
                log.info("leases expired", projects=changed)
