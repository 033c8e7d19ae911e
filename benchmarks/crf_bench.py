"""Dense CRF time per image: this project's permutohedral mean field vs pydensecrf2 (CPU), and on CUDA.

    python benchmarks/crf_bench.py                  # 500x375x21 and 2048x1024x19, CPU (+ CUDA if present)
    python benchmarks/crf_bench.py --json crf.json --repeats 5

DeepLab V2's parameters, 10 iterations. The image is a textured gradient with noise and the probabilities a
noisy upsampled random map, so the CRF changes a fair share of the pixels; the agreement column is the share
of pixels whose label matches pydensecrf2's; the build column is the part of our time spent setting up the two
kernels (features, permutohedral lattice, normalisation); the rest is the mean-field iterations.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from deeplab_lightning.evaluation.crf import _NormalisedKernel, _pixel_features, dense_crf

PARAMS = dict(iterations=10, bi_w=4.0, bi_xy_std=67.0, bi_rgb_std=3.0, pos_w=3.0, pos_xy_std=1.0)


def make_case(h: int, w: int, c: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(xx * 0.5) % 256, (yy * 0.7) % 256, ((xx + yy) * 0.3) % 256], -1)
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    coarse = torch.from_numpy(rng.normal(0, 3, (1, c, h // 16, w // 16))).float()
    logits = F.interpolate(coarse, size=(h, w), mode="bilinear")[0]
    return image, torch.softmax(logits + torch.from_numpy(rng.normal(0, 0.5, (c, h, w))).float(), 0)


def pydensecrf_run(image: np.ndarray, probs: torch.Tensor) -> np.ndarray:
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.numpy())))
    crf.addPairwiseGaussian(sxy=PARAMS["pos_xy_std"], compat=PARAMS["pos_w"])
    crf.addPairwiseBilateral(sxy=PARAMS["bi_xy_std"], srgb=PARAMS["bi_rgb_std"], rgbim=np.ascontiguousarray(image),
                             compat=PARAMS["bi_w"])
    return np.array(crf.inference(PARAMS["iterations"])).reshape(c, h, w)


def build_kernels(image: torch.Tensor) -> list[_NormalisedKernel]:
    """The two normalised kernels :func:`dense_crf` builds for ``image`` (uint8 [H, W, 3])."""
    return [_NormalisedKernel(_pixel_features(image, PARAMS["pos_xy_std"], None)),
            _NormalisedKernel(_pixel_features(image, PARAMS["bi_xy_std"], PARAMS["bi_rgb_std"]))]


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, object]:
    out = fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run(cases: list[str], repeats: int) -> tuple[list[dict], Table]:
    """Time every ``HxWxC`` case with pydensecrf2 (when installed) and ours on CPU (and CUDA if present)."""
    table = Table(title=f"Dense CRF, 10 iterations, median of {repeats} (torch threads: {torch.get_num_threads()})")
    for col in ("case", "implementation", "device", "s / image", "build s", "vs pydensecrf2", "label agreement"):
        table.add_column(col, justify="left" if col in ("case", "implementation", "device") else "right")
    rows = []
    for case in cases:
        h, w, c = (int(v) for v in case.split("x"))
        image, probs = make_case(h, w, c)
        try:
            ref_s, reference = timed(partial(pydensecrf_run, image, probs), repeats)
            rows.append({"case": case, "impl": "pydensecrf2", "device": "cpu", "seconds": ref_s})
            table.add_row(case, "pydensecrf2", "cpu", f"{ref_s:.3f}", "", "1.00", "")
        except ImportError:
            ref_s, reference = None, None
            table.add_row(case, "pydensecrf2", "cpu", "not installed", "", "", "")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            img_t, probs_t = torch.from_numpy(image).to(device), probs.to(device)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            secs, out = timed(partial(dense_crf, img_t, probs_t, **PARAMS), repeats, sync)
            build_s, _ = timed(partial(build_kernels, img_t), repeats, sync)
            agree = None if reference is None else float((out.argmax(0).cpu().numpy() == reference.argmax(0)).mean())
            rows.append({"case": case, "impl": "deeplab_lightning", "device": device, "seconds": secs,
                         "build_seconds": build_s, "agreement": agree})
            ratio = "" if ref_s is None else f"{secs / ref_s:.2f}"
            table.add_row(case, "deeplab_lightning", device, f"{secs:.3f}", f"{build_s:.3f}", ratio,
                          "" if agree is None else f"{100 * agree:.3f}%")
    return rows, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["375x500x21", "1024x2048x19"], help="HxWxC cases")
    parser.add_argument("--json")
    args = parser.parse_args()
    rows, table = run(args.sizes, args.repeats)
    Console().print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
