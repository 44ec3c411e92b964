"""Load shapes: every kind, chaining, edges, and every class of bad spec naming its bad part."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from voiceload.core.shape import (
    MAX_CONCURRENCY,
    Constant,
    LoadShape,
    Ramp,
    Spike,
    Steps,
    format_duration,
    parse_duration,
    parse_shape,
)


def at(spec: str, *times: float) -> list[int]:
    shape = parse_shape(spec)
    return [shape.concurrency_at(t) for t in times]


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("45", 45), ("500ms", 0.5), ("1h2m3s", 3723),
    ("1.5m", 90), (" 1m 30s ", 90), ("2H", 7200), ("0", 0), ("1s250ms", 1.25), ("2.5", 2.5),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", " ", "x", "-5", "5x", "1d", "30s1m", "1s1s", "5mm", "m", "1.s", "inf", "1 2"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration \(write e\.g\. 90s, 5m"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.5, "500ms"), (45, "45s"), (90, "1m30s"), (300, "5m"), (3600, "1h"), (3723, "1h2m3s"), (1.5, "1.5s"),
])
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


# --- kinds -------------------------------------------------------------------------------------


def test_constant() -> None:
    shape = parse_shape("constant:100/5m")
    assert shape.segments == (Constant(100, 300.0),)
    assert (shape.duration_s, shape.peak, shape.text) == (300.0, 100, "constant:100/5m")
    assert at("constant:100/5m", 0, 150, 299.9, 300, 300.01, 1e9) == [100, 100, 100, 100, 0, 0]


def test_ramp_up_is_linear_and_reaches_its_end() -> None:
    assert parse_shape("ramp:0-200/5m").segments == (Ramp(0, 200, 300.0),)
    assert at("ramp:0-200/5m", 0, 60, 150, 240, 300, 301) == [0, 40, 100, 160, 200, 0]
    assert parse_shape("ramp:0-200/5m").peak == 200


def test_ramp_rounds_half_up() -> None:
    assert at("ramp:0-1/10s", 4.99, 5, 10) == [0, 1, 1]
    assert at("ramp:0-3/4s", 2) == [2]  # 1.5 -> 2, not Python's round-half-even


def test_ramp_down() -> None:
    assert at("ramp:100-0/100s", 0, 25, 50, 99.6, 100) == [100, 75, 50, 0, 0]
    assert parse_shape("ramp:100-0/100s").peak == 100


def test_steps() -> None:
    shape = parse_shape("steps:10-50+10/1m")
    assert shape.segments == (Steps(10, 50, 10, 60.0),)
    assert shape.duration_s == 300 and shape.peak == 50
    assert at("steps:10-50+10/1m", 0, 59.9, 60, 120, 180, 240, 299.9, 300, 300.1) == [
        10, 10, 20, 30, 40, 50, 50, 50, 0]


def test_steps_clip_the_last_step_to_b() -> None:
    shape = parse_shape("steps:10-45+10/1m")
    assert shape.duration_s == 300
    assert at("steps:10-45+10/1m", 0, 60, 120, 180, 240) == [10, 20, 30, 40, 45]


def test_steps_down_and_single_level() -> None:
    assert at("steps:50-5+20/10s", 0, 10, 20, 30, 39.9) == [50, 30, 10, 5, 5]
    assert parse_shape("steps:50-5+20/10s").duration_s == 40
    single = parse_shape("steps:7-7+5/30s")
    assert single.duration_s == 30 and single.concurrency_at(10) == 7


def test_spike() -> None:
    shape = parse_shape("spike:20-100/5m@2m+30s")
    assert shape.segments == (Spike(20, 100, 300.0, 120.0, 30.0),)
    assert (shape.duration_s, shape.peak) == (300.0, 100)
    assert at("spike:20-100/5m@2m+30s", 0, 119.9, 120, 149.9, 150, 299, 300, 301) == [
        20, 20, 100, 100, 20, 20, 20, 0]


def test_spike_at_the_very_start_and_filling_the_segment() -> None:
    assert at("spike:0-5/1m@0+1m", 0, 59.9) == [5, 5]
    assert at("spike:10-50/1m@0s+10s", 0, 10) == [50, 10]


# --- chaining and edges ------------------------------------------------------------------------


def test_chaining_plays_segments_one_after_another() -> None:
    spec = "ramp:0-100/2m,constant:100/5m,ramp:100-0/1m"
    shape = parse_shape(spec)
    assert shape.segments == (Ramp(0, 100, 120.0), Constant(100, 300.0), Ramp(100, 0, 60.0))
    assert (shape.duration_s, shape.peak) == (480.0, 100)
    assert at(spec, 0, 60, 120, 300, 419.9, 420, 450, 480, 480.5) == [0, 50, 100, 100, 100, 100, 50, 0, 0]


def test_a_segment_edge_belongs_to_the_next_segment() -> None:
    assert at("constant:5/10s,constant:7/10s,constant:9/10s", 9.999, 10, 19.999, 20, 30) == [5, 7, 7, 9, 9]
    assert at("spike:1-9/10s@5s+5s,constant:3/10s", 9.99, 10) == [9, 3]


def test_the_end_of_the_last_segment_still_counts_and_after_it_is_0() -> None:
    shape = parse_shape("ramp:0-200/5m")
    assert shape.concurrency_at(shape.duration_s) == 200
    assert shape.concurrency_at(shape.duration_s + 0.001) == 0
    assert shape.concurrency_at(-1) == 0


def test_peak_is_the_highest_target_anywhere() -> None:
    assert parse_shape("constant:5/1m,spike:10-80/1m@10s+5s,ramp:40-0/1m").peak == 80
    assert parse_shape("steps:0-30+7/10s").peak == 30


def test_whitespace_and_case_are_tolerated() -> None:
    shape = parse_shape("  Ramp : 0 - 100 / 1m 30s ,\n constant:100/ 2m ")
    assert shape.segments == (Ramp(0, 100, 90.0), Constant(100, 120.0))
    assert shape.text == "Ramp : 0 - 100 / 1m 30s ,\n constant:100/ 2m"


def test_describe() -> None:
    assert parse_shape("ramp:0-200/5m,constant:200/2m").describe() == "ramp 0→200 over 5m, then 200 for 2m"
    assert parse_shape("steps:10-50+10/1m").describe() == "steps 10→50 by 10, 1m each (5m)"
    assert parse_shape("spike:20-100/5m@2m+30s").describe() == "20 for 5m with 100 from 2m for 30s"
    assert parse_shape("constant:3/500ms").describe() == "3 for 500ms"


def test_a_shape_needs_segments() -> None:
    with pytest.raises(ValueError, match="at least one segment"):
        LoadShape(segments=(), text="")


# --- bad specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "names"), [
    ("", "empty; write segments constant:N/DUR, ramp:A-B/DUR, steps:A-B+S/DUR, spike:BASE-PEAK/DUR@AT+LEN"),
    ("rmp:0-10/1m", "unknown kind 'rmp' (did you mean 'ramp'?); write one of constant:N/DUR"),
    ("wave:0-10/1m", "unknown kind 'wave'; write one of constant:N/DUR"),
    ("100/5m", "no 'KIND:'; write one of constant:N/DUR"),
    ("constant:5", "no '/DUR'; write constant:N/DUR"),
    ("constant:x/1m", "N 'x' is not a non-negative integer; write constant:N/DUR"),
    ("constant:1.5/1m", "N '1.5' is not a non-negative integer"),
    ("constant:5/5x", "DUR '5x' is not a duration (write e.g. 90s, 5m"),
    ("constant:5/0s", "DUR '0s' must be longer than 0; write constant:N/DUR"),
    ("ramp:10/1m", "'10' is not A-B (counts are non-negative integers); write ramp:A-B/DUR"),
    ("ramp:-5-10/1m", "'-5-10' is not A-B"),
    ("ramp:0-10/", "DUR '' is not a duration"),
    ("steps:10-50/1m", "no '+S' (the step); write steps:A-B+S/DUR"),
    ("steps:10-50+0/1m", "step S must be at least 1, got 0"),
    ("steps:10-50+a/1m", "S 'a' is not a non-negative integer"),
    ("spike:20-100/5m", "no '@AT+LEN'"),
    ("spike:20-100/5m@2m", "no '@AT+LEN'"),
    ("spike:20/5m@2m+30s", "'20' is not BASE-PEAK"),
    ("spike:20-100/5m@x+30s", "AT 'x' is not a duration"),
    ("spike:20-100/5m@2m+0s", "LEN '0s' must be longer than 0"),
    ("spike:20-100/5m@4m+2m", "the spike ends at 6m, after the segment's 5m (AT+LEN must be at most DUR)"),
    (f"constant:{MAX_CONCURRENCY + 1}/1m", f"N {MAX_CONCURRENCY + 1} is above the limit of {MAX_CONCURRENCY} calls"),
    ("constant:5/25h", "DUR '25h' is longer than the 24h limit"),
    ("constant:5/20h,constant:5/5h", "lasts 25h in all, more than the 24h limit"),
    ("constant:0/1m,ramp:0-0/1m", "never asks for a call (every count is 0); the peak must be at least 1"),
])
def test_bad_specs_name_the_bad_part(spec: str, names: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_shape(spec)
    message = str(info.value)
    assert message.startswith(f"shape '{spec}': ")
    assert names in message


def test_in_a_chain_the_bad_segment_is_quoted() -> None:
    with pytest.raises(ValueError) as info:
        parse_shape("ramp:0-10/1m, constnt:10/1m")
    assert str(info.value) == (
        "shape 'ramp:0-10/1m, constnt:10/1m': 'constnt:10/1m': unknown kind 'constnt' (did you mean 'constant'?); "
        "write one of constant:N/DUR, ramp:A-B/DUR, steps:A-B+S/DUR, spike:BASE-PEAK/DUR@AT+LEN"
    )


def test_a_stray_comma_names_the_empty_segment() -> None:
    with pytest.raises(ValueError, match=r"^shape 'ramp:0-10/1m,,constant:10/1m': segment 2 is empty"):
        parse_shape("ramp:0-10/1m,,constant:10/1m")
    with pytest.raises(ValueError, match=r"segment 2 is empty"):
        parse_shape("ramp:0-10/1m,")


def test_the_examples_in_the_docs_parse() -> None:
    docs = Path(__file__).resolve().parent.parent / "docs"
    specs = re.findall(r"'((?:constant|ramp|steps|spike):[^']*)'|`((?:constant|ramp|steps|spike):[a-z0-9.,:/@+-]*)`",
                       (docs / "shapes.md").read_text(encoding="utf-8"))
    found = {a or b for a, b in specs} - {"ramp:0-100/2m,constnt:100/5m"}  # the error example
    assert len(found) >= 8
    for spec in found:
        assert parse_shape(spec).peak >= 1
