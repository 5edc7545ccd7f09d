"""Build badges: `build | 1.4.0` (green), `build | failing` (red), `build | unknown` (grey).

Pure: no network, disk, clock or Flask globals. The SVG has the look of a
shields.io "flat" badge; text widths are estimated from Verdana's advance widths
at 11px, the font shields.io measures with, so the text fits its box.
https://github.com/badges/shields/blob/master/spec/SPECIFICATION.md
"""

from __future__ import annotations

import math
import re
import unicodedata
from xml.sax.saxutils import escape

LABEL = "build"
GREEN = "#4c1"
RED = "#e05d44"
GREY = "#9f9f9f"
LABEL_COLOR = "#555"

_COLOR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})|[a-z]{3,20}")
_PADDING = 5  # px on each side of a text

# Verdana advance widths in font units (2048 per em); at 11px a width is units * 11 / 2048.
_UNITS = {
    " ": 720, "!": 807, '"': 942, "#": 1823, "$": 1302, "%": 2222, "&": 1494, "'": 548,
    "(": 909, ")": 909, "*": 1302, "+": 1823, ",": 745, "-": 864, ".": 745, "/": 1302,
    ":": 909, ";": 909, "<": 1823, "=": 1823, ">": 1823, "?": 1117, "@": 2048,
    "[": 909, "\\": 1302, "]": 909, "^": 1823, "_": 1302, "`": 1302,
    "{": 1300, "|": 909, "}": 1300, "~": 1823,
    "A": 1401, "B": 1405, "C": 1430, "D": 1577, "E": 1294, "F": 1178, "G": 1587, "H": 1540,
    "I": 862, "J": 921, "K": 1415, "L": 1141, "M": 1720, "N": 1532, "O": 1612, "P": 1235,
    "Q": 1612, "R": 1424, "S": 1401, "T": 1237, "U": 1499, "V": 1401, "W": 2024, "X": 1403,
    "Y": 1237, "Z": 1403,
    "a": 1229, "b": 1255, "c": 1067, "d": 1255, "e": 1198, "f": 721, "g": 1255, "h": 1276,
    "i": 562, "j": 677, "k": 1190, "l": 562, "m": 1964, "n": 1276, "o": 1220, "p": 1255,
    "q": 1255, "r": 874, "s": 1067, "t": 807, "u": 1276, "v": 1190, "w": 1636, "x": 1190,
    "y": 1190, "z": 1051,
} | {digit: 1302 for digit in "0123456789"}
_UNITS_PER_EM = 2048
_FONT_SIZE = 11


def text_width(text: str) -> float:
    """The estimated width in px of `text` in Verdana 11px."""
    units = 0
    for char in text:
        if char in _UNITS:
            units += _UNITS[char]
        elif unicodedata.combining(char):
            continue
        elif unicodedata.east_asian_width(char) in ("W", "F"):
            units += _UNITS_PER_EM  # CJK and emoji take a full em
        else:
            units += 1302  # a digit's width: the average of Latin text
    return units * _FONT_SIZE / _UNITS_PER_EM


def badge_for(latest_state: str | None, latest_version: str | None) -> tuple[str, str]:
    """The message and colour for the latest finished build of a repository.

    Success: its version in green; failure (or error: no image was published): "failing"
    in red; no build yet (or anything else): "unknown" in grey. Both the commit-status
    words (success, failure, error) and the job store's (succeeded, failed, errored) count.
    """
    state = str(latest_state) if latest_state is not None else None
    if state in ("success", "succeeded"):
        return (latest_version or "passing", GREEN)
    if state in ("failure", "failed", "error", "errored"):
        return ("failing", RED)
    return ("unknown", GREY)


def shields_endpoint_json(label: str, message: str, color: str) -> dict:
    """The body of a shields.io endpoint badge: https://shields.io/badges/endpoint-badge."""
    return {"schemaVersion": 1, "label": label, "message": message, "color": color}


def render_badge_svg(label: str, message: str, color: str) -> str:
    """A flat badge `label | message`, the message on `color` (hex `#4c1` or a named colour)."""
    if not _COLOR.fullmatch(color):
        raise ValueError(f"badge colour must be #rgb, #rrggbb or a colour name, not {color!r}")
    label_text = math.ceil(text_width(label))
    message_text = math.ceil(text_width(message))
    label_width = label_text + 2 * _PADDING
    message_width = message_text + 2 * _PADDING
    width = label_width + message_width
    title = escape(f"{label}: {message}", {'"': "&quot;"})
    label_xml = escape(label)
    message_xml = escape(message)
    text_fill, shadow = ("#333", "#ccc") if _is_light(color) else ("#fff", "#010101")
    # Text is drawn at 10x size and scaled down by 0.1 for finer positioning, as shields does.
    label_x = label_width * 5
    message_x = (label_width + message_width / 2) * 10
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" '
        f'aria-label="{title}"><title>{title}</title>'
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" '
        'stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{label_width}" height="20" fill="{LABEL_COLOR}"/>'
        f'<rect x="{label_width}" width="{message_width}" height="20" fill="{color}"/>'
        f'<rect width="{width}" height="20" fill="url(#s)"/></g>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" '
        'text-rendering="geometricPrecision" font-size="110">'
        f'<text aria-hidden="true" x="{label_x:g}" y="150" fill="#010101" fill-opacity=".3" '
        f'transform="scale(.1)" textLength="{label_text * 10}">{label_xml}</text>'
        f'<text x="{label_x:g}" y="140" transform="scale(.1)" fill="#fff" '
        f'textLength="{label_text * 10}">{label_xml}</text>'
        f'<text aria-hidden="true" x="{message_x:g}" y="150" fill="{shadow}" fill-opacity=".3" '
        f'transform="scale(.1)" textLength="{message_text * 10}">{message_xml}</text>'
        f'<text x="{message_x:g}" y="140" transform="scale(.1)" fill="{text_fill}" '
        f'textLength="{message_text * 10}">{message_xml}</text>'
        "</g></svg>"
    )


def _is_light(color: str) -> bool:
    """True for a light background, where white text would not read."""
    if not color.startswith("#"):
        return color in ("white", "yellow", "lightgrey", "lightgray", "silver")
    digits = color[1:]
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    red, green, blue = (int(digits[i : i + 2], 16) for i in (0, 2, 4))
    # Relative luminance, ITU-R BT.709 weights.
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255 > 0.65
