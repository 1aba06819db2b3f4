"""The one thread that touches the model: a FIFO queue of jobs, each with an event log.

Every forward, generation and attribution of `saekit serve` runs here, one job at a time, so
steering hooks installed by one request can never leak into another's forward. A job records
its events (progress, streamed tokens, the result or the error) in order; HTTP handlers read
them from any thread.

Errors: a `ValueError` (or `FileNotFoundError`) raised by a job is the client's fault
(saekit's functions raise them, with one-line messages, for bad arguments) and becomes status
400; anything else is logged with its traceback on the server and reported to the client as
a one-line 500.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("saekit.serve")

CLIENT_ERRORS = (ValueError, FileNotFoundError)


class Busy(Exception):
    """The queue is full: the client should retry later (HTTP 503)."""


@dataclass
class Job:
    """One unit of model work and what it reported so far."""

    id: str
    kind: str
    fn: Callable[[Job], Any]
    status: str = "queued"  # queued | running | done | error
    progress: float | None = None
    message: str = ""
    result: Any = None
    error: str | None = None
    error_status: int = 0
    events: list[dict] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def emit(self, event: dict) -> None:
        """Append an event (``{"type": ..., ...}``) and wake the readers."""
        with self._changed:
            if event.get("type") == "progress":
                self.progress = event.get("value", self.progress)
                self.message = event.get("message", self.message)
            self.events.append(event)
            self._changed.notify_all()

    def report(self, value: float | None, message: str = "") -> None:
        """A progress event: ``value`` in [0, 1] (None: unknown), and a short message."""
        self.emit({"type": "progress", "value": value, "message": message})

    def events_since(self, start: int, timeout: float) -> list[dict]:
        """Events from index ``start`` on, waiting up to ``timeout`` s for at least one."""
        with self._changed:
            if len(self.events) <= start and self.status in ("queued", "running"):
                self._changed.wait(timeout)
            return self.events[start:]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self.status in ("queued", "running"):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def summary(self) -> dict:
        """JSON-ready state (without the result)."""
        return {
            "id": self.id, "kind": self.kind, "status": self.status, "progress": self.progress,
            "message": self.message, "error": self.error,
        }  # fmt: skip


class Worker:
    """A daemon thread running submitted jobs in order; keeps the last ``keep`` jobs."""

    def __init__(self, max_queue: int = 64, keep: int = 256) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.max_queue, self.keep = max_queue, keep
        self.current: Job | None = None
        self._thread = threading.Thread(target=self._loop, name="saekit-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, kind: str, fn: Callable[[Job], Any]) -> Job:
        """Queue ``fn(job)``; raises `Busy` when ``max_queue`` jobs are already waiting."""
        with self._lock:
            if self._queue.qsize() >= self.max_queue:
                raise Busy(f"{self._queue.qsize()} jobs are waiting; try again shortly")
            job = Job(id=f"{next(self._ids)}", kind=kind, fn=fn)
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                oldest = next(iter(self._jobs.values()))
                if oldest.status in ("queued", "running"):
                    break
                self._jobs.popitem(last=False)
        self._queue.put(job)
        return job

    def run(self, kind: str, fn: Callable[[Job], Any], timeout: float = 600) -> Job:
        """Submit and wait for the end (for requests answered in one response)."""
        job = self.submit(kind, fn)
        if not job.wait(timeout):
            raise TimeoutError(f"the {kind} job did not finish within {timeout:.0f} s")
        return job

    def get(self, job_id: str) -> Job | None:
        """The job with this id, if it is still kept."""
        with self._lock:
            return self._jobs.get(job_id)

    def waiting(self) -> int:
        """Jobs queued and not yet started."""
        return self._queue.qsize()

    def stop(self) -> None:
        """Let the thread finish the job it runs and exit."""
        self._queue.put(None)

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            self.current = job
            with job._changed:
                job.status, job.started = "running", time.monotonic()
            try:
                result = job.fn(job)
            except CLIENT_ERRORS as err:
                self._end(job, "error", error=_one_line(err), code=400)
            except Exception as err:  # a bug: full traceback in the log, one line to the client
                log.exception("job %s (%s) failed", job.id, job.kind)
                self._end(job, "error", error=f"internal error: {type(err).__name__}", code=500)
            else:
                self._end(job, "done", result=result)
            self.current = None

    @staticmethod
    def _end(
        job: Job, status: str, *, result: Any = None, error: str | None = None, code: int = 0
    ) -> None:
        with job._changed:
            job.status, job.result, job.error = status, result, error
            job.error_status = code
            job.finished = time.monotonic()
            event = {"type": "done", "result": result} if status == "done" else {
                "type": "error", "error": error, "status": job.error_status}  # fmt: skip
            job.events.append(event)
            job._changed.notify_all()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
