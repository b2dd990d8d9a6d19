"""`cem label`: the local labelling page, over HTTP and in a real headless chromium."""
from __future__ import annotations

import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from filter_helpers import build_workdir
from PIL import Image

from cem_pipeline.filter.label_app.server import LabelSession, make_server
from cem_pipeline.filter.labels import read_labels

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.shared_data


@pytest.fixture()
def served(tmp_path, cdeep3m_volume):
    """A labelling server on 127.0.0.1 (any free port) over a real-EM workdir; stopped after the test."""
    workdir, truth = build_workdir(tmp_path / "work", cdeep3m_volume)
    session = LabelSession(workdir, target=50, seed=1227)
    server = make_server(session, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield workdir, session, f"http://127.0.0.1:{server.port}", server.token
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
        return json.loads(body) if response.headers["Content-Type"] == "application/json" else body


def _post(url: str, payload: dict, token: str, **headers: str):
    request = urllib.request.Request(url, json.dumps(payload).encode(),
                                     {"Content-Type": "application/json", "X-CEM-Token": token, **headers})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_api_serves_exemplars_records_labels_and_resumes(served):
    workdir, session, base, token = served
    assert session.note.endswith("dedup exemplars of 224 patches") and len(session.candidates) == 178
    batch = _get(f"{base}/api/batch?n=5")
    assert batch["labelled"] == 0 and batch["target"] == 50 and len(batch["patches"]) == 5
    ids = [p["patch_id"] for p in batch["patches"]]
    assert all(int(i) in set(session.candidates["patch_id"]) for i in ids)  # exemplars only, ids exact as strings

    png = Image.open(io.BytesIO(_get(f"{base}/patch/{ids[0]}.png")))
    assert png.size == (64, 64) and np.asarray(png).std() > 0

    state = _post(f"{base}/api/label", {"patch_id": ids[0], "label": "informative"}, token)
    state = _post(f"{base}/api/label", {"patch_id": ids[1], "label": "uninformative"}, token)
    state = _post(f"{base}/api/label", {"patch_id": ids[2], "label": "skip"}, token)
    state = _post(f"{base}/api/label", {"patch_id": ids[1], "label": "informative"}, token)  # relabel replaces
    assert state["labelled"] == 2 and state["counts"] == {"informative": 2, "uninformative": 0, "skip": 1}
    labels = read_labels(workdir.labels)
    assert dict(zip(labels["patch_id"].astype(str), labels["label"])) == {
        ids[0]: "informative", ids[1]: "informative", ids[2]: "skip"}

    with pytest.raises(urllib.error.HTTPError) as error:
        _post(f"{base}/api/label", {"patch_id": ids[3], "label": "maybe"}, token)
    assert error.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as error:
        _get(f"{base}/patch/12345.png")
    assert error.value.code == 404

    resumed = LabelSession(workdir, target=50, seed=1227)
    assert [p["patch_id"] for p in resumed.next_batch(2)] == ids[3:5]
    assert resumed.state()["counts"]["skip"] == 1


def test_server_listens_on_loopback_only(served):
    _, session, base, _ = served
    assert base.startswith("http://127.0.0.1:")


def test_cross_site_and_rebinding_requests_are_refused(served):
    """What a page on another site can make a local browser send: a form's text/plain POST, a JSON POST
    with a foreign Origin, a DNS-rebinding request with another Host, a POST without the token."""
    workdir, session, base, token = served
    patch_id = str(session.candidates["patch_id"].iloc[0])
    body = json.dumps({"patch_id": patch_id, "label": "informative"}).encode()
    attempts = [
        ({"Content-Type": "text/plain", "X-CEM-Token": token}, 415),
        ({"Content-Type": "application/json", "X-CEM-Token": token, "Origin": "http://evil.example"}, 403),
        ({"Content-Type": "application/json", "X-CEM-Token": token, "Host": "evil.example"}, 403),
        ({"Content-Type": "application/json"}, 403),
        ({"Content-Type": "application/json", "X-CEM-Token": token + "x"}, 403),
    ]
    for headers, status in attempts:
        request = urllib.request.Request(f"{base}/api/label", body, headers)
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=30)
        assert error.value.code == status, headers
    assert read_labels(workdir.labels).empty
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(urllib.request.Request(f"{base}/api/state", headers={"Host": "rebound.example:80"}), timeout=30)
    assert error.value.code == 403
    same_origin = {"Origin": base, "Host": base.removeprefix("http://")}
    assert _post(f"{base}/api/label", {"patch_id": patch_id, "label": "informative"}, token, **same_origin)["labelled"] == 1


@pytest.mark.browser
def test_labelling_page_in_headless_chromium(served, tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail("REQUIRE_BROWSER=1 but /usr/bin/chromium is absent")
        pytest.skip("/usr/bin/chromium not installed (CEM_WITH_BROWSER=1 deploy/setup.sh)")
    from playwright.sync_api import sync_playwright

    workdir, session, base, token = served
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/?token={token}")
            page.wait_for_selector("body[data-ready='1']")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth === 64)")
            tiles = page.locator(".tile")
            assert tiles.count() == 24
            ids = [tiles.nth(i).get_attribute("data-patch-id") for i in range(5)]
            assert page.locator("#count").inner_text() == "labelled 0 / 50"

            shot = tmp_path / "grid.png"
            page.screenshot(path=str(shot))
            pixels = np.asarray(Image.open(shot).convert("L"))
            assert pixels.shape == (900, 1280) and shot.stat().st_size > 50_000
            grid = page.locator("#grid").bounding_box()
            assert grid["width"] > 800 and grid["height"] > 300
            region = pixels[int(grid["y"]) : int(grid["y"] + 300), int(grid["x"]) : int(grid["x"] + 800)]
            assert region.std() > 20  # EM patches drawn, not a blank page

            tiles.nth(0).locator("img").click()  # mouse: informative
            page.keyboard.press("u")  # focus moved to tile 1: uninformative
            page.keyboard.press("s")  # tile 2: skip
            tiles.nth(3).locator("img").click(button="right")  # right-click: uninformative
            page.keyboard.press("1")  # tile 4: informative
            page.wait_for_function("() => document.querySelector('#count').textContent === 'labelled 4 / 50'")
            assert "informative 2 · uninformative 2 · skipped 1" in page.locator("#balance").inner_text()
            assert "tile informative" in tiles.nth(0).get_attribute("class")

            deadline = time.monotonic() + 10
            while len(read_labels(workdir.labels)) < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            labels = read_labels(workdir.labels)
            assert dict(zip(labels["patch_id"].astype(str), labels["label"])) == {
                ids[0]: "informative", ids[1]: "uninformative", ids[2]: "skip", ids[3]: "uninformative",
                ids[4]: "informative"}

            page.reload()  # resumable: labelled patches are not shown again
            page.wait_for_selector("body[data-ready='1']")
            shown = set(page.locator(".tile").evaluate_all("els => els.map(e => e.dataset.patchId)"))
            assert not shown & set(ids) and len(shown) == 24
            assert page.locator("#count").inner_text() == "labelled 4 / 50"
        finally:
            browser.close()
