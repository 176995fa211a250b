"""Every GPU path end to end on real-architecture random weights: load, latency, memory, batches.

For a machine with an accelerator: does each model that follows ``MEDLOOP_DEVICE`` load and run
there, how long does it take, how much GPU memory does it hold, and how does throughput grow
with the batch? No weights are downloaded: each model is built with random weights of its real
architecture and then loaded the way a user's checkpoint loads.

Paths (``--only`` picks some):

* ``xrv-densenet``: TorchXRayVision's DenseNet-121 classifier (``densenet121-res224-all``),
  random weights written in the release file's format where torchxrayvision looks, loaded by
  name (``tools.models.xrv``); input (B, 1, 224, 224).
* ``xrv-pspnet``: ChestX-Det's PSPNet anatomy segmenter the same way; input (B, 1, 512, 512).
* ``vlm``: a LLaVA-architecture image-text-to-text model built from a config (``--small``: a few
  layers of width 32; else width 256, 4 layers, 224 px, 256 image tokens), saved, loaded
  through ``tools.models.vlm.HfVlm`` (``AutoModelForImageTextToText``: bfloat16 on CUDA).
  Batch 1 is the tool's own call (``HfVlm.generate``); larger batches pad the prompts and
  generate together. 16 new tokens per image.
* ``sam``: ``SamModel`` from its default config (ViT-B: MedSAM's architecture; ``--small``: a
  tiny one), saved and loaded through ``tools.models.hf.HfSamSegmenter``. Batch 1 is the tool's
  call (encoder + box decoder); larger batches encode the images together and decode one box
  each.
* ``faiss``: medloop's ``retrievers.index.VectorIndex`` (flat, inner product) over 200,000 x 512
  random unit vectors (``--small``: 5,000 x 64); searched 10-NN per query; on a GPU copy when
  faiss sees one (faiss-gpu), else on the CPU (said in the note).

Each path runs in a fresh process (``--in-process``: all in this one), so its load is from
cold and its memory is its own. Columns: ``load`` (seconds of the loading path, weights already
on disk), ``ms/img`` (median latency of one call the way medloop's tool makes it), ``peak MB``
(``torch.cuda.max_memory_allocated`` over the load and the runs; faiss: the device's
used-memory growth; CPU: the process's peak RSS), then images (or queries) per second on the
batched path at each batch, with the ratio to batch 1 measured in the same run. A path whose
package is missing is SKIPPED; one that raises, crashes or hangs is FAILED (exit 1).

    python bench/gpu_check.py                    # auto device, batches 1,8,32 on CUDA
    python bench/gpu_check.py --device cpu --small --batches 1,2   # what the CPU test runs
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PATHS = ("xrv-densenet", "xrv-pspnet", "vlm", "sam", "faiss")
NEW_TOKENS = 16


@dataclass
class Row:
    """One path's measurements (seconds, milliseconds, MB, items per second)."""

    path: str
    device: str
    status: str = "ok"
    load_s: float | None = None
    ms_per_image: float | None = None
    peak_mb: float | None = None
    per_s: dict[int, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class Check:
    """A path set up and ready.

    ``load()`` is timed; ``tool()`` is one call the way medloop's tool makes it (the latency
    column; default ``run(1)``); ``run(batch)`` is the batched path (the throughput columns).
    """

    load: Callable[[], None]
    run: Callable[[int], None]
    note: str = ""
    gpu_bytes: Callable[[], float | None] | None = None  # used memory, where torch cannot see
    tool: Callable[[], None] | None = None


class Skip(Exception):
    """A path that cannot run here (a package missing): reported, not failed."""


# =============================================================================================
# Paths
# =============================================================================================
def xrv_models() -> Any:
    """``tools.models.xrv``: random weights in the release format and the loaders by name."""
    try:
        from tools.models import xrv
    except ImportError as exc:  # pragma: no cover  (torchxrayvision missing)
        raise Skip(f"tools.models.xrv cannot be imported ({exc})") from exc
    try:
        import torchxrayvision  # noqa: F401
    except ImportError as exc:
        raise Skip("torchxrayvision is not installed") from exc
    return xrv


def _xrv_check(name: str, device: str, work: Path, small: bool) -> Check:
    import torch

    xrv = xrv_models()
    xrv.write_random_weights(name, work)
    res = 512 if name == "xrv-pspnet" else 224
    state: dict[str, Any] = {}

    def load() -> None:
        state["model"] = (xrv.load_pspnet(device, work) if name == "xrv-pspnet"
                          else xrv.load_classifier(name, device, work))

    def run(batch: int) -> None:
        x = torch.rand(batch, 1, res, res, device=device) * 2048 - 1024
        with torch.inference_mode():
            state["model"](x)

    return Check(load, run, note=f"{name}, input (B, 1, {res}, {res})")


def _vlm_check(device: str, work: Path, small: bool) -> Check:
    import numpy as np
    import torch

    from tests.tiny_vlm import build_tiny_llava
    from tools.models.vlm import HfVlm

    sizes = (dict(hidden=32, layers=2, image_size=32, patch=8) if small
             else dict(hidden=256, layers=4, image_size=224, patch=14))
    folder = build_tiny_llava(work / "vlm", **sizes)  # type: ignore[arg-type]
    vlm = HfVlm(str(folder), device=device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (256, 256), dtype=np.uint8) for _ in range(4)]
    state: dict[str, Any] = {}

    def load() -> None:
        state["model"], state["processor"] = vlm.model()

    def tool() -> None:
        vlm.generate(images[0], "Is there an effusion?", system="Answer briefly.",
                     max_new_tokens=NEW_TOKENS)

    def run(batch: int) -> None:
        from PIL import Image

        model, processor = state["model"], state["processor"]
        processor.tokenizer.padding_side = "left"
        msgs = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "Is there an effusion?"}]}]
        text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        pil = [Image.fromarray(images[i % len(images)]).convert("RGB") for i in range(batch)]
        inputs = processor(images=pil, text=[text] * batch, padding=True, return_tensors="pt")
        inputs = inputs.to(vlm.device, dtype=model.dtype)
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                           do_sample=False)

    width = sizes["hidden"]
    return Check(load, run, tool=tool,
                 note=f"LLaVA-architecture, width {width}, {NEW_TOKENS} new tokens per image; "
                      "ms/img: HfVlm.generate (the tool's call, up to 16 tokens)")


def _sam_dir(work: Path, small: bool) -> Path:
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    if small:
        cfg = SamConfig(
            vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               mlp_dim=64, output_channels=32, image_size=64, patch_size=8,
                               global_attn_indexes=[1], window_size=4, num_pos_feats=16),
            prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8,
                                       mask_input_channels=4),
            mask_decoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     mlp_dim=64, iou_head_hidden_dim=32))
        processor = SamProcessor(image_processor=SamImageProcessor(
            size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}))
    else:
        cfg = SamConfig()  # ViT-B image encoder at 1024 px: MedSAM's (wanglab/medsam-vit-base)
        processor = SamProcessor(image_processor=SamImageProcessor())
    torch.manual_seed(0)
    folder = work / "sam"
    SamModel(cfg).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _sam_check(device: str, work: Path, small: bool) -> Check:
    import numpy as np
    import torch

    from tools.image import to_rgb
    from tools.models.hf import HfSamSegmenter

    seg = HfSamSegmenter(str(_sam_dir(work, small)), device=device, cache_size=1)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (480, 640), dtype=np.uint8) for _ in range(2)]
    box = (100.0, 80.0, 400.0, 360.0)
    state: dict[str, Any] = {"calls": 0}

    def load() -> None:
        state["model"], state["processor"], _kind = seg.model()

    def tool() -> None:  # a new image id each time, so the encoder runs as on a new image
        state["calls"] += 1
        seg.predict(f"bench-{state['calls']}", images[state["calls"] % 2], box)

    def run(batch: int) -> None:
        model, processor = state["model"], state["processor"]
        rgb = [to_rgb(images[i % 2]) for i in range(batch)]
        inputs = processor(images=rgb, input_boxes=[[list(box)]] * batch, return_tensors="pt")
        with torch.inference_mode():
            emb = model.get_image_embeddings(inputs["pixel_values"].to(device))
            model(image_embeddings=emb, input_boxes=inputs["input_boxes"].to(device),
                  multimask_output=False)

    size = "tiny" if small else "ViT-B, 1024 px"
    return Check(load, run, tool=tool,
                 note=f"SamModel {size}, one box per image; ms/img: HfSamSegmenter.predict "
                      "(the tool's call, encoder + decoder)")


def _faiss_check(device: str, work: Path, small: bool) -> Check:
    import numpy as np

    try:
        import faiss
    except ImportError as exc:
        raise Skip("faiss is not installed") from exc
    from retrievers.index import IndexParams, VectorIndex

    n, dim = (5_000, 64) if small else (200_000, 512)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    queries = rng.standard_normal((64, dim), dtype=np.float32)
    on_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    state: dict[str, Any] = {}

    def load() -> None:
        index = VectorIndex(IndexParams(dim=dim, kind="flat"))
        index.add(vectors, np.arange(n))
        index.search(queries[:1], 10)  # makes the GPU copy when faiss has a GPU
        state["index"] = index

    def run(batch: int) -> None:
        state["index"].search(queries[:batch], 10)

    where = "on a GPU copy" if on_gpu else "on the CPU (this faiss has no GPU support)"
    if device == "cuda" and not on_gpu:
        where += "; install faiss-gpu for the GPU path"
    return Check(load, run, note=f"VectorIndex flat, {n:,} x {dim}, 10-NN, {where}",
                 gpu_bytes=_cuda_used_bytes if on_gpu else None)


def _cuda_used_bytes() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return float(total - free)


BUILDERS: dict[str, Callable[[str, Path, bool], Check]] = {
    "xrv-densenet": lambda d, w, s: _xrv_check("densenet121-res224-all", d, w, s),
    "xrv-pspnet": lambda d, w, s: _xrv_check("xrv-pspnet", d, w, s),
    "vlm": _vlm_check,
    "sam": _sam_check,
    "faiss": _faiss_check,
}


# =============================================================================================
# Measuring
# =============================================================================================
def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(path: str, device: str, batches: Sequence[int], repeats: int, small: bool,
            work: Path) -> Row:
    """One path: set up (untimed), load (timed), warm up, then each batch ``repeats`` times."""
    import torch

    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    row = Row(path, device)
    try:
        check = BUILDERS[path](device, work, small)
    except Skip as why:
        row.status, row.note = "SKIPPED", str(why)
        return row
    row.note = check.note
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    base = check.gpu_bytes() if check.gpu_bytes else None
    row.load_s = _timed(check.load, device)
    tool = check.tool or (lambda: check.run(1))
    tool()  # warm-up: kernels, caches, lazy copies
    if cuda:
        check.run(max(batches))  # and the largest batch's kernels (cuDNN picks per shape)
    row.ms_per_image = 1000 * statistics.median(_timed(tool, device) for _ in range(repeats))
    for b in batches:
        times = [_timed(lambda b=b: check.run(b), device) for _ in range(repeats)]
        row.per_s[b] = b / statistics.median(times)
    if check.gpu_bytes and base is not None:
        now = check.gpu_bytes()
        row.peak_mb = None if now is None else (now - base) / 1e6
    elif cuda:
        row.peak_mb = torch.cuda.max_memory_allocated() / 1e6
    else:
        row.peak_mb = _rss_mb()
    return row


def run_paths(paths: Sequence[str], device: str, batches: Sequence[int], repeats: int,
              small: bool) -> list[Row]:
    """Every path in turn in this process, each in its own scratch folder.

    A failure is a row, not a crash. Models are dropped between paths, but the process's peak
    RSS only grows: ``run_isolated`` gives each path a fresh process instead.
    """
    rows = []
    for path in paths:
        with tempfile.TemporaryDirectory(prefix=f"gpu-check-{path}-") as tmp:
            try:
                rows.append(measure(path, device, batches, repeats, small, Path(tmp)))
            except Exception as exc:  # one broken path must not hide the others' numbers
                traceback.print_exc(file=sys.stderr)
                rows.append(Row(path, device, status="FAILED", note=_one_line(exc)))
        _free(device)
    return rows


def _free(device: str) -> None:
    """Drop every loaded model between paths, so each path's peak is its own."""
    import gc

    from tools.models import registry

    for key in [r["key"] for r in registry.loaded_models()]:
        registry.unload(key)
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def _one_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:200] if first else type(exc).__name__


_ROW = "GPU-CHECK-ROW "  # the child's result line on stdout


def run_isolated(paths: Sequence[str], device: str, batches: Sequence[int], repeats: int,
                 small: bool, timeout_s: float) -> list[Row]:
    """Each path in a fresh process (``--one``).

    Its own load from cold, memory peak and CUDA context; a crash or a hang (``timeout_s``)
    there is that path's FAILED row.
    """
    import subprocess

    rows = []
    for path in paths:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", path, "--device", device,
               "--batches", ",".join(map(str, batches)), "--repeats", str(repeats)]
        try:
            done = subprocess.run(cmd + (["--small"] if small else []), capture_output=True,
                                  text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            rows.append(Row(path, device, status="FAILED", note=f"no result in {timeout_s:g} s"))
            continue
        found = [ln[len(_ROW):] for ln in done.stdout.splitlines() if ln.startswith(_ROW)]
        if not found:
            sys.stderr.write(done.stderr)
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            rows.append(Row(path, device, status="FAILED", note=last[:200]))
            continue
        data = json.loads(found[-1])
        data["per_s"] = {int(k): v for k, v in data["per_s"].items()}
        rows.append(Row(**data))
    return rows


# =============================================================================================
# Report
# =============================================================================================
def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: Sequence[Row], batches: Sequence[int]) -> str:
    """A Markdown table: one row per path, throughput at each batch with its ratio to b=1."""
    cuda = any(r.device == "cuda" for r in rows)
    mem = "peak GPU MB" if cuda else "peak RSS MB"
    head = ["path", "status", "load s", "ms/img (b=1)", mem,
            *[f"/s b={b} (×b1)" for b in batches], "note"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (3 + len(batches)) + ["---"]) + "|"]
    for r in rows:
        one = r.per_s.get(1)
        rates = []
        for b in batches:
            v = r.per_s.get(b)
            ratio = f" ({v / one:.1f}×)" if v is not None and one else ""
            rates.append(f"{_fmt(v, '.1f')}{ratio}")
        cells = [r.path, r.status, _fmt(r.load_s, ".2f"), _fmt(r.ms_per_image, ".1f"),
                 _fmt(r.peak_mb, ".0f"), *rates, r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _device(choice: str) -> str:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda, but torch sees no CUDA device")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def _header(device: str) -> str:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        where = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    else:
        where = f"CPU, {torch.get_num_threads()} torch threads"
    return f"torch {torch.__version__}; {where}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; print the table; 0 when nothing FAILED (SKIPPED is not a failure)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batches", help="batch sizes, e.g. 1,8,32 (default: 1,8,32 on CUDA, "
                                     "1,2 on the CPU); 1 is always measured")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per batch (median)")
    p.add_argument("--only", help=f"comma-separated paths of {', '.join(PATHS)}")
    p.add_argument("--small", action="store_true",
                   help="tiny VLM, SAM and index (a quick smoke run)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--in-process", action="store_true",
                   help="run every path in this process (default: a fresh process per path)")
    p.add_argument("--path-timeout", type=float, default=1800, metavar="S",
                   help="seconds one path may take in its own process (default 1800)")
    p.add_argument("--one", choices=PATHS, help=argparse.SUPPRESS)  # the child of run_isolated
    args = p.parse_args(argv)
    from tools.torch_compat import ensure_torchvision

    ensure_torchvision()
    device = _device(args.device)
    paths = [s.strip() for s in args.only.split(",")] if args.only else list(PATHS)
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        p.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    default = "1,8,32" if device == "cuda" else "1,2"
    batches = sorted({1, *(int(b) for b in (args.batches or default).split(","))})
    if min(batches) < 1 or args.repeats < 1:
        p.error("batches and --repeats must be at least 1")
    if args.one:
        [row] = run_paths([args.one], device, batches, args.repeats, args.small)
        print(_ROW + json.dumps(asdict(row)))
        return 0
    if args.in_process:
        rows = run_paths(paths, device, batches, args.repeats, args.small)
    else:
        rows = run_isolated(paths, device, batches, args.repeats, args.small, args.path_timeout)
    print(_header(device))
    print(table(rows, batches))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 1 if any(r.status == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
