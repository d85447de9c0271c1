"""The gradio demo: its request function on the tiny export, the missing-extra error, and a real headless browser.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/install_browser.sh``) and the
``demo`` extra (gradio); it is skipped, with the reason, only when one of them is missing.
"""

from __future__ import annotations

import importlib
import json
import shutil
import socket
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instructseg.modeling.instructseg import InstructSeg
from instructseg.predictor import InstructSegPredictor

pytestmark = pytest.mark.slow  # trains, launches processes or a browser: the full suite only

CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,1800",
)


@pytest.fixture(scope="module")
def demo_module():
    """``instructseg.demo`` (imported once: gradio takes seconds to import); skips when gradio is missing."""
    pytest.importorskip("gradio", reason="gradio is not installed: pip install 'instructseg[demo]'")
    return importlib.import_module("instructseg.demo")


@pytest.fixture(scope="module")
def predictor(tiny_config, tmp_path_factory) -> InstructSegPredictor:
    torch.manual_seed(0)
    export = InstructSeg.from_config(tiny_config).save_pretrained(tmp_path_factory.mktemp("demo") / "export")
    return InstructSegPredictor.from_pretrained(export)


def _write_image(path: Path, h: int = 30, w: int = 44, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_import_without_gradio_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "instructseg.demo", raising=False)
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    with pytest.raises(ImportError, match=r"pip install 'instructseg\[demo\]'"):
        importlib.import_module("instructseg.demo")


def test_segment_image_matches_the_predictor(demo_module, predictor, tmp_path):
    segment = demo_module.segment
    image = _write_image(tmp_path / "photo.png")
    expected = predictor.predict_image(str(image), "the red square", "res", threshold=0.0)
    overlay, score, answer, mask = segment(
        predictor, [image], "the red square", "referring phrase", "shared", 0.0, tmp_path
    )
    assert float(score) == pytest.approx(expected.score, abs=1e-3)
    assert answer.startswith("target found")
    with Image.open(overlay) as picture:
        assert picture.width >= 44 and picture.height > 30  # enlarged, with the caption strip
    with Image.open(mask) as png:
        np.testing.assert_array_equal(np.asarray(png) == 255, expected.mask)
    _, _, answer, _ = segment(predictor, [image], "the red square", "referring phrase", "shared", 1.0, tmp_path)
    assert answer.startswith("no target")


def test_segment_frames_give_a_gif_and_a_zip(demo_module, predictor, tmp_path):
    segment = demo_module.segment
    frames = [_write_image(tmp_path / f"frame{i}.png", 24, 32, seed=i) for i in (10, 2, 1)]  # natural order: 1, 2, 10
    expected = predictor.predict_video(sorted(frames, key=lambda p: int(p.stem[5:])), "the car", "shared", "reasonvos")
    overlay, score, answer, archive = segment(
        predictor, frames, "the car", "reasoning question", "shared", 0.5, tmp_path
    )
    with Image.open(overlay) as gif:
        assert gif.format == "GIF" and gif.n_frames >= 1
    assert score.startswith(f"mean {expected.scores.mean():.3f} over 3 frames")
    found = int((~expected.no_target).sum())
    assert answer == (f"target in {found} of 3 frames" if found else "no target in any of the 3 frames")
    with zipfile.ZipFile(archive) as zipped:
        names = sorted(n for n in zipped.namelist() if not n.endswith("/"))
        summary = json.loads(zipped.read("predictions.json"))
        first = np.asarray(Image.open(zipped.open("Annotations/frames/0/frame1.png")))
    assert names == sorted(["predictions.json", *(f"Annotations/frames/0/frame{i}.png" for i in (1, 2, 10))])
    assert [f["frame"] for f in summary["frames"]] == ["frame1", "frame2", "frame10"]
    assert summary["task"] == "reasonvos" and summary["strategy"] == "shared"
    np.testing.assert_array_equal(first == 255, expected.masks[0])


def test_segment_mp4(demo_module, predictor, tmp_path):
    iio = pytest.importorskip("imageio.v3", reason="MP4 needs the demo extra's imageio[ffmpeg]")
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "clip.mp4", frames, fps=4)
    expected = predictor.predict_video(tmp_path / "clip.mp4", "the car", "per_frame", "rvos", threshold=0.3)
    overlay, score, _, archive = demo_module.segment(
        predictor, [tmp_path / "clip.mp4"], "the car", "referring phrase", "per_frame", 0.3, tmp_path
    )
    assert score.startswith(f"mean {expected.scores.mean():.3f} over 5 frames")
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(n for n in zipped.namelist() if n.endswith(".png")) == [
            f"Annotations/clip/0/{i:05d}.png" for i in range(5)
        ]


def test_segment_bad_requests_say_what_to_do(demo_module, predictor, tmp_path):
    segment = demo_module.segment
    image = _write_image(tmp_path / "photo.png")
    with pytest.raises(ValueError, match="Upload an image"):
        segment(predictor, [], "the cat", "referring phrase", "per_frame", 0.5, tmp_path)
    with pytest.raises(ValueError, match="Type an instruction"):
        segment(predictor, [image], "  ", "referring phrase", "per_frame", 0.5, tmp_path)
    gif = tmp_path / "clip.gif"
    Image.open(image).save(gif)
    with pytest.raises(ValueError, match="not both"):
        segment(predictor, [image, gif], "the cat", "referring phrase", "per_frame", 0.5, tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        segment(predictor, [broken], "the cat", "referring phrase", "per_frame", 0.5, tmp_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_browser_uploads_an_image_and_sees_overlay_and_score(demo_module, predictor, tmp_path, monkeypatch):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("chromium / chromium-driver are not installed: run scripts/install_browser.sh")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = _write_image(tmp_path / "photo.png")
    expected = predictor.predict_image(str(image), "the red square", "res")
    app = demo_module.build_app(predictor)
    url = demo_module.launch_app(app, port=_free_port(), block=False)
    options = Options()
    options.binary_location = chromium
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        wait = WebDriverWait(driver, 90)
        driver.get(url)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#media input[type=file]"))
        driver.find_element(By.ID, "run").click()  # nothing uploaded yet: the page says what to do
        wait.until(lambda d: "Upload an image" in d.find_element(By.TAG_NAME, "body").text)
        upload.send_keys(str(image))
        wait.until(lambda d: "photo" in d.find_element(By.ID, "media").text)  # the upload has finished
        driver.find_element(By.CSS_SELECTOR, "#instruction textarea").send_keys("the red square")
        driver.find_element(By.ID, "run").click()
        score = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#score textarea").get_attribute("value"))
        assert float(score) == pytest.approx(expected.score, abs=1e-3)
        answer = driver.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value")
        assert answer.startswith("no target" if expected.no_target else "target found")
        overlay = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#overlay img"))[0]
        assert overlay.get_attribute("src").startswith(url.rstrip("/"))  # served by the app
        assert wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", overlay)) >= 44
        assert wait.until(lambda d: "photo_mask" in d.find_element(By.ID, "masks").text)
        driver.save_screenshot(str(tmp_path / "demo.png"))
        requested = {
            json.loads(entry["message"])["message"]["params"]["request"]["url"]
            for entry in driver.get_log("performance")
            if '"Network.requestWillBeSent"' in entry["message"]
        }
        web = {u for u in requested if u.startswith(("http:", "https:", "ws:", "wss:"))}  # not data:, chrome://
        external = sorted(u for u in web if not u.startswith(url.rstrip("/")))
        assert web, "no request seen in the performance log"
        assert not external, f"the page loaded assets from outside this machine: {external}"
    finally:
        driver.quit()
        app.close()
