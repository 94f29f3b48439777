"""Progress of long runs on stderr: a bar on a terminal, a line now and then on a pipe, or nothing.

``--progress auto|bar|lines|none`` (:data:`MODES`): ``auto`` is a bar when stderr is a terminal and lines
when it is not (CI logs, ``nohup``, ``2> log``). A bar redraws one line in place (at most ten times a
second); lines mode prints a line every :data:`LINE_INTERVAL_S` seconds, and a last one when a stage
that printed ends, so a short stage prints nothing and a long one shows it is alive. Nothing ever goes
to stdout: ``--json`` output stays clean.

>>> with Progress("eval set", 12, unit="batch", mode="lines") as progress:
...     for batch in batches:
...         progress.update()
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Any, Callable, TextIO

from kddiag.errors import KddiagError

__all__ = ["MODES", "LINE_INTERVAL_S", "check_progress", "resolve_progress", "Progress"]

MODES = ("auto", "bar", "lines", "none")
LINE_INTERVAL_S = 10.0  # lines mode: seconds between two lines of one stage
BAR_INTERVAL_S = 0.1  # a bar redraws at most this often
BAR_WIDTH = (10, 30)  # the bar's own width in characters: at least, at most (the terminal's width decides)


def check_progress(value: Any, origin: str = "--progress") -> str:
    """A progress mode of :data:`MODES`; True is 'auto' and False 'none' (the older on/off form)."""
    if value is True or value is False:
        return "auto" if value else "none"
    if isinstance(value, str) and value.lower() in MODES:
        return value.lower()
    raise KddiagError(f"{origin} must be one of {', '.join(MODES)} (or True/False); got {value!r}")


def resolve_progress(mode: Any, stream: TextIO | None = None) -> str:
    """What ``mode`` does on ``stream`` (default: stderr): 'bar', 'lines' or 'none' ('auto' decided by
    whether the stream is a terminal)."""
    mode = check_progress(mode)
    if mode != "auto":
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


class Progress:
    """One stage's progress, ``done`` of ``total`` ``unit``s, on stderr (``stream``) in ``mode``.

    ``update(advance)`` counts; ``update(done=..., total=...)`` sets (a total may grow, e.g. a probe's
    doubled budget); ``close()`` (or leaving the ``with`` block) ends the stage. ``interval``: seconds
    between lines (default :data:`LINE_INTERVAL_S`); ``clock`` is for tests.
    """

    def __init__(self, label: str, total: int, *, unit: str = "batch", mode: Any = "auto",
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
                 interval: float | None = None):
        self.label, self.total, self.unit, self.done = label, max(int(total), 0), unit, 0
        self.stream = sys.stderr if stream is None else stream
        self.mode = resolve_progress(mode, self.stream)
        self.clock, self.interval = clock, LINE_INTERVAL_S if interval is None else interval
        self.started = self.shown_at = clock()
        self.printed = False  # lines mode: whether a line was printed (then the stage's end is printed too)
        self.drawn = 0  # bar mode: the length of the bar last drawn (a shorter one blanks its end)
        self.drawn_done = -1  # ... and the count it showed
        self.closed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, advance: int = 1, *, done: int | None = None, total: int | None = None) -> None:
        """Count ``advance`` more units (or set ``done``; ``total`` changes the total)."""
        if self.mode == "none" or self.closed:
            return
        self.done = self.done + advance if done is None else done
        if total is not None:
            self.total = max(int(total), 0)
        now = self.clock()
        if self.mode == "bar":
            if now - self.shown_at >= BAR_INTERVAL_S or self.done >= self.total:
                self._draw(now)
        elif now - self.shown_at >= self.interval:
            self._write(self._line(now) + "\n", now)
            self.printed = True

    def close(self) -> None:
        """End the stage: the bar drawn whole and its line ended; in lines mode, a last line when one was
        printed."""
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        if self.mode == "bar":
            if self.drawn and self.drawn_done == self.done:  # the bar on screen is current: end its line
                self._write("\n", now)
            else:
                self._draw(now, end="\n")
        elif self.mode == "lines" and self.printed:
            self._write(self._line(now, final=True) + "\n", now)

    # ---------------------------------------------------------------- private

    def _write(self, text: str, now: float) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr never stops the run
            self.mode = "none"
        self.shown_at = now

    def _draw(self, now: float, end: str = "") -> None:
        bar = self._bar(now)
        self._write("\r" + bar.ljust(self.drawn) + end, now)
        self.drawn, self.drawn_done = (0 if end else len(bar)), self.done

    def _counts(self) -> str:
        total = max(self.total, self.done)
        share = f" ({100 * self.done // total}%)" if total else ""
        return f"{self.unit} {self.done}/{total}{share}"

    def _line(self, now: float, *, final: bool = False) -> str:
        """'kddiag: eval set, batch 12/40 (30%), 10 s elapsed, about 23 s left'."""
        elapsed = now - self.started
        if final:
            return f"kddiag: {self.label}, {self._counts()}, done in {_duration(elapsed)}"
        text = f"kddiag: {self.label}, {self._counts()}, {_duration(elapsed)} elapsed"
        left = self._left(elapsed)
        return text + (f", about {_duration(left)} left" if left is not None else "")

    def _bar(self, now: float) -> str:
        """'kddiag: eval set [#######-------] batch 12/40 (30%) 0:10 <0:23', fit to the terminal's width."""
        elapsed = now - self.started
        total = max(self.total, self.done)
        left = self._left(elapsed)
        tail = f" {self._counts()} {_clock(elapsed)}" + (f" <{_clock(left)}" if left is not None else "")
        head = f"kddiag: {self.label} "
        columns = shutil.get_terminal_size((100, 24)).columns - 1
        width = min(BAR_WIDTH[1], columns - len(head) - len(tail) - 2)
        if width < BAR_WIDTH[0]:  # a narrow terminal: the counts without a bar
            return (head + tail.lstrip())[:columns]
        filled = width * self.done // total if total else 0
        return f"{head}[{'#' * filled}{'-' * (width - filled)}]{tail}"

    def _left(self, elapsed: float) -> float | None:
        """Seconds left at the pace so far; None before anything is done or past the end."""
        if self.done <= 0 or self.done >= self.total:
            return None
        return elapsed * (self.total - self.done) / self.done


def _duration(seconds: float) -> str:
    """'0.4 s', '12 s', '3 min 05 s', '1 h 02 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _clock(seconds: float) -> str:
    """'0:07', '12:34', '1:02:03'."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
