"""translocator-serve: the real server over the session's tiny Earth-demo model, one process for the whole module,
asked by Gradio's client (the same answers as Predictor.predict, 20 at once, hostile uploads) and by Chromium."""
import csv
import json
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from translocator_jax.commands import serve
from translocator_jax.data import registry
from translocator_jax.data.records import schema, sources
from translocator_jax.errors import UserError
from translocator_jax.infer import page as page_lib
from translocator_jax.infer import prediction_csv, predictor as predictor_lib

gradio_client = pytest.importorskip("gradio_client", reason="the serve extra (gradio, gradio_client) is not installed")

REPO = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = pathlib.Path("/usr/bin/chromium"), pathlib.Path("/usr/bin/chromedriver")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class _Server:
  """`translocator-serve` in a process of its own, its cwd and TMPDIR an empty folder (so anything it leaves
  behind shows)."""

  def __init__(self, workdir, data_dir, home: pathlib.Path):
    self.home = home
    self.port = _free_port()
    env = dict(os.environ, TMPDIR=str(home), PYTHONUNBUFFERED="1")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "translocator_jax.commands.serve", "--workdir", str(workdir), "--data-dir",
         str(data_dir), "--port", str(self.port)], cwd=home, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    self.stderr: list[str] = []
    threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
    self.url = self._wait_for("serving on ", timeout=300).split()[2]

  def _wait_for(self, prefix: str, timeout: float) -> str:
    lines = []
    reader = threading.Thread(target=lambda: lines.append(self.proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines or not lines[0].startswith(prefix):
      self.proc.kill()
      pytest.fail(f"the server did not start: {lines}\n{''.join(self.stderr)[-3000:]}")
    return lines[0]

  def stop(self) -> int:
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        raise
    return self.proc.returncode


@pytest.fixture(scope="module")
def server(earth_tiny_run, tmp_path_factory):
  workdir, data_dir = earth_tiny_run
  srv = _Server(workdir, data_dir, tmp_path_factory.mktemp("serve_home"))
  yield srv
  srv.stop()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
  return gradio_client.Client(server.url, download_files=str(tmp_path_factory.mktemp("downloads")), verbose=False)


@pytest.fixture(scope="module")
def predictor(earth_tiny_run):
  workdir, data_dir = earth_tiny_run
  return predictor_lib.Predictor.from_checkpoint(workdir, data_dir=data_dir)


@pytest.fixture(scope="module")
def photos(predictor, tmp_path_factory):
  """Four Earth test patches as (photo with its truth in EXIF GPS, land-cover map, truth)."""
  folder = tmp_path_factory.mktemp("photos")
  test = sources.open_source(registry.dataset_info(predictor.config, "earth_patches").tfds_dir, "test")
  out = []
  for i in range(4):
    r = test[i]
    photo, seg = folder / f"patch_{i}.jpg", folder / f"patch_{i}_map.png"
    page_lib.write_jpeg_with_gps(r[schema.IMAGE], r[schema.LATLON], photo)
    Image.fromarray(r[schema.SEGMENTATION][..., 0]).save(seg)
    out.append((str(photo), str(seg), tuple(float(v) for v in r[schema.LATLON])))
  return out


def _locate(client, photo, seg=None):
  f = gradio_client.handle_file
  return client.predict(f(photo), f(seg) if seg else None, api_name="/locate")


def _assert_same_answer(got_json, want: predictor_lib.Prediction):
  top = got_json["candidates"][0]
  np.testing.assert_allclose(top["latlon"], want.candidates[0].latlon, atol=1e-5)
  assert top["cell"] == want.candidates[0].cell
  # Radii are rounded to 0.1 km; the page predicts one photo at a time, Predictor.predict pads a batch of 16.
  np.testing.assert_allclose([got_json["radius50_km"], got_json["radius90_km"]],
                             [want.radius50_km, want.radius90_km], atol=0.11)


def test_the_page_answers_as_the_predictor_does(server, client, predictor, photos):
  photo, seg, truth = photos[0]
  text, figure, table, row, record = _locate(client, photo, seg)
  (want,) = predictor.predict([photo], [seg])
  _assert_same_answer(record, want)
  assert record["source"] == "patch_0.jpg" and record["error"] is None
  np.testing.assert_allclose(record["true_latlon"], truth, atol=1e-4)  # the EXIF truth came through
  # The text is translocator-predict's, naming the visitor's file; the table, figure and CSV row are there.
  assert text.splitlines()[1:6] == predictor_lib.format_prediction(want).splitlines()[1:6]
  assert text.startswith("patch_0.jpg: within ") and "km from the true location" in text
  assert [r[2] for r in table["data"]] == [c.place for c in want.candidates]
  with Image.open(figure) as im:
    assert im.format == "PNG" and im.width > 600
  with open(row, newline="") as f:
    header, values = list(csv.reader(f))
  assert header == prediction_csv.csv_header(5, False)
  assert values[1:3] == [f"{want.candidates[0].latlon[0]:.5f}", f"{want.candidates[0].latlon[1]:.5f}"]
  assert values[0] == "patch_0.jpg" and values[-1] == ""


def test_twenty_requests_at_once_are_each_answered_for_their_own_photo(client, predictor, photos):
  wants = predictor.predict([p for p, _, _ in photos], [s for _, s, _ in photos])
  f = gradio_client.handle_file
  jobs = [client.submit(f(photos[i % 4][0]), f(photos[i % 4][1]), api_name="/locate") for i in range(20)]
  for i, job in enumerate(jobs):
    _assert_same_answer(job.result(timeout=240)[4], wants[i % 4])


def _bomb(path: pathlib.Path) -> pathlib.Path:
  """A 30000 x 30000 greyscale PNG (900 megapixels) of a few hundred bytes: its header says the size."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  side = 30_000
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1) * 4)) + chunk(b"IEND", b""))
  return path


def test_hostile_uploads_get_a_message_each_and_the_server_goes_on(server, client, predictor, photos, tmp_path):
  text_file = tmp_path / "holiday.jpg"
  text_file.write_text("not a photo at all\n")
  empty = tmp_path / "empty.jpg"
  empty.write_bytes(b"")
  bomb = _bomb(tmp_path / "bomb.png")
  assert bomb.stat().st_size < 2000
  small_map = tmp_path / "small_map.png"
  Image.fromarray(np.zeros((10, 20), np.uint8)).save(small_map)
  photo, seg, _ = photos[1]
  side = Image.open(photo).width
  cases = [((text_file, seg), "holiday.jpg: error: not a readable image"),
           ((bomb, seg), "bomb.png: error: image too large (decompression bomb guard)"),
           ((empty, seg), "empty.jpg: error: image file is empty"),
           ((photo, small_map), f"patch_1.jpg: error: segmentation map size 20x10 does not match image size {side}x{side}"),
           ((photo, text_file), "patch_1.jpg: error: holiday.jpg: not a readable image"),
           ((photo, None), "patch_1.jpg: error: no segmentation map for patch_1.jpg")]
  for (image, map_), message in cases:
    text, figure, table, row, record = _locate(client, image, map_)
    assert text.startswith(message) and "\n" not in text, (message, text)
    assert figure is None and row is None and table["data"] == [] and record["candidates"] == []
    assert str(server.home) not in text  # the visitor's file names, not the server's paths
  assert server.proc.poll() is None
  (want,) = predictor.predict([photo], [seg])
  _assert_same_answer(_locate(client, photo, seg)[4], want)


def test_a_busy_port_is_one_line(predictor, server):
  with pytest.raises(UserError, match=f"cannot serve on 127.0.0.1:{server.port}"):
    with serve.running(predictor, port=server.port):
      pass


def _chromium(user_data: pathlib.Path):
  webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) is not installed")
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  options = webdriver.ChromeOptions()
  options.binary_location = str(CHROMIUM)
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1400,1560", f"--user-data-dir={user_data}"):
    options.add_argument(arg)
  options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
  return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="no Chromium: apt-get install chromium chromium-driver (.ci/run does)")
def test_a_browser_uploads_a_photo_and_sees_the_map_and_the_table(server, predictor, photos, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=g-import-not-at-top
  photo, seg, _ = photos[2]
  (want,) = predictor.predict([photo], [seg])
  driver = _chromium(tmp_path / "chromium")
  try:
    driver.get(server.url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(photo)
    driver.find_element(By.CSS_SELECTOR, "#seg input[type=file]").send_keys(seg)
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))
    WebDriverWait(driver, 30).until(
        lambda d: "patch_2_map" in d.find_element(By.CSS_SELECTOR, "#seg").get_attribute("textContent"))
    driver.find_element(By.CSS_SELECTOR, "#locate").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#figure img"))
    WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#topk [role=row]")) > 1)
    rows = [r.text.split("\n") for r in driver.find_elements(By.CSS_SELECTOR, "#topk [role=row]")]
    assert rows[0] == page_lib.TABLE_HEADERS
    assert [r[2] for r in rows[1:]] == [c.place for c in want.candidates]
    assert driver.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value").startswith(
        "patch_2.jpg: within ")
    figure = driver.find_element(By.CSS_SELECTOR, "#figure img")
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", figure) > 600
    time.sleep(0.5)  # the last layout settles before the picture
    out = (REPO / "docs" / "serve_screenshot.png" if os.environ.get("TRANSLOCATOR_WRITE_SCREENSHOT") == "1"
           else tmp_path / "serve_screenshot.png")
    assert driver.save_screenshot(str(out))
    # Offline: the page asked nothing of any machine but the server (fonts, scripts, tiles, analytics).
    urls = {json.loads(e["message"])["message"].get("params", {}).get("request", {}).get("url", "")
            for e in driver.get_log("performance")}
    outside = [u for u in urls if u.split(":")[0] in ("http", "https", "ws", "wss")
               and not u.split("/")[2].startswith(("127.0.0.1", "localhost"))]
    assert not outside
  finally:
    driver.quit()


def test_stopping_the_server_removes_every_upload(server):
  """Last in the module: SIGTERM stops the server cleanly, and nothing a visitor sent is left on disk."""
  assert server.proc.poll() is None
  assert server.stop() == 0
  left = [p for p in server.home.rglob("*")]
  assert not left, left
  assert not list((REPO / "translocator_jax").rglob("*.pyi"))  # Gradio writes stubs beside component subclasses
