"""The receipts of our tasks, checked off the call path: a result's receipt is stored as it came, checked with
the others that came in the same moment once the calls have returned (:class:`ReceiptChecks`), and checked at once
when it is read before that (:func:`settle_receipt`), so that ``receipt_valid`` is never reported unchecked."""

from __future__ import annotations

import asyncio
import logging

from coworker.core.tasks import LIVE, TaskState, receipt_problem
from coworker.runtime.link import Link
from coworker.store.records import Store, TaskRecord

log = logging.getLogger("coworker.runtime")

CHECK_GATHER = 0.02  # seconds receipts gather before they are checked together, off the call path


def settle_receipt(store: Store, task: TaskRecord, wallet: str) -> None:
    """Check now the receipt of one of our ended tasks that is still unchecked (and store the verdict), so that
    ``receipt_valid`` is never reported before the receipt was checked."""
    if (store.closed or task.direction != "out" or task.receipt is None or task.receipt_valid is not None
            or task.state in LIVE):
        return
    problem = receipt_problem(task.receipt, task_id=task.id, skill=task.skill, caller=wallet, provider=task.peer,
                              status="completed" if task.state == TaskState.COMPLETED else "failed")
    if problem is not None:
        log.warning("task %s: the receipt from %s does not verify: %s", task.id, task.peer, problem)
    store.update_task(task, receipt_valid=problem is None)


class ReceiptChecks:
    """Checks the receipts of our tasks off the call path: the receipts that came in within
    :data:`CHECK_GATHER` seconds are checked together, on the loop, after the calls they belong to have returned
    (measured: a worker thread costs more in hand-overs and contention for the interpreter than it saves)."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._batch: list[TaskRecord] = []

    def add(self, task: TaskRecord) -> None:
        self._batch.append(task)
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_later(CHECK_GATHER, self._check)

    def _check(self) -> None:
        batch, self._batch = self._batch, []
        for task in batch:
            settle_receipt(self._link.store, task, self._link.wallet)
