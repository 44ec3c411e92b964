"""Load shapes: how many calls should be in flight at each moment of a run. Pure.

    constant:100/5m      ramp:0-200/5m      steps:10-50+10/1m      spike:20-100/5m@2m+30s

Segments are joined with ',' and played one after another. The coordinator reads the target
(`LoadShape.concurrency_at`) a few times a second and tops its agents up to it, so a shape says
nothing about how fast calls are placed; `max_rate` (scenario `load:` or `--max-rate`) caps that.
See docs/shapes.md.
"""

from __future__ import annotations

import bisect
import difflib
import math
import re
from dataclasses import dataclass, field

MAX_CONCURRENCY = 100_000  # one count of a shape, at most
MAX_DURATION_S = 24 * 3600.0  # a whole shape, at most

SYNTAX = {
    "constant": "constant:N/DUR",
    "ramp": "ramp:A-B/DUR",
    "steps": "steps:A-B+S/DUR",
    "spike": "spike:BASE-PEAK/DUR@AT+LEN",
}
DURATION_SYNTAX = "90s, 5m, 1h, 1m30s, 500ms, or 45 for seconds"
ACCEPTED = f"{', '.join(SYNTAX.values())}, joined with ',' (DUR like {DURATION_SYNTAX})"

_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_NUMBER = r"\d+(?:\.\d+)?"
_PLAIN = re.compile(_NUMBER)
_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|h|m|s)\s*", re.IGNORECASE)
_COUNT = re.compile(r"\d+")


# --- durations ---------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds from '90s', '5m', '1h', '1m30s', '500ms' or a plain number of seconds ('45').

    Units go from largest to smallest, each at most once, so '30s1m' (probably a typo) is refused.
    Zero is accepted here; callers that need a positive length say so themselves.
    """
    s = text.strip()
    if _PLAIN.fullmatch(s):
        return float(s)
    total, pos, last = 0.0, 0, -1
    order = list(_UNIT_S)
    while s and pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            break
        rank = order.index(m.group(2).lower())
        if rank <= last:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2).lower()]
        pos, last = m.end(), rank
    if not s or pos < len(s):
        raise ValueError(f"'{text}' is not a duration (write e.g. {DURATION_SYNTAX})")
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable form ('5m', '1m30s', '500ms', '1.5s'); inverse of parse_duration."""
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    parts = [f"{h}h"] if h else []
    if m:
        parts.append(f"{m}m")
    if rest:
        parts.append(f"{rest / 1000:g}s")
    return "".join(parts)


# --- segments ----------------------------------------------------------------------------------


def _round(x: float) -> int:
    """Half up, not Python's half-to-even, so a ramp's steps are evenly spaced."""
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class Constant:
    """`constant:N/DUR`: N calls for DUR."""

    calls: int
    duration_s: float

    def concurrency_at(self, t_local: float) -> int:
        return self.calls

    @property
    def peak(self) -> int:
        return self.calls

    def describe(self) -> str:
        return f"{self.calls} for {format_duration(self.duration_s)}"


@dataclass(frozen=True)
class Ramp:
    """`ramp:A-B/DUR`: linear from A to B (either way), B reached at the end of the segment."""

    start: int
    end: int
    duration_s: float

    def concurrency_at(self, t_local: float) -> int:
        frac = min(max(t_local / self.duration_s, 0.0), 1.0)
        return _round(self.start + (self.end - self.start) * frac)

    @property
    def peak(self) -> int:
        return max(self.start, self.end)

    def describe(self) -> str:
        return f"ramp {self.start}→{self.end} over {format_duration(self.duration_s)}"


@dataclass(frozen=True)
class Steps:
    """`steps:A-B+S/DUR`: A, A+S, A+2S, ... up to B (the last step clipped to B), each held DUR.

    A above B steps down by S instead.
    """

    start: int
    end: int
    step: int  # > 0; the direction comes from start and end
    hold_s: float  # each level

    @property
    def levels(self) -> int:
        return -(-abs(self.end - self.start) // self.step) + 1

    @property
    def duration_s(self) -> float:
        return self.levels * self.hold_s

    def level(self, i: int) -> int:
        if self.end >= self.start:
            return min(self.start + i * self.step, self.end)
        return max(self.start - i * self.step, self.end)

    def concurrency_at(self, t_local: float) -> int:
        i = min(max(int(t_local // self.hold_s), 0), self.levels - 1)
        return self.level(i)

    @property
    def peak(self) -> int:
        return max(self.start, self.end)

    def describe(self) -> str:
        return (f"steps {self.start}→{self.end} by {self.step}, {format_duration(self.hold_s)} each "
                f"({format_duration(self.duration_s)})")


@dataclass(frozen=True)
class Spike:
    """`spike:BASE-PEAK/DUR@AT+LEN`: BASE for DUR in all, except PEAK from AT for LEN."""

    base: int
    spike: int
    duration_s: float
    at_s: float
    length_s: float

    def concurrency_at(self, t_local: float) -> int:
        return self.spike if self.at_s <= t_local < self.at_s + self.length_s else self.base

    @property
    def peak(self) -> int:
        return max(self.base, self.spike)

    def describe(self) -> str:
        return (f"{self.base} for {format_duration(self.duration_s)} with {self.spike} from "
                f"{format_duration(self.at_s)} for {format_duration(self.length_s)}")


Segment = Constant | Ramp | Steps | Spike


# --- the shape ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadShape:
    """Segments played one after another; `text` is the spec as given, for reports."""

    segments: tuple[Segment, ...]
    text: str
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a load shape needs at least one segment")
        starts = [0.0]
        for seg in self.segments[:-1]:
            starts.append(starts[-1] + seg.duration_s)
        object.__setattr__(self, "_starts", tuple(starts))

    def concurrency_at(self, t_s: float) -> int:
        """Target calls in flight t_s seconds after the start; 0 before the start and after the end.

        Segments cover [start, end); the very end still belongs to the last segment, so a final
        `ramp:0-200/5m` reaches 200 at 5m.
        """
        if t_s < 0 or t_s > self.duration_s:
            return 0
        i = bisect.bisect_right(self._starts, t_s) - 1
        seg = self.segments[i]
        return seg.concurrency_at(min(t_s - self._starts[i], seg.duration_s))

    @property
    def duration_s(self) -> float:
        return self._starts[-1] + self.segments[-1].duration_s

    @property
    def peak(self) -> int:
        return max(seg.peak for seg in self.segments)

    def describe(self) -> str:
        """One line for people, e.g. 'ramp 0→200 over 5m, then 200 for 2m'."""
        return ", then ".join(seg.describe() for seg in self.segments)


# --- parsing -----------------------------------------------------------------------------------


def parse_shape(text: str) -> LoadShape:
    """A LoadShape from its spec; ValueError naming the offending part and the accepted syntax."""
    spec = text.strip()

    def fail(problem: str) -> ValueError:
        return ValueError(f"shape '{spec}': {problem}")

    if not spec:
        raise fail(f"empty; write segments {ACCEPTED}")
    segments: list[Segment] = []
    for n, raw in enumerate(spec.split(","), start=1):
        part = raw.strip()
        if not part:
            raise fail(f"segment {n} is empty (a stray ','?); write segments {ACCEPTED}")
        try:
            segments.append(_segment(part))
        except ValueError as exc:
            raise fail(f"'{part}': {exc}" if part != spec else str(exc)) from None
    shape = LoadShape(segments=tuple(segments), text=spec)
    if shape.duration_s > MAX_DURATION_S:
        raise fail(f"lasts {format_duration(shape.duration_s)} in all, more than the "
                   f"{format_duration(MAX_DURATION_S)} limit")
    if shape.peak < 1:
        raise fail("never asks for a call (every count is 0); the peak must be at least 1")
    return shape


def _segment(part: str) -> Segment:
    kind, colon, body = part.partition(":")
    kind = kind.strip().lower()
    if not colon or kind not in SYNTAX:
        close = difflib.get_close_matches(kind, SYNTAX, n=1, cutoff=0.6)
        what = f"unknown kind '{kind}'" if colon else "no 'KIND:'"
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"{what}{hint}; write one of {', '.join(SYNTAX.values())}")
    syntax = SYNTAX[kind]
    counts, slash, timing = body.partition("/")
    if not slash:
        raise ValueError(f"no '/DUR'; write {syntax}")
    if kind == "constant":
        (n,) = _counts(counts, 1, syntax)
        return Constant(n, _length(timing, "DUR", syntax))
    if kind == "ramp":
        a, b = _counts(counts, 2, syntax)
        return Ramp(a, b, _length(timing, "DUR", syntax))
    if kind == "steps":
        range_, plus, step_text = counts.partition("+")
        if not plus:
            raise ValueError(f"no '+S' (the step); write {syntax}, e.g. steps:10-50+10/1m")
        a, b = _counts(range_, 2, syntax)
        step = _count(step_text, "S", syntax)
        if step < 1:
            raise ValueError(f"step S must be at least 1, got {step}; write {syntax}")
        return Steps(a, b, step, _length(timing, "DUR", syntax))
    base, spike = _counts(counts, 2, syntax)
    dur_text, at, window = timing.partition("@")
    at_text, plus, len_text = window.partition("+")
    if not at or not plus:
        raise ValueError(f"no '@AT+LEN' (when the spike starts and how long it lasts); write {syntax}, "
                         "e.g. spike:20-100/5m@2m+30s")
    dur = _length(dur_text, "DUR", syntax)
    at_s = _time(at_text, "AT", syntax)
    length_s = _length(len_text, "LEN", syntax)
    if round((at_s + length_s) * 1000) > round(dur * 1000):
        raise ValueError(f"the spike ends at {format_duration(at_s + length_s)}, after the segment's "
                         f"{format_duration(dur)} (AT+LEN must be at most DUR); write {syntax}")
    return Spike(base, spike, dur, at_s, length_s)


def _counts(text: str, n: int, syntax: str) -> list[int]:
    names = ("N",) if n == 1 else ("A", "B") if "A-B" in syntax else ("BASE", "PEAK")
    pieces = text.split("-")
    if len(pieces) != n:
        want = "-".join(names)
        raise ValueError(f"'{text.strip()}' is not {want} (counts are non-negative integers); write {syntax}")
    return [_count(p, name, syntax) for p, name in zip(pieces, names, strict=True)]


def _count(text: str, name: str, syntax: str) -> int:
    s = text.strip()
    if not _COUNT.fullmatch(s):
        raise ValueError(f"{name} '{s}' is not a non-negative integer; write {syntax}")
    value = int(s)
    if value > MAX_CONCURRENCY:
        raise ValueError(f"{name} {value} is above the limit of {MAX_CONCURRENCY} calls")
    return value


def _time(text: str, name: str, syntax: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError(f"{name} '{text.strip()}' is not a duration (write e.g. {DURATION_SYNTAX}); "
                         f"write {syntax}") from None


def _length(text: str, name: str, syntax: str) -> float:
    value = _time(text, name, syntax)
    if value <= 0:
        raise ValueError(f"{name} '{text.strip()}' must be longer than 0; write {syntax}")
    if value > MAX_DURATION_S:
        raise ValueError(f"{name} '{text.strip()}' is longer than the {format_duration(MAX_DURATION_S)} limit")
    return value
