"""A micro-batcher: requests that arrive together share one forward pass of the model.

Each request thread hands its images to `MicroBatcher.probabilities` and waits. One worker thread
takes the first waiting request, then every other request already waiting (without waiting for
more, so a lone client pays no extra latency) up to `max_images` images, runs the model once on
all of them and hands each request its own rows. One forward pass at a time also bounds memory.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# Images per forward pass when requests are combined (a larger single request runs alone).
DEFAULT_MAX_IMAGES = 256
# Seconds a request waits for its answer before it is given up as an internal error.
ANSWER_SECONDS = 300


@dataclass
class Job:
    """One request's images (count, 28, 28), and its answer once the worker has run."""

    images: np.ndarray
    done: threading.Event = field(default_factory=threading.Event)
    probabilities: np.ndarray | None = None  # (count, 10)
    error: BaseException | None = None


class MicroBatcher:
    """One worker thread running `probabilities` on the images of the requests waiting together."""

    def __init__(
        self,
        probabilities: Callable[[np.ndarray], np.ndarray],
        max_images: int = DEFAULT_MAX_IMAGES,
    ) -> None:
        self._probabilities = probabilities
        self.max_images = max_images
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name="micro-batcher", daemon=True)
        # Requests per forward pass, the latest 1,000 (what the tests and the log can show).
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=1000)
        self._worker.start()

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(count, 10) probabilities of raw (count, 28, 28) images, computed with whoever else waits."""
        job = Job(images)
        self._jobs.put(job)
        if not job.done.wait(ANSWER_SECONDS):
            raise TimeoutError(f"no answer from the model in {ANSWER_SECONDS} s")
        if job.error is not None:
            raise job.error
        assert job.probabilities is not None
        return job.probabilities

    def close(self) -> None:
        """Stop the worker once the requests already queued are answered."""
        self._jobs.put(None)
        self._worker.join(timeout=ANSWER_SECONDS)

    def _take_batch(self, first: Job) -> tuple[list[Job], Job | None, bool]:
        """`first` and the jobs already waiting, up to max_images; the job left over; whether to stop."""
        batch, count = [first], len(first.images)
        while count < self.max_images:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, None, True
            if count + len(job.images) > self.max_images:
                return batch, job, False
            batch.append(job)
            count += len(job.images)
        return batch, None, False

    def _work(self) -> None:
        """Answer batches until close(): one forward pass per batch, each job its own rows."""
        left_over: Job | None = None
        stop = False
        while not stop or left_over is not None:
            first = left_over if left_over is not None else self._jobs.get()
            if first is None:
                return
            batch, left_over, stop_now = self._take_batch(first)
            stop = stop or stop_now
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        """One forward pass for the batch; an error is every job's error (a bug: the inputs are checked)."""
        self.batch_sizes.append(len(batch))
        try:
            rows = self._probabilities(np.concatenate([job.images for job in batch]))
            starts = np.cumsum([0, *(len(job.images) for job in batch)])
            for job, start, end in zip(batch, starts[:-1], starts[1:], strict=True):
                job.probabilities = rows[start:end]
        except Exception as error:  # Handed to each request thread, which answers 500.
            for job in batch:
                job.error = error
        finally:
            for job in batch:
                job.done.set()
