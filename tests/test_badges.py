"""Badges: `build | <version>` green, `build | failing` red, `build | unknown` grey."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from github_app.badges import (
    GREEN,
    GREY,
    RED,
    badge_for,
    render_badge_svg,
    shields_endpoint_json,
    text_width,
)

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


@pytest.mark.parametrize(
    ("state", "version", "expected"),
    [
        ("success", "1.4.0", ("1.4.0", GREEN)),
        ("failure", "1.4.0", ("failing", RED)),
        ("error", None, ("failing", RED)),
        ("succeeded", "2.0.0", ("2.0.0", GREEN)),
        ("failed", None, ("failing", RED)),
        ("errored", None, ("failing", RED)),
        ("running", None, ("unknown", GREY)),
        (None, None, ("unknown", GREY)),
    ],
)
def test_badge_for_the_latest_build(state, version, expected):
    """Success shows the version in green, a failure `failing` in red, no build `unknown` grey."""
    assert badge_for(state, version) == expected
    assert (GREEN, RED, GREY) == ("#4c1", "#e05d44", "#9f9f9f")


def test_svg_is_well_formed_and_holds_the_text_and_colour():
    """The SVG parses as XML, shows label and message, and paints the message's colour."""
    root = parse(render_badge_svg("build", "1.4.0", GREEN))
    assert root.tag == f"{SVG}svg"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts.count("build") == 2 and texts.count("1.4.0") == 2
    fills = [r.get("fill") for r in root.iter(f"{SVG}rect")]
    assert "#555" in fills and GREEN in fills
    assert root.find(f"{SVG}title").text == "build: 1.4.0"


def test_text_is_xml_escaped():
    """Markup in a label or message is shown as text, never interpreted."""
    svg = render_badge_svg("a<b>&\"c'", "<script>alert(1)</script>", RED)
    root = parse(svg)
    assert "<script>" not in svg
    assert "<script>alert(1)</script>" in [t.text for t in root.iter(f"{SVG}text")]
    assert root.get("aria-label") == "a<b>&\"c': <script>alert(1)</script>"


def test_boxes_grow_with_the_text():
    """The message box fits its text: a longer version makes a wider badge."""
    short = parse(render_badge_svg("build", "1.0.0", GREEN))
    long = parse(render_badge_svg("build", "10.20.30-rc.1-build.5", GREEN))
    assert int(long.get("width")) > int(short.get("width"))
    rects = list(long.iter(f"{SVG}rect"))
    message_box = int(rects[2].get("width"))
    assert message_box >= text_width("10.20.30-rc.1-build.5") + 10


def test_text_width_estimates_verdana():
    """Widths follow Verdana 11px: shields.io's `build` label box is 37 px wide."""
    assert math.ceil(text_width("build")) + 10 in (36, 37, 38)
    assert text_width("mmm") > text_width("iii")
    assert text_width("部署") > text_width("ab")


def test_colour_is_checked():
    """A colour that could break out of its attribute is refused."""
    with pytest.raises(ValueError):
        render_badge_svg("build", "x", '#4c1" onload="alert(1)')


def test_shields_endpoint_json():
    """The .json badge follows shields.io's endpoint schema."""
    assert shields_endpoint_json("build", "failing", RED) == {
        "schemaVersion": 1, "label": "build", "message": "failing", "color": "#e05d44",
    }
