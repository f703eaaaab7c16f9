"""Group commit of results: the SubmitResult calls that arrive together share one transaction.

A COMMIT costs more than the rest of a result's work (the pages it changed are appended to the
WAL: the task rows and their seven indexes, the project row), and results that arrive together
change mostly the same pages. So a result is not accepted on its own: it joins the group being
gathered, and the group is accepted in one transaction once the event loop has run everything
that was ready (other results among it). Each caller is answered only after the COMMIT that holds
its result, so the durability promise (docs/architecture.md, "The promises") holds as before.

No timer: a lone result waits one or a few turns of the event loop (microseconds), never a
deadline, and under load a group is as large as what arrived while the previous one was stored.
"""

from __future__ import annotations

import asyncio

from .lifecycle import Accepted, Result, TaskLifecycle

# The group is stored once a turn of the event loop brought no new result, or after this many turns.
MAX_TURNS = 4
# ... or once it holds this many results: a bound on the transaction and on the wait of the first.
MAX_GROUP = 256


class ResultGroups:
    """Gathers results and accepts each group in one transaction (`TaskLifecycle.accept_many`)."""

    def __init__(self, lifecycle: TaskLifecycle) -> None:
        self.lifecycle = lifecycle
        self._pending: list[tuple[Result, asyncio.Future[Accepted]]] = []
        self._scheduled = False
        self._seen = 0
        self._turns = 0
        # How many groups and results were stored (the benchmark and the tests read them).
        self.groups = 0
        self.results = 0

    async def accept(self, result: Result) -> Accepted:
        """Accept `result` with whatever else arrives with it; returns once it is committed. Raises
        what `TaskLifecycle.accept` would have raised for it (a LeaseError as a rule)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted] = loop.create_future()
        self._pending.append((result, future))
        if len(self._pending) >= MAX_GROUP:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            self._seen, self._turns = len(self._pending), 0
            loop.call_soon(self._turn)
        # A caller that gives up (deadline, cancelled RPC) cancels only its wait: its result stays
        # in the group and is stored, and the runner's resend is answered as a duplicate.
        return await future

    def _turn(self) -> None:
        """One turn of the event loop passed: wait another while results keep arriving."""
        if not self._scheduled:
            return  # stored already, the group having filled up
        self._turns += 1
        if len(self._pending) > self._seen and self._turns < MAX_TURNS:
            self._seen = len(self._pending)
            asyncio.get_running_loop().call_soon(self._turn)
            return
        self._flush()

    def accept_alone(self, result: Result) -> Accepted:
        """Accept `result` now, in a transaction of its own (no event loop needed); returns once it
        is committed. Raises what `accept` would."""
        (answer,) = self._store([result])
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _store(self, results: list[Result]) -> list[Accepted | Exception]:
        """The one call into the lifecycle for results, whether grouped or alone."""
        answers = self.lifecycle.accept_many(results)
        self.groups += 1
        self.results += len(results)
        return answers

    def _flush(self) -> None:
        group, self._pending = self._pending, []
        self._scheduled = False
        if not group:
            return
        answers = self._store([result for result, _ in group])
        for (_, future), answer in zip(group, answers, strict=True):
            if future.cancelled():
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)
