"""The HTML report in a real headless Chromium: loads with no console errors, tables and figures visible."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sweepdae.report import write_reports

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Injected into a copy of the page: reports what a reader would see in the title, which --dump-dom prints.
PROBE = """<script>
window.addEventListener('load', () => {
  const vis = el => el.offsetWidth > 0 && el.offsetHeight > 0;
  const tables = [...document.querySelectorAll('table')];
  const imgs = [...document.querySelectorAll('img')];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && vis(i)).length;
  document.title = `CHECK tables=${tables.length} visible_tables=${tables.filter(vis).length} ` +
                   `imgs=${imgs.length} loaded_imgs=${ok}`;
});
</script>"""


class Store:
    def __init__(self, grids: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        self._grids, self._rows = grids, rows

    def grids(self) -> list[dict[str, Any]]:
        return self._grids

    def cells(self, keys: list[str] | None = None) -> pd.DataFrame:
        df = pd.DataFrame(self._rows)
        return df if keys is None else df[df["key"].isin(keys)]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt install chromium")
def test_html_report_in_headless_chromium(tmp_path: Path, synthetic_grids: Any) -> None:
    grids, rows = synthetic_grids(200)
    grids[0]["spec"]["title"] = "<script>alert(1)</script> &_%"  # rendered as text, never run
    (html,) = [p for p in write_reports(Store(grids, rows), grids=None, out=tmp_path / "out", html=True, latex=False,
                                        csv=False) if p.suffix == ".html"]
    text = html.read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text
    assert not re.search(r"""(src|href)=["']https?://""", text)  # self-contained
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"))
    p = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                        "--v=0", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"CHECK tables=(\d+) visible_tables=(\d+) imgs=(\d+) loaded_imgs=(\d+)", p.stdout)
    assert m, p.stdout[-2000:] + p.stderr[-2000:]
    tables, visible, imgs, loaded = map(int, m.groups())
    assert tables >= 2 and visible == tables
    assert imgs >= 2 and loaded == imgs
    console_errors = [ln for ln in p.stderr.splitlines() if "CONSOLE" in ln and ("Error" in ln or "Uncaught" in ln)]
    assert not console_errors, console_errors
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", html.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
