"""The report as a person sees it: index.html opened in a real headless Chromium, offline.

A copy of the page gets a small script that, once everything has loaded, writes what it measured into
the DOM; `chromium --dump-dom` prints the DOM and the test reads the measurement back. No driver or
browser download is needed: Debian's `chromium` package is enough (.ci/system-deps installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mitosis_cli.stages.report import ReportSettings, run_report
from tests.report import tables as T

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="chromium not installed (apt-get install chromium; CI runs .ci/system-deps)")

# Runs after the load event, i.e. after every image has loaded or failed.
PROBE = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const result = {
    images: images.length,
    broken: images.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.alt || img.src.slice(0, 40)),
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    widestImage: Math.max(0, ...images.map(img => img.getBoundingClientRect().right)),
    resources: performance.getEntriesByType('resource').map(entry => entry.name),
  };
  const out = document.createElement('pre');
  out.id = 'probe-result';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def measure(page: Path, width: int, tmp_path: Path) -> dict:
    """Open `page` at a window `width` CSS pixels wide and return what the probe measured."""
    probed = tmp_path / f"probed-{width}-{page.name}"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    profile = tmp_path / f"profile-{width}"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--window-size={width},900", "--virtual-time-budget=10000",
               "--dump-dom", probed.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the probe did not run (exit {done.returncode}): {done.stderr[-1500:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    folder = tmp_path_factory.mktemp("browser")
    tables = T.write_all(folder / "tables", widths=(32,), seeds=(0,))
    result = run_report(ReportSettings(tables=tuple(tables.values()), out=folder / "report"))
    return folder / "report" / "index.html", result.figures


@pytest.mark.parametrize("width", [1280, 500])  # a desktop window and Chromium's narrowest headless one
def test_every_image_loads_and_nothing_overflows(report, width: int, tmp_path: Path) -> None:
    index, figures = report
    seen = measure(index, width, tmp_path)
    assert seen["images"] == len(figures) >= 5
    assert seen["broken"] == []
    assert seen["scrollWidth"] <= seen["innerWidth"], f"page is {seen['scrollWidth']} px wide in a {seen['innerWidth']} px window"
    assert seen["widestImage"] <= seen["innerWidth"]
    assert seen["resources"] == [], "the page fetched something: it must be self-contained"


def test_the_probe_catches_broken_images_and_overflow(tmp_path: Path) -> None:
    # The same checks on a page that is wrong in both ways must fail, or the test above proves nothing.
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img alt="broken" src="data:image/png;base64,AAAA">'
                   '<div style="width:3000px">wide</div></body></html>')
    seen = measure(bad, 800, tmp_path)
    assert seen["broken"] == ["broken"]
    assert seen["scrollWidth"] > seen["innerWidth"]
