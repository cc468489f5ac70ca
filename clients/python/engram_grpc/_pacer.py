"""Send pacing for flow control: after the server's SLOW_DOWN
(``STATE_BACKPRESSURE`` with a ``suggested_rate``) the session sends at most
that rate until the server says ACTIVE again."""

from __future__ import annotations

import math
from typing import Optional

#: A rate below this is taken as this: one observation a second still lets
#: acks flow, and keeps a bogus tiny rate from parking a stream for hours.
MIN_RATE = 1.0


class Pacer:
    """Spaces sends ``1 / rate`` apart while a rate is set; free otherwise.
    Times are event-loop seconds (``loop.time()``)."""

    def __init__(self) -> None:
        self._interval: Optional[float] = None
        self._next: Optional[float] = None

    def set_rate(self, per_second: float) -> None:
        """Starts (or changes) pacing. A rate that is not a positive finite
        number is ignored: the server gave no usable hint."""
        if not math.isfinite(per_second) or per_second <= 0.0:
            return
        self._interval = 1.0 / max(per_second, MIN_RATE)

    def clear(self) -> None:
        self._interval = None
        self._next = None

    @property
    def rate(self) -> Optional[float]:
        return None if self._interval is None else 1.0 / self._interval

    def ready_at(self) -> Optional[float]:
        """When the next send may go; None means now."""
        return self._next if self._interval is not None else None

    def on_sent(self, now: float) -> None:
        interval = self._interval
        if interval is None:
            return
        # Late timers must not lower the rate, but idle time must not build
        # up a burst either: credit at most one interval of lateness.
        base = self._next if self._next is not None and self._next + interval > now else now
        self._next = base + interval
