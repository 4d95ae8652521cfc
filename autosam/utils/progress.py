"""Progress bars that suit where the output goes.

On a terminal, :func:`progress_bar` is tqdm. When stderr is not a terminal (a log file, CI,
``nohup``, a SLURM job), tqdm's carriage-return updates pile up into single lines of kilobytes;
there, :func:`progress_bar` returns a :class:`LineProgress` with tqdm's interface that writes whole
lines instead:

- a bar counting cases (``unit="case"``) writes one line per case;
- other bars write a line at most every 5 % of their total (or every 30 s when the total is
  unknown), plus one at the end;
- transient bars (``leave=False``: the iterations of one epoch, the patches of one case) write
  nothing: the epoch or case line that follows them says what they did.

``AUTOSAM_PROGRESS=bar`` forces tqdm, ``lines`` forces lines, ``off`` silences both.
"""
from __future__ import annotations

import os
import sys
import time

__all__ = ["progress_bar", "LineProgress", "progress_mode"]

_MODES = ("bar", "lines", "off")


def progress_mode(stream=None) -> str:
    """``bar``, ``lines`` or ``off``: from ``AUTOSAM_PROGRESS``, else ``bar`` on a terminal, ``lines`` otherwise."""
    mode = os.environ.get("AUTOSAM_PROGRESS", "").strip().lower()
    if mode in _MODES:
        return mode
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return "lines"


class LineProgress:
    """tqdm's interface (``update``, ``set_postfix``, ``set_postfix_str``, ``set_description``, ``n``,
    ``total``, ``close``, context manager) writing whole lines; see the module docstring."""

    SECONDS = 30.0
    FRACTION = 0.05

    def __init__(self, iterable=None, total=None, desc: str | None = None, unit: str = "it", leave: bool = True,
                 disable: bool = False, file=None, **_ignored):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total = total
        self.desc = desc or ""
        self.unit = unit
        self.silent = disable or not leave
        self.file = file
        self.n = 0
        self.postfix = ""
        self.start = self.last_time = time.monotonic()
        self.last_n = 0
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def refresh(self) -> None:
        """For callers that set ``n`` directly (as tqdm allows) and then refresh."""
        if not self.silent and not self.closed and self.n != self.last_n and self._due():
            self._write()

    def _due(self) -> bool:
        now = time.monotonic()
        if self.unit == "case":
            return True
        if self.total:
            return self.n - self.last_n >= max(1.0, self.FRACTION * self.total) or self.n >= self.total
        return now - self.last_time >= self.SECONDS

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text = f"{self.desc}: {count} {self.unit}" if self.desc else f"{count} {self.unit}"
        text += f" [{elapsed:.1f} s]"
        return f"{text} {self.postfix}" if self.postfix else text

    def _write(self) -> None:
        stream = self.file if self.file is not None else sys.stderr
        print(self._line(), file=stream, flush=True)
        self.last_n, self.last_time = self.n, time.monotonic()

    def update(self, n: int | float = 1) -> None:
        self.n += n
        if not self.silent and not self.closed and self._due():
            self._write()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.silent and self.n != self.last_n:
            self._write()


def progress_bar(*args, **kwargs):
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere (same arguments as tqdm)."""
    mode = progress_mode(kwargs.get("file"))
    if mode == "off":
        kwargs["disable"] = True
    if mode == "bar":
        from tqdm import tqdm

        return tqdm(*args, **kwargs)
    if args:
        kwargs.setdefault("iterable", args[0])
    return LineProgress(**kwargs)
