"""The HTML report opened in headless Chromium (Debian's `chromium`): it renders without console
errors and without network requests; the report and its screenshot are kept as test artifacts in
`test-artifacts/` at the project root (or `$REVERSIB_TEST_ARTIFACTS`), paths printed.

Console messages come from Chromium's own log (`--enable-logging=stderr`); requests from its network
log (`--log-net-log`): a request started by the page (its initiator is an origin, unlike Chromium's
own background requests) to anything but file: or data: is a network request.  A control page with
a script error and a remote image proves both detectors see what they must."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reversib.evidence.report import build_report, render_html
from tests.evidence.conftest import DAY, T0, make_check
from tests.evidence.test_indicators import DAYS, build_history
from tests.services import require_service


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        require_service("Chromium", "is not installed (apt-get install chromium)")
    return path


def open_in_chromium(page: Path, work: Path, height: int = 2400) -> tuple[list[str], list[str], Path]:
    """(console messages, page network requests, screenshot) of `page` rendered headless."""
    shot, netlog = work / f"{page.stem}.png", work / f"{page.stem}.netlog.json"
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={work / 'profile'}",
         "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}", "--hide-scrollbars",
         f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [m.group(1) for m in re.finditer(r":CONSOLE(?:\(\d+\))?:?\d*\] (.*)", proc.stderr)]
    console += [line for line in proc.stderr.splitlines() if "Uncaught" in line and ":CONSOLE" not in line]
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    started = [e["params"] for e in log["events"] if e["type"] == start_job and "url" in e.get("params", {})]
    requests = [p["url"] for p in started if p.get("initiator") != "not an origin"
                and not p["url"].startswith(("file:", "data:"))]
    return console, requests, shot


def png_size_and_colors(path: Path) -> tuple[int, int, int]:
    """Width, height and number of distinct colours sampled from a PNG (8-bit RGB/RGBA, no PIL)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, ctype = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and ctype in (2, 6)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp + 1
    colors: set[bytes] = set()
    prev = bytearray(width * bpp)
    for y in range(height):  # undo the PNG filters, row by row
        ftype, row = raw[y * stride], bytearray(raw[y * stride + 1:(y + 1) * stride])
        for i in range(len(row)):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                row[i] = (row[i] + a) & 255
            elif ftype == 2:
                row[i] = (row[i] + b) & 255
            elif ftype == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 7 == 0:
            colors.update(bytes(row[x:x + 3]) for x in range(0, len(row), bpp * 5))
        prev = row
    return width, height, len(colors)


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href", "xlink:href", "action", "srcset") and v]


def test_the_detectors_see_errors_and_requests(tmp_path: Path) -> None:
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                    '<script>throw new Error("boom")</script></body></html>')
    console, requests, _ = open_in_chromium(page, tmp_path, 400)
    assert any("Uncaught Error: boom" in m for m in console)
    assert requests == ["http://127.0.0.1:9/x.png"]


def test_html_report_renders_offline_without_errors(tmp_path: Path) -> None:
    history, _, _ = build_history(tmp_path / "history")
    other = make_check(tmp_path, id="beta", name="Beta <weekly> & co")
    checks = [make_check(tmp_path, generation={"pattern": "%Y-%m-%d"}, expect={"deadline": "06:00"}), other]
    since = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    until = dt.datetime.fromtimestamp(T0 + DAYS * DAY, dt.timezone.utc)
    text = render_html(build_report(history, checks, since=since, until=until))
    history.close()
    parser = Links()
    parser.feed(text)
    assert "script" not in parser.tags and "img" not in parser.tags and "link" not in parser.tags
    assert all(ref.startswith("#") for ref in parser.refs), parser.refs  # only in-page anchors
    assert "url(" not in text and "@import" not in text
    assert "Beta &lt;weekly&gt; &amp; co" in text  # names are escaped
    assert text.count("<svg") >= 4
    page = tmp_path / "report.html"
    page.write_text(text, encoding="utf-8")
    console, requests, shot = open_in_chromium(page, tmp_path)
    artifacts = Path(os.environ.get("REVERSIB_TEST_ARTIFACTS")
                     or Path(__file__).resolve().parents[2] / "test-artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    for kept in (page, shot):
        shutil.copyfile(kept, artifacts / f"evidence-{kept.name}")
    print(f"\nHTML report: {artifacts / 'evidence-report.html'}\nscreenshot: {artifacts / 'evidence-report.png'}")
    assert console == []
    assert requests == []
    width, height, colors = png_size_and_colors(shot)
    assert (width, height) == (1280, 2400)
    assert colors >= 5  # text, green, red and grey windows, blue growth line: not a blank page


@pytest.fixture(autouse=True)
def _needs_chromium() -> None:
    chromium()
