"""A web page for a trained model: `translocator-serve --workdir W | --checkpoint DIR [--host 127.0.0.1]
[--port 7860] [--share]` (the `serve` extra: pip install -e '.[serve]').

The page takes a photo (upload, paste, or for the Earth-demo model one of a few Earth test patches carrying their
true location) and an optional segmentation map (or the local segmenter with --segmenter), and answers as
translocator-predict does: the prediction figure, the top-k table, the radii, the refined answer, the CSV row to
download. One Predictor is loaded once; requests wait in a queue and are answered one at a time
(infer/page.py). A bad upload gets its one-line message on the page and the server goes on.

Offline: no tile server, font or script from outside the machine, Gradio's telemetry off; a public link only with
--share. Uploads and answers live in a temporary folder, pruned while serving and removed at exit (Ctrl-C or
SIGTERM).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import pathlib
import signal
import sys
import tempfile
import threading
from typing import Any, Iterator, Sequence

from translocator_jax import errors
from translocator_jax.infer import page as page_lib
from translocator_jax.infer import refine as refine_lib
from translocator_jax.infer.predictor import Predictor
from translocator_jax.runtime import cli

# Set before Gradio is imported: nothing is sent to Gradio's or the Hub's servers.
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_SSR_MODE": "False"}
NO_GRADIO = "the web page needs Gradio: pip install -e '.[serve]'"
MAX_UPLOAD = "32mb"
PRUNE_EVERY_S, KEEP_S = 300, 1800  # uploads and answers older than KEEP_S are deleted while serving
TITLE = "TransLocator: where was this photo taken?"
CSS = "#answer textarea {font-family: var(--font-mono); font-size: 0.85em}"  # the columns of the text line up


@dataclasses.dataclass
class Server:
  url: str                   # the local address
  share_url: str | None      # the public link (--share)
  temp_dir: pathlib.Path     # every upload and answer is under it; removed when the server stops
  blocks: Any                # the gradio.Blocks


def _gradio():
  os.environ.update(OFFLINE_ENV)
  try:
    import gradio  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError(NO_GRADIO) from None
  return gradio


def build_page(page: page_lib.Page, examples: Sequence[Sequence[str]], work_dir: pathlib.Path, *,
               description: str = ""):
  """The gradio.Blocks of the page (not launched). Each request's figure and CSV are drawn in a temporary folder
  under work_dir and copied into Gradio's cache, which the server prunes."""
  gr = _gradio()

  with gr.Blocks(title="TransLocator", analytics_enabled=False, delete_cache=(PRUNE_EVERY_S, KEEP_S)) as blocks:
    gr.Markdown(f"# {TITLE}\n{description}")
    with gr.Row():
      with gr.Column(scale=2):
        photo = gr.Image(label="photo", type="filepath", sources=["upload", "clipboard"], elem_id="photo",
                         height=260)
        # The uploaded file itself, unopened: our own decoder reads it, with its decompression-bomb guard and its
        # message for what is not a usable photo. (On the instance: a subclass of a component makes Gradio write
        # a .pyi stub beside this file.)
        photo.preprocess = lambda payload: None if payload is None or not payload.path else payload.path
        seg = gr.File(label="segmentation map (optional; PNG of ADE20K classes or colours)", elem_id="seg",
                      height=90)
        locate = gr.Button("Locate", variant="primary", elem_id="locate")
      with gr.Column(scale=3):
        text = gr.Textbox(label="answer (as translocator-predict prints it)", lines=8, elem_id="answer")
        table = gr.Dataframe(headers=page_lib.TABLE_HEADERS, label="top candidates", interactive=False,
                             elem_id="topk")
    figure = gr.Image(label="prediction", type="filepath", format="png", interactive=False, elem_id="figure")
    with gr.Row():
      row = gr.File(label="CSV row (translocator-predict --csv)", interactive=False, elem_id="csv")
      with gr.Accordion("JSON", open=False):
        record = gr.JSON(label="prediction", elem_id="json")
    if examples:
      gr.Examples(examples, [photo, seg], label="Earth test patches (their true location is in their EXIF)")

    def answer(photo_path, seg_path):
      with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        a = page.answer(photo_path, seg_path, tmp)
        # Copied into Gradio's cache before the folder goes (and pruned from there with the uploads).
        return (a.text, figure.move_resource_to_block_cache(a.figure) if a.figure else None,
                a.rows, row.move_resource_to_block_cache(a.csv) if a.csv else None, a.json)

    locate.click(answer, [photo, seg], [text, figure, table, row, record], api_name="locate", concurrency_limit=1)
  return blocks


@contextlib.contextmanager
def running(predictor: Predictor, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
            top_k: int = 5, quiet: bool = True) -> Iterator[Server]:
  """The page served over predictor until the block ends (warmed up first: the first visitor waits for no
  compile); its temporary folder is removed at the end."""
  with tempfile.TemporaryDirectory(prefix="translocator-serve-") as root:
    root = pathlib.Path(root)
    cache, work = root / "cache", root / "requests"
    work.mkdir()
    before = os.environ.get("GRADIO_TEMP_DIR")
    # Gradio keeps uploads there; set before it is imported (some of its modules read it then) and while serving.
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    blocks = None
    try:
      gr = _gradio()
      page = page_lib.Page(predictor, top_k=top_k)
      examples = page_lib.earth_examples(predictor, root / "examples")
      config = predictor.config
      description = (f"Model: {config.model.variant} trained on `{config.data.train}`; "
                     f"radii {'calibrated' if predictor.calibration.calibrated else 'not calibrated'}"
                     + ("; refined with its gallery" if page.refine else "") + ".")
      blocks = build_page(page, examples, work, description=description)
      blocks.queue(default_concurrency_limit=1, max_size=256)
      try:
        _, url, share_url = blocks.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True, quiet=quiet,
            show_error=True, max_file_size=MAX_UPLOAD, footer_links=["api"], ssr_mode=False, mcp_server=False,
            pwa=False, enable_monitoring=False, theme=gr.themes.Default(), css=CSS)
      except OSError as e:
        raise errors.UserError(f"cannot serve on {host}:{port}: {e}") from None
      page.warm_up(work)  # a visitor arriving meanwhile waits for it
      yield Server(url, share_url, root, blocks)
    finally:
      if blocks is not None:
        blocks.close(verbose=False)
      if before is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
      else:
        os.environ["GRADIO_TEMP_DIR"] = before


def parse_args(argv):
  p = argparse.ArgumentParser(prog="translocator-serve", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  cli.add_checkpoint_args(p)
  p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
  p.add_argument("--port", type=int, default=7860)
  p.add_argument("--share", action="store_true", help="also a public link through Gradio's share servers")
  p.add_argument("--segmenter", default=None, help="a transformers ADE20K segmentation model folder (for photos "
                                                   "uploaded without a map)")
  p.add_argument("--top-k", type=int, default=5)
  p.add_argument("--data-dir", default=None, help="TFDS data dir of the training set (for its partitions)")
  p.add_argument("--refine", default=None, choices=refine_lib.REFINE_MODES,
                 help="'gallery': refine with the checkpoint's gallery (default: config.eval.refine)")
  p.add_argument("--gallery", default=None, metavar="DIR", help="the gallery (default: WORKDIR/gallery)")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  return cli.run(_main, sys.argv[1:] if argv is None else argv, prog="translocator-serve", distributed=False)


def _main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  if not 0 < args.port < 65536:
    raise errors.UserError(f"--port {args.port}: not a port number (1-65535)")
  if importlib.util.find_spec("gradio") is None:  # said before the model loads
    raise errors.UserError(NO_GRADIO)
  predictor = Predictor.from_checkpoint(args.workdir or args.checkpoint, which=args.which,
                                        segmenter_dir=args.segmenter, data_dir=args.data_dir, refine=args.refine,
                                        gallery_dir=args.gallery)
  stop = threading.Event()
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.set())
  with running(predictor, host=args.host, port=args.port, share=args.share, top_k=args.top_k) as server:
    print(f"serving on {server.url}" + (f" and {server.share_url}" if server.share_url else ""), flush=True)
    print(f"uploads and answers in {server.temp_dir} (removed at exit); Ctrl-C stops", file=sys.stderr, flush=True)
    stop.wait()
  print("stopped", file=sys.stderr, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
