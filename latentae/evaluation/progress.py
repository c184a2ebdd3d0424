"""Progress of one process's share of an evaluation: a line with images/s and the time left, every EVERY_S seconds
(not per image: logs of a 50k-image run stay short), on every process of a launch."""
from __future__ import annotations

import sys
import time

EVERY_S = 30.0  # seconds between lines


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """`update(n)` after each batch; a line when EVERY_S seconds have passed since the last one, and one at `close()`
    when images were read.
    `total`: the images of this process's share (None when unknown: no percentage or ETA); `done`: those an earlier
    run evaluated (resumed), counted in the total but not in the rate."""

    def __init__(self, total: int | None, *, rank: int, ranks: int, done: int = 0, enabled: bool = True,
                 stream=None, clock=time.monotonic):
        self.total, self.done, self.new = total, done, 0
        self.who = "eval" + (f" [process {rank + 1}/{ranks}]" if ranks > 1 else "")
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.clock = clock
        self.start = self.last = clock()

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.new / elapsed
        done = self.done + self.new
        text = f"{self.who}: {done}" + (f"/{self.total} images ({done / max(self.total, 1):.0%})"
                                        if self.total else " images")
        text += f", {rate:.1f} images/s"
        if self.total and rate > 0 and done < self.total:
            text += f", ETA {_duration((self.total - done) / rate)}"
        return text

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def note(self, text: str) -> None:
        self._print(f"{self.who}: {text}")

    def update(self, n: int) -> None:
        self.new += n
        now = self.clock()
        if now - self.last >= EVERY_S:
            self.last = now
            self._print(self.line())

    def close(self) -> None:
        if self.new:  # nothing read: the caller's error says why
            self._print(f"{self.line()}, {_duration(self.clock() - self.start)} in all")
