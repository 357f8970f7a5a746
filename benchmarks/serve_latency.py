"""translocator-serve's latency: one photo end to end through the warm page against the same photo in process.

  .venv/bin/python benchmarks/serve_latency.py --workdir WORKDIR [--data-dir TFDS_DIR] [--rounds 15]

Serves the checkpoint's page (commands/serve.running: the server's threads in this process) and asks it with
Gradio's client: upload the photo and its map, wait in the queue, get the answer, download the figure and the CSV
row. The references, in the same process and interleaved round by round: Predictor.predict on the same files
(batch 1, as the page calls it), and the page's whole work without the web (infer/page.Page.answer: predict, the
figure, the CSV row). The photo is an Earth test patch with its truth in EXIF (a model trained on the Earth patches)
or --photo / --seg. Then 20 requests at once, each checked against Predictor.predict.

Prints one JSON object: median seconds of each, `ratio_vs_predict` and `ratio_vs_same_work` (medians of the
per-round ratios), the concurrent burst's seconds and whether every answer matched.
"""
import argparse
import json
import os
import pathlib
import socket
import statistics
import sys
import tempfile
import time

import numpy as np

from translocator_jax.commands import serve
from translocator_jax.infer import page as page_lib
from translocator_jax.infer.predictor import Predictor
from translocator_jax.runtime import perf


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a trained workdir (e.g. the demo's runs/earth_demo)")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--photo", default=None)
  p.add_argument("--seg", default=None)
  p.add_argument("--rounds", type=int, default=15)
  p.add_argument("--concurrent", type=int, default=20)
  args = p.parse_args(argv)
  perf.configure_cpu_runtime()
  from gradio_client import Client, handle_file  # pylint: disable=g-import-not-at-top

  predictor = Predictor.from_checkpoint(args.workdir, data_dir=args.data_dir)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    photo, seg = args.photo, args.seg
    if photo is None:
      examples = page_lib.earth_examples(predictor, tmp / "photo", count=2)
      if not examples:
        sys.exit("no Earth test patch for this model: give --photo (and --seg for a two-stream model)")
      photo, seg = examples[1]
    segs = [seg] if seg else None
    page = page_lib.Page(predictor)
    (want,) = predictor.predict([photo], segs)
    if want.error:
      sys.exit(want.error)
    with serve.running(predictor, port=_free_port()) as server:
      client = Client(server.url, download_files=str(tmp / "downloads"), verbose=False)
      ask = lambda: client.predict(handle_file(photo), handle_file(seg) if seg else None, api_name="/locate")
      ask()  # the client's first request opens its connections
      times = {"predict_s": [], "same_work_s": [], "page_s": []}
      for r in range(args.rounds):
        t = time.perf_counter()
        predictor.predict([photo], segs, top_k=page.top_k, batch_size=1, keep_inputs=True)
        times["predict_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=tmp) as out:
          page.answer(photo, seg, out)
        times["same_work_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        record = ask()[4]
        times["page_s"].append(time.perf_counter() - t)
        assert np.allclose(record["candidates"][0]["latlon"], want.candidates[0].latlon, atol=1e-5), record

      t = time.perf_counter()
      jobs = [client.submit(handle_file(photo), handle_file(seg) if seg else None, api_name="/locate")
              for _ in range(args.concurrent)]
      answers = [job.result(timeout=600)[4] for job in jobs]
      burst_s = time.perf_counter() - t
    matched = all(np.allclose(a["candidates"][0]["latlon"], want.candidates[0].latlon, atol=1e-5)
                  and abs(a["radius50_km"] - want.radius50_km) <= 0.11 and abs(a["radius90_km"] - want.radius90_km)
                  <= 0.11 for a in answers)
  out = {name: round(statistics.median(v), 4) for name, v in times.items()}
  out["ratio_vs_predict"] = round(statistics.median(
      [a / b for a, b in zip(times["page_s"], times["predict_s"])]), 1)
  out["ratio_vs_same_work"] = round(statistics.median(
      [a / b for a, b in zip(times["page_s"], times["same_work_s"])]), 3)
  out.update(rounds=args.rounds, concurrent=args.concurrent, concurrent_s=round(burst_s, 2),
             concurrent_all_correct=matched, photo=os.path.basename(photo), cpus=os.cpu_count())
  print(json.dumps(out))


if __name__ == "__main__":
  main()
