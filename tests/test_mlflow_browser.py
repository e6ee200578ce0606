"""The MLflow UI in a real browser (headless Debian Chromium driven by selenium): on a store built by a short
real sweep, the link `python -m qsattn mlflow ui` prints opens the runs table with method, dataset, seed,
variant and the primary metric as columns, without a click, and a run's page shows its qualitative grid.

Slow (about 2-4 minutes on 2 busy cores: the sweep, `mlflow ui` starting its workers, the page's scripts);
docs/tracking.md says so. QSATTN_SCREENSHOT=1 also writes the runs table's screenshot to docs/mlflow_runs.png."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from qsattn.cli import main as cli
from test_mlflow_concurrency import free_port
from test_sweep import make_grid, synthetic_root  # noqa: F401 - the fixture is used by name

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]


def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1900,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture
def ui(tmp_path, synthetic_root):
    """A store from a real two-cell sweep (train, translate, evaluate), served by `qsattn mlflow ui`;
    yields (the view's link, the store's URI)."""
    grid = make_grid(tmp_path, synthetic_root, methods=("cut", "fastcut"), max_steps=4, log_every=2,
                     checkpoint_every=2)
    assert cli(["sweep", str(grid), "--cluster", "debug"]) == 0
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    port = free_port()
    cmd = [sys.executable, "-m", "qsattn", "mlflow", "ui", "--tracking-uri", uri, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: mlflow ui starts workers
    try:
        first = proc.stdout.readline()
        link = re.search(r"http://\S+viewStateShareKey=\S+", first)
        assert link, first
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, "mlflow ui did not start"
            time.sleep(1)
        yield link.group(0), uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# The runs table read in one pass inside the page (its grid re-renders while it loads: elements found from
# here may be replaced before their text is read): the column headers, and each row's cells (a row's pinned
# and scrolling parts are drawn separately, with the same row-index).
TABLE_JS = """
const headers = [...document.querySelectorAll('[role=columnheader]')].map(e => e.innerText.trim());
const rows = {};
document.querySelectorAll('[role=row][row-index]').forEach(e => {
  const i = e.getAttribute('row-index'); (rows[i] = rows[i] || []).push(e.innerText); });
return [headers, Object.keys(rows).sort().map(k => rows[k].join('\\n').split('\\n').map(c => c.trim()))];
"""


def test_the_runs_table_shows_the_comparison_columns_and_a_run_page_its_grid(ui, tmp_path):
    import mlflow
    from selenium.webdriver.support.ui import WebDriverWait

    link, uri = ui
    client = mlflow.MlflowClient(uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("t").experiment_id])]
    assert len(runs) == 2
    driver = browser()
    try:
        driver.get(link)

        def table(d):
            headers, rows = d.execute_script(TABLE_JS)
            named = all(any(r.info.run_name in row for row in rows) for r in runs)
            return (set(headers), rows) if "gt_score_last" in headers and named else None

        headers, rows = WebDriverWait(driver, 120).until(table)
        assert {"Run Name", "method", "dataset", "seed", "variant", "gt_score_last"} <= headers
        for run in runs:
            (cells,) = [r for r in rows if run.info.run_name in r]
            tags = run.data.tags
            assert run.info.run_name == f"{tags['method']} · synthetic · s0"
            assert {tags["method"], "synthetic", "0", "base"} <= set(cells), cells
            value = run.data.metrics["gt_score_last"]
            assert any(c.startswith(f"{value:.6g}"[:6]) for c in cells), (value, cells)
        shot = tmp_path / "mlflow_runs.png"
        driver.save_screenshot(str(shot))
        if os.environ.get("QSATTN_SCREENSHOT"):
            shutil.copyfile(shot, ROOT / "docs" / "mlflow_runs.png")

        run = runs[0]
        base = link.split("/#/")[0]
        page = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/qualitative/last.png"
        driver.get(page)
        loaded = ("return [...document.images].filter(i => i.src.startsWith('blob:') && i.complete)"
                  ".map(i => i.naturalWidth)")
        WebDriverWait(driver, 90).until(lambda d: d.execute_script(loaded))
        from PIL import Image

        run_dir = Path(run.data.tags["run_dir"])
        with Image.open(run_dir / "qualitative" / "last.png") as grid:
            assert grid.width in driver.execute_script(loaded), "the page shows the run's qualitative grid"
    finally:
        driver.quit()
