"""End to end: the report of a real small run (six stages), opened from disk in headless Chromium.

Skips with the reason where Chromium, chromium-driver or selenium is missing (`make browser` installs them).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from dnd.compare.readers import read_labels
from dnd.report.render import write_report
from tests.compare.fakes import TableEmbedder
from tests.report import browser
from tests.report.small_run import CAPTION_MARKUP, EVIL, LAYER, small_run

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=browser.missing() or "")

#: Label 1 of each neuron of the small run (neuron 2 fails in stage 4) and the other method's labels.
LABELS = {0: EVIL, 1: "green blobs", 2: None, 3: EVIL}
OTHER = {0: "red", 1: "grass", 2: "sky", 3: "<b>yellow</b>"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("browser")
    run = small_run(tmp_path)
    other = tmp_path / "descriptions.csv"
    rows = [f"{LAYER},{unit},{label},0.5" for unit, label in OTHER.items()]
    other.write_text("layer,unit,description,similarity\n" + "\n".join(rows) + "\n")
    texts = [EVIL, "green blobs", *OTHER.values()]
    embedder = TableEmbedder("table", {text: [1.0, float(i)] for i, text in enumerate(texts)})
    return write_report(run.pipeline, LAYER, compare=read_labels(other), embedder=lambda: embedder).index


@pytest.fixture(scope="module")
def driver():
    with browser.chromium() as running:
        yield running


def local_file(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file", f"{url} is not a local file: the report must need no network"
    return Path(unquote(parsed.path))


def assert_everything_resolves(driver) -> None:
    """Every img, link, stylesheet and script of the open page is a file that exists (and nothing is remote)."""
    urls = driver.execute_script(
        "return [...document.querySelectorAll('img')].map(e => e.src)"
        ".concat([...document.querySelectorAll('a[href]')].map(e => e.href.split('#')[0]))"
        ".concat([...document.querySelectorAll('link[href]')].map(e => e.href))"
        ".concat([...document.querySelectorAll('script[src]')].map(e => e.src))"
    )
    assert urls
    for url in urls:
        assert local_file(url).is_file(), url


def rows(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#neurons tbody tr")


def test_index_has_a_row_per_neuron_that_resolves_filters_and_sorts(report, driver):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    driver.get(report.as_uri())
    # 1. One row per neuron, with its label shown as text: the script label is no element and never runs.
    shown = {int(row.find_element(By.CSS_SELECTOR, "td").text): row for row in rows(driver)}
    assert sorted(shown) == sorted(LABELS)
    for unit, label in LABELS.items():
        assert shown[unit].find_element(By.CSS_SELECTOR, "td.label").text == (label or "—")
        assert shown[unit].find_element(By.CSS_SELECTOR, "td.other").text == OTHER[unit]
    assert "failed" in shown[2].text and "no valid concept" in shown[2].text
    scripts = driver.execute_script("return [...document.scripts].map(s => s.getAttribute('src'))")
    assert scripts == ["assets/report.js"]
    assert driver.find_elements(By.CSS_SELECTOR, "td.label script, td.other b") == []
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018
    # 2. Every picture, link, stylesheet and script is a file beside the report; the strips' thumbnails decode.
    assert_everything_resolves(driver)
    strip = driver.find_elements(By.CSS_SELECTOR, "td.strip img")
    assert len(strip) == 4 * len(LABELS)
    assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", i) for i in strip)
    # 3. Filtering by a label hides the other rows; clearing it shows them again.
    search = driver.find_element(By.ID, "filter")
    search.send_keys("green blobs")
    assert [row.is_displayed() for row in rows(driver)] == [False, True, False, False]
    assert driver.find_element(By.ID, "shown").text == "1 of 4 neurons"
    search.clear()
    search.send_keys(EVIL)
    assert [row.is_displayed() for row in rows(driver)] == [True, False, False, True]
    search.clear()
    search.send_keys("x")  # clear() sends no input event; a keystroke and a backspace do
    search.send_keys("\b")
    assert all(row.is_displayed() for row in rows(driver))
    # 4. Sorting by the similarity column, descending on the second click; blanks stay last either way.
    header = driver.find_element(By.XPATH, "//th[normalize-space()='similarity']")
    for descending in (False, True):
        header.click()
        cells = [row.find_elements(By.CSS_SELECTOR, "td.num")[2].text for row in rows(driver)]
        assert cells[-1] == "—"  # the failed neuron has no label to compare
        values = [float(cell) for cell in cells[:-1]]
        assert values == sorted(values, reverse=descending) and len(set(values)) == 3
    assert header.get_attribute("aria-sort") == "descending"


def test_neuron_page_shows_its_evidence_as_text_and_links_its_neighbours(report, driver):
    from selenium.webdriver.common.by import By

    driver.get((report.parent / "neurons" / "0.html").as_uri())
    assert driver.find_element(By.CSS_SELECTOR, ".headline .label").text == EVIL
    assert driver.title.startswith(f"{LAYER} #0: {EVIL}")
    captions = [q.text for q in driver.find_elements(By.CSS_SELECTOR, "q.caption")]
    assert captions and all(caption.endswith(CAPTION_MARKUP) for caption in captions)
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"], script:not([src])').length") == 0
    assert_everything_resolves(driver)
    # The neighbours: no previous neuron, the next one is 1; the failed neuron's page says why.
    assert driver.find_elements(By.CSS_SELECTOR, "a[rel=prev]") == []
    driver.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
    driver.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
    assert local_file(driver.current_url).name == "2.html"
    assert "no valid concept" in driver.find_element(By.CSS_SELECTOR, ".reason").text
    assert_everything_resolves(driver)
