"""Audit rows written in the background, in batches, so that no request waits for the database.

Guard decisions, failed authentication and refused bypasses are audited on the request path; a request must not
be held up (or fail) because the store is busy. Rows go into a bounded queue that one thread drains in batches
(one transaction each, which also serialises the hash chain). A full queue drops the row and counts it in
`guard_audit_dropped_total`, logged: under a flood of bad requests the service keeps serving.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from typing import Any

from guard_service.metrics import definitions as metrics
from guard_service.store.base import AuditEntry, PolicyStore

log = logging.getLogger(__name__)
BATCH = 256


class AuditSink:
    def __init__(self, store: PolicyStore, max_queue: int = 10_000):
        self.store = store
        self._queue: queue.Queue[AuditEntry | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._run, name="audit-sink", daemon=True)
        self._thread.start()

    def record(self, actor: str, action: str, request_id: str | None = None, version: int | None = None,
               detail: dict[str, Any] | None = None) -> None:
        """Never blocks."""
        try:
            self._queue.put_nowait(AuditEntry(actor=actor, action=action, request_id=request_id, version=version,
                                              detail=detail))
        except queue.Full:
            metrics.AUDIT_DROPPED.inc()
            log.warning("audit queue full: dropped %s by %s", action, actor)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, stop = [item], False
            while len(batch) < BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch)
            for _ in batch:
                self._queue.task_done()
            if stop:
                return

    def _write(self, batch: list[AuditEntry]) -> None:
        for attempt in itertools.count():
            try:
                self.store.record_many(batch)
                return
            except Exception:  # busy or unreachable store: keep the rows, retry (the queue bounds memory)
                log.exception("audit write of %d rows failed; retrying", len(batch))
                time.sleep(min(30.0, 0.5 * 2 ** attempt))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued row is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:
            return
        self._thread.join(timeout_s)
