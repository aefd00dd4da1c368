"""The HTML report opens in a real headless browser (Debian's chromium): title, tables and
images are in the rendered DOM, the screenshot is not blank, and the console stays clean."""

import re
import shutil
import subprocess

import numpy as np
import pytest

from assay.report.render import write_report
from assay.report.synthetic import synthetic_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)"),
              pytest.mark.slow]  # a real browser, end to end
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    write_report(synthetic_report(seed=1, n=200, n_boot=100), out, formats=("html",))
    return out / "report.html"


def test_report_renders_in_chromium(page, tmp_path):
    run = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert "<title>assay report (synthetic scores)</title>" in dom
    assert len(re.findall(r"<table", dom)) >= 6
    assert len(re.findall(r"<img [^>]*src=\"data:image/png;base64,", dom)) >= 3
    assert "AUROC" in dom and "Recall at 1% FPR" in dom
    # the page has no script; any console message or failed load would be a rendering problem
    problems = [ln for ln in run.stderr.splitlines() if "CONSOLE" in ln or "Failed to load" in ln or "net::ERR" in ln]
    assert not problems, problems


def test_report_screenshot_is_not_blank(page, tmp_path):
    import matplotlib.image as mpimg

    shot = tmp_path / "report.png"
    run = chromium(tmp_path, "--window-size=1280,2000", f"--screenshot={shot}", page.as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    img = mpimg.imread(shot)
    assert img.shape[:2] == (2000, 1280)
    # text, table borders and plots: many distinct shades, not a white page
    assert img[..., :3].std() > 0.05 and len(np.unique(img[::4, ::4, 0])) > 20
