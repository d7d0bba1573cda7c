"""The gallery in a real browser: headless Chromium (Debian's ``chromium`` with its ``chromium-driver``), driven by
Selenium, opens every page of a gallery with its sanity, faithfulness and feature pages, and checks what a reader
would see: every image loads (its natural width is above 0), every link resolves to a file of the gallery, and the
console logs no error. A planted broken page shows that each check can fail.

Skips, naming what is missing, without the browser, its driver or Selenium (``.ci/run`` installs the first two
with apt-get where it can).
"""
import pathlib
import shutil
import urllib.parse

import jax
import numpy as np
import pytest
from helpers import Zoo

from cnn_jax.interpret import faithfulness, sanity
from cnn_jax.interpret.gallery import (
    FAITHFULNESS,
    FEATURES,
    INDEX,
    SANITY,
    write_faithfulness_page,
    write_feature_page,
    write_gallery,
    write_sanity_page,
)
from cnn_jax.interpret.methods import Settings


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install "
                                                                 "selenium)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        missing = " and ".join(name for name, found in (("chromium", binary), ("chromedriver", driver_path))
                               if not found)
        pytest.skip(f"the browser test needs {missing} on PATH (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--allow-file-access-from-files"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


def visit(driver, page: pathlib.Path) -> dict:
    """What a reader of ``page`` meets: images that did not load, links to no file, console errors; and the
    gallery files it links."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(page.resolve().as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth]);")
    links = driver.execute_script("return Array.from(document.links).map(a => a.href);")
    targets = [pathlib.Path(urllib.parse.unquote(urllib.parse.urlparse(link).path)) for link in links]
    return {"images": len(images), "broken": [src for src, width in images if not width],
            "dead": [str(t) for t in targets if not t.is_file()], "links": {t.name for t in targets},
            "errors": [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]}


@pytest.fixture(scope="module")
def small_cnn():
    return Zoo("simple_cnn", (12, 12, 1), batch=3)


@pytest.fixture(scope="module")
def gallery(small_cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("gallery")
    key = jax.random.key(0)
    write_gallery(small_cnn.model, small_cnn.variables, small_cnn.images, np.asarray(small_cnn.targets),
                  ["zero", "one", "two"], out, rng=key, smoothgrad_samples=2, ig_steps=2, visualization_steps=2)
    settings = Settings(smoothgrad_samples=2, path_steps=2)
    result = sanity.sanity_checks(small_cnn.model, small_cnn.variables, small_cnn.images, small_cnn.targets, key,
                                  methods=["gradient"], independent=False, settings=settings)
    write_sanity_page(result, small_cnn.images[0], out)
    scores = faithfulness.faithfulness(small_cnn.model, small_cnn.variables, small_cnn.images, small_cnn.targets,
                                       key, methods=["gradient"], baselines=["edges"], steps=4, settings=settings)
    write_faithfulness_page(scores, out)
    write_feature_page(small_cnn.model, small_cnn.variables, [{"image": np.asarray(small_cnn.images)}], out,
                       image_shape=(12, 12, 1), layer="stage2", channels=[0], classes=[],
                       class_names=["zero", "one", "two"], rng=key, copies=2, examples=2, steps=2)
    return out


def test_every_page_loads_its_images_and_links_without_console_errors(browser, gallery):
    pages = {name: visit(browser, gallery / name) for name in (INDEX, SANITY, FAITHFULNESS, FEATURES)}
    for name, seen in pages.items():
        assert seen["images"] > 0 and not seen["broken"] and not seen["dead"] and not seen["errors"], (name, seen)
    assert {SANITY, FAITHFULNESS, FEATURES} <= pages[INDEX]["links"]
    assert all(INDEX in seen["links"] for name, seen in pages.items() if name != INDEX)


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><img src=\"missing.png\"><img src=\"bad.png\">"
                    "<a href=\"nowhere.html\">x</a><script>console.error('planted')</script></body></html>")
    seen = visit(browser, page)
    assert seen["broken"] == ["missing.png", "bad.png"] and seen["dead"] == [str(tmp_path / "nowhere.html")]
    assert any("planted" in message for message in seen["errors"])
