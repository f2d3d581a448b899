"""One engine thread that owns the backend and batches the requests of many HTTP handlers.

Backends are not thread-safe (a tokenizer, a model, a KV-cache store), so every use of one happens
on this thread: a handler submits a *job* (a function that builds its :class:`GenRequest`, run on
this thread, since building encodes text) and awaits its future. The thread serves whatever is
queued in one :meth:`Backend.serve` call, and requests that arrive meanwhile join that call as
earlier ones finish (continuous batching on the transformers backend).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future

from codrl.backends.base import Backend, GenRequest, GenResult

#: A job: builds its request on the engine thread (raising fails only that job's future).
Job = Callable[[], GenRequest]
#: A queued item: a job and its future, a lifecycle whose cached states to release, or None (stop).
_Item = tuple[Job, "Future[GenResult]"] | str | None


class EngineThread:
    """Serves submitted jobs with one backend from one daemon thread, batching those that wait together."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._keys = itertools.count()
        self._releases: list[str] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="codrl-serve-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Future[GenResult]:
        """Queue ``job``; its future holds the result (or the exception of building or serving it)."""
        if self._stopped.is_set():
            raise RuntimeError("the engine thread has stopped")
        future: Future[GenResult] = Future()
        self._queue.put((job, future))
        return future

    def release(self, lifecycle: str) -> None:
        """Have the backend forget ``lifecycle``'s cached states (between batches)."""
        self._queue.put(lifecycle)

    def queued(self) -> int:
        """Items waiting for the engine thread (approximate: it takes them concurrently)."""
        return self._queue.qsize()

    def stop(self) -> None:
        """Stop after the current batch; jobs queued behind it fail."""
        self._stopped.set()
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.is_set():
            futures: dict[Hashable, Future[GenResult]] = {}
            pending = self._admit([self._queue.get(), *self._drain()], futures)

            def on_result(key: Hashable, result: GenResult) -> dict[Hashable, GenRequest]:
                futures.pop(key).set_result(result)
                return self._admit(self._drain(), futures)

            if pending:
                try:
                    self.backend.serve(pending, on_result)
                except Exception as e:  # the backend failed: every request of this batch fails with it
                    for future in futures.values():
                        future.set_exception(e)
            for lifecycle in self._releases:
                self.backend.release(lifecycle)
            self._releases.clear()
        for item in self._drain():
            if isinstance(item, tuple):
                item[1].set_exception(RuntimeError("the engine thread has stopped"))

    def _drain(self) -> list[_Item]:
        """The items queued now, without waiting."""
        items: list[_Item] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _admit(self, items: list[_Item], futures: dict[Hashable, Future[GenResult]]) -> dict[Hashable, GenRequest]:
        """Build the jobs' requests under fresh keys (a job whose build raises fails alone); note
        releases and stops."""
        requests: dict[Hashable, GenRequest] = {}
        for item in items:
            if item is None:
                self._stopped.set()
            elif isinstance(item, str):
                self._releases.append(item)
            else:
                job, future = item
                try:
                    request = job()
                except Exception as e:
                    future.set_exception(e)
                    continue
                key = next(self._keys)
                futures[key] = future
                requests[key] = request
        return requests
