"""The shared geometry of camera analytics: the direction convention and the segment test."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tepi.drivers.camera.geometry import box_iou, crossing, inside, side

pytestmark = pytest.mark.timeout(60)

unit = st.floats(0.0, 1.0, allow_nan=False)
points = st.tuples(unit, unit)


def test_a_line_drawn_left_to_right_counts_moving_down_as_in() -> None:
    a, b = (0.2, 0.5), (0.8, 0.5)
    assert side(a, b, (0.5, 0.6)) > 0  # below the arrow is its right
    assert crossing(a, b, (0.5, 0.4), (0.5, 0.6)) == "in"
    assert crossing(a, b, (0.5, 0.6), (0.5, 0.4)) == "out"


def test_a_crossing_beyond_the_segment_does_not_count() -> None:
    a, b = (0.2, 0.5), (0.4, 0.5)  # across one lane only
    assert crossing(a, b, (0.6, 0.4), (0.6, 0.6)) is None
    assert crossing(a, b, (0.3, 0.4), (0.3, 0.6)) == "in"


def test_stopping_on_the_line_counts_once() -> None:
    a, b = (0.0, 0.5), (1.0, 0.5)
    path = [(0.5, 0.4), (0.5, 0.5), (0.5, 0.5), (0.5, 0.6)]
    got = [crossing(a, b, p, q) for p, q in itertools.pairwise(path)]
    assert [g for g in got if g] == ["in"]


@given(points, points, points, points)
def test_reversing_the_move_or_the_line_reverses_the_direction(
    a: tuple[float, float], b: tuple[float, float], p: tuple[float, float], q: tuple[float, float]
) -> None:
    # A line drawn on a picture is at least a pixel long: a near-degenerate one (1e-75 long)
    # turns its cross products into rounding noise that differs with the operands' order.
    assume(abs(b[0] - a[0]) + abs(b[1] - a[1]) > 1e-6)
    # Nor does a move start or end a hair's breadth (1e-21) from one of the line's ends,
    # where whether it touches the segment is rounding too, different in either order.
    assume(all(abs(x[0] - e[0]) + abs(x[1] - e[1]) > 1e-9 for x in (p, q) for e in (a, b)))
    forward = crossing(a, b, p, q)
    flip = {"in": "out", "out": "in", None: None}
    assert crossing(a, b, q, p) == flip[forward]
    if side(a, b, p) != 0 and side(a, b, q) != 0:
        assert crossing(b, a, p, q) == flip[forward]


def test_iou_and_inside() -> None:
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 0.5, 1), (0.5, 0, 1, 1)) == 0.0
    assert box_iou((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(1 / 7)
    square = [(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8)]
    assert inside(square, (0.5, 0.5))
    assert not inside(square, (0.9, 0.5))
