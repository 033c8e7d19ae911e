"""The training data path per sample on one CPU core: this project (files, and its decoded cache) against the
peers' pipelines, on the same files, interleaved in one process.

    python benchmarks/data_path.py [--voc 12] [--cityscapes 6] [--rounds 3] [--json out.json]

Pipelines, each from the files to what leaves a data-loader worker (image and mask tensors of one sample):
- ``ours``: ``SegmentationDataset`` with ``RandomScaleCrop`` (libjpeg-turbo / libspng decode, only the crop
  window resampled, uint8 mask); ``ours, cached``: the same reading the split's decoded store.
- ``torchvision references``: Pillow decode, scale 0.5-2 (antialiased bilinear; mask nearest), random crop
  padded to the crop, flip, float normalised image and int64 mask (``references/segmentation``'s preset on
  the ``transforms.v2`` API).
- ``mmsegmentation-style``: OpenCV image decode, Pillow label decode (mmseg's default backends), the whole image
  rescaled (``cv2.resize``, bilinear / nearest), random crop, flip, CHW tensor and int64 mask (``cat_max_ratio``
  left out: it only adds time).

Images are photo-like, not flat shapes (which decode unrealistically fast): 1/f^3.2 noise, whose files have the
real datasets' sizes (a 500x375 JPEG at quality 90 of ~45 kB like VOC's, a 2048x1024 PNG of ~2.3 MB like
Cityscapes'), over label maps of smooth regions with void borders. The scale is drawn from 0.5-2.0 for every
pipeline (crops 513 for VOC, 769 for Cityscapes). The table gives the median ms per sample, the ratio to the
fastest peer and the cores one GPU needs at ``--voc-rate`` / ``--cityscapes-rate`` training images/s; the last
rows time the evaluation read (a full Cityscapes image and its labels) and decoding alone.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.io as tvio  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from deeplab_lightning.data.cache import DecodedSplit, write_split  # noqa: E402
from deeplab_lightning.data.cityscapes import cityscapes_label_map  # noqa: E402
from deeplab_lightning.data.dataset import Sample, SegmentationDataset  # noqa: E402
from deeplab_lightning.data.decode import decode_image, decode_labels  # noqa: E402
from deeplab_lightning.data.transforms import RandomScaleCrop  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
PEERS = ("torchvision references", "mmsegmentation-style")


def photo_like(h: int, w: int, seed: int, beta: float = 3.2) -> np.ndarray:
    """uint8 [h, w, 3]: noise with a 1/f^beta power spectrum, correlated across channels, as photos are."""
    rng = np.random.default_rng(seed)
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    f[0, 0] = 1
    amplitude = f ** (-beta / 2)

    def field() -> np.ndarray:
        return np.fft.irfft2(amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape)), s=(h, w))

    shared = field()
    image = np.stack([0.8 * shared + 0.35 * field() for _ in range(3)], axis=-1)
    image = (image - image.mean()) / image.std()
    return (255 / (1 + np.exp(-1.2 * image))).astype(np.uint8)


def region_labels(h: int, w: int, seed: int, classes: int) -> np.ndarray:
    """uint8 [h, w]: smooth regions of ``classes`` ids with 255 (void) where regions meet, like VOC's outlines."""
    field = photo_like(h, w, seed, beta=4.0)[..., 0].astype(np.int64)
    labels = (field * classes // 256).astype(np.uint8)
    edges = np.zeros_like(labels, dtype=bool)
    edges[1:] |= labels[1:] != labels[:-1]
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    labels[edges] = 255
    return labels


def write_files(root: Path, voc: int, cityscapes: int, city_size: tuple[int, int]) -> dict[str, list[Sample]]:
    palette = [v for i in range(256) for v in (i, i, i)]
    sets: dict[str, list[Sample]] = {"voc": [], "cityscapes": []}
    for i in range(voc):
        image, mask = root / f"voc_{i}.jpg", root / f"voc_{i}.png"
        Image.fromarray(photo_like(375, 500, i)).save(image, quality=90)
        labels = Image.fromarray(region_labels(375, 500, 1000 + i, 21), "P")
        labels.putpalette(palette)
        labels.save(mask)
        sets["voc"].append(Sample(f"voc_{i}", image, mask))
    for i in range(cityscapes):
        image, mask = root / f"city_{i}.png", root / f"city_{i}_labelIds.png"
        Image.fromarray(photo_like(*city_size, 100 + i)).save(image)
        raw = region_labels(*city_size, 2000 + i, 34)
        Image.fromarray(np.where(raw == 255, 0, raw).astype(np.uint8), "L").save(mask)
        sets["cityscapes"].append(Sample(f"city_{i}", image, mask))
    return sets


def torchvision_reference(crop: int) -> Callable[[Sample, torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    after_resize = v2.Compose([
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
        v2.RandomHorizontalFlip(),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(MEAN, STD),
    ])

    def run(sample: Sample, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = Image.open(sample.image).convert("RGB"), Image.open(sample.mask)
        scale = 0.5 + 1.5 * torch.rand((), generator=generator).item()
        size = [round(image.height * scale), round(image.width * scale)]
        image = v2.functional.resize(image, size, antialias=True)
        mask = v2.functional.resize(mask, size, interpolation=v2.InterpolationMode.NEAREST)
        pair = tv_tensors.Image(v2.functional.pil_to_tensor(image)), tv_tensors.Mask(torch.from_numpy(np.array(mask)))
        return after_resize(*pair)

    return run


def mmseg_style(crop: int) -> Callable[[Sample, torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    def run(sample: Sample, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        image = cv2.imdecode(np.frombuffer(sample.image.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        labels = np.array(Image.open(sample.mask))
        u = torch.rand(4, generator=generator).tolist()
        scale = 0.5 + 1.5 * u[0]
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
        top = int(u[1] * (max(image.shape[0] - crop, 0) + 1))
        left = int(u[2] * (max(image.shape[1] - crop, 0) + 1))
        image, labels = image[top: top + crop, left: left + crop], labels[top: top + crop, left: left + crop]
        if u[3] < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.from_numpy(labels.astype(np.int64)))

    return run


def ours(dataset: SegmentationDataset) -> Callable[[Sample, torch.Generator], tuple[torch.Tensor, torch.Tensor]]:
    index = {s.id: i for i, s in enumerate(dataset.samples)}

    def run(sample: Sample, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        item = dataset[(index[sample.id], int(torch.randint(2**31, (), generator=generator)))]
        return item["image"], item["mask"]

    return run


def interleaved(pipelines: dict[str, Callable], samples: list[Sample], rounds: int) -> dict[str, float]:
    """Median ms per sample of each pipeline, all pipelines taking turns on each sample (the order rotating)."""
    names = list(pipelines)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):  # round 0 warms up (imports, first allocations)
        for i, sample in enumerate(samples):
            shift = (r + i) % len(names)
            for name in names[shift:] + names[:shift]:
                generator = torch.Generator().manual_seed(r * 1000 + i)
                start = time.perf_counter()
                pipelines[name](sample, generator)
                if r:
                    times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def decoders(samples: list[Sample], rounds: int) -> dict[str, float]:
    """Median ms to decode each sample's image alone (to RGB pixels in memory)."""
    pipelines = {
        "Pillow": lambda s, g: np.asarray(Image.open(s.image).convert("RGB")),
        "OpenCV": lambda s, g: cv2.imdecode(np.frombuffer(s.image.read_bytes(), np.uint8), cv2.IMREAD_COLOR),
        "torchvision.io": lambda s, g: tvio.decode_image(tvio.read_file(str(s.image))),
        "ours": lambda s, g: decode_image(s.image),
    }
    return interleaved(pipelines, samples, rounds)


def evaluation_read(dataset: SegmentationDataset, cached: SegmentationDataset, samples: list[Sample],
                    rounds: int) -> dict[str, float]:
    """Median ms to read a full validation image and its labels as tensors."""
    index = {s.id: i for i, s in enumerate(samples)}
    pipelines = {
        "torchvision references": lambda s, g: (v2.functional.pil_to_tensor(Image.open(s.image).convert("RGB")),
                                                torch.from_numpy(np.array(Image.open(s.mask))).long()),
        "mmsegmentation-style": lambda s, g: (
            torch.from_numpy(cv2.imdecode(np.frombuffer(s.image.read_bytes(), np.uint8),
                                          cv2.IMREAD_COLOR).transpose(2, 0, 1).copy()),
            torch.from_numpy(np.array(Image.open(s.mask)).astype(np.int64))),
        "ours": lambda s, g: dataset[index[s.id]],
        "ours, cached": lambda s, g: cached[index[s.id]],
    }
    return interleaved(pipelines, samples, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voc", type=int, default=12, help="VOC-size JPEGs")
    parser.add_argument("--cityscapes", type=int, default=6, help="Cityscapes-size PNGs")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the samples per pipeline (median)")
    parser.add_argument("--voc-rate", type=float, default=300.0,
                        help="training images/s of one GPU at VOC crops (V3+ R101, 513, bf16, one H200)")
    parser.add_argument("--cityscapes-rate", type=float, default=120.0,
                        help="training images/s of one GPU at Cityscapes 769 crops")
    parser.add_argument("--city-size", type=int, nargs=2, default=(1024, 2048), help="H W of the Cityscapes images")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("writing photo-like files ...", flush=True)
        sets = write_files(Path(tmp), args.voc, args.cityscapes, tuple(args.city_size))
        for name, samples in sets.items():
            kinds = {s.image.suffix for s in samples}
            sizes = [s.image.stat().st_size for s in samples]
            print(f"  {name}: {len(samples)} {'/'.join(kinds)} files, {statistics.mean(sizes) / 1e3:,.0f} kB each")
        for name, crop, label_map in (("voc", 513, None), ("cityscapes", 769, cityscapes_label_map())):
            samples = sets[name]
            classes = 21 if name == "voc" else 19
            dataset = SegmentationDataset(samples, classes, RandomScaleCrop(crop), label_map)
            cached = SegmentationDataset(samples, classes, RandomScaleCrop(crop), label_map)
            size, problems = write_split(dataset, Path(tmp) / f"decoded_{name}")
            assert not problems, problems
            cached.cache = DecodedSplit(Path(tmp) / f"decoded_{name}", cached)
            print(f"timing {name} (decoded cache: {size / len(samples) / 1e6:.1f} MB an image) ...", flush=True)
            results[f"{name} training sample"] = interleaved({
                "ours": ours(dataset), "ours, cached": ours(cached),
                "torchvision references": torchvision_reference(crop), "mmsegmentation-style": mmseg_style(crop),
            }, samples, args.rounds)
            results[f"{name} decode alone"] = decoders(samples, args.rounds)
            if name == "cityscapes":
                plain = SegmentationDataset(samples, classes, None, label_map)
                plain_cached = SegmentationDataset(samples, classes, None, label_map)
                plain_cached.cache = cached.cache
                results["cityscapes evaluation read"] = evaluation_read(plain, plain_cached, samples, args.rounds)
    rates = {"voc training sample": args.voc_rate, "cityscapes training sample": args.cityscapes_rate}
    report(results, rates)
    if args.json:
        Path(args.json).write_text(json.dumps({"results_ms": results, "rates": rates, "args": vars(args)}, indent=2))


def report(results: dict[str, dict[str, float]], rates: dict[str, float]) -> None:
    columns = ["ours", "ours, cached", *PEERS]
    print(f"\n| ms per sample, one core | {' | '.join(columns)} |")
    print("|---" * (len(columns) + 1) + "|")
    for row, times in results.items():
        if row.endswith("decode alone"):
            continue
        fastest = min(times[p] for p in PEERS)
        cells = [f"{times[c]:.1f} ({times[c] / fastest:.2f}×)" if c in times else "" for c in columns]
        print(f"| {row} | {' | '.join(cells)} |")
    for row, rate in rates.items():
        cores = {c: results[row][c] * rate / 1000 for c in columns}
        print(f"| cores per GPU at {rate:g} img/s ({row.split()[0]}) | "
              f"{' | '.join(f'{cores[c]:.1f}' for c in columns)} |")
    for row, times in results.items():
        if row.endswith("decode alone"):
            print(f"\n{row}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()))
    voc, city = results["voc training sample"], results["cityscapes training sample"]
    verdicts = [("VOC, ours / fastest peer", voc["ours"] / min(voc[p] for p in PEERS), 0.5),
                ("VOC cached, ours / fastest peer", voc["ours, cached"] / min(voc[p] for p in PEERS), 0.5),
                ("Cityscapes, ours / fastest peer", city["ours"] / min(city[p] for p in PEERS), 0.8),
                ("Cityscapes cached, ours / fastest peer", city["ours, cached"] / min(city[p] for p in PEERS), 0.1)]
    print()
    for what, ratio, target in verdicts:
        print(f"{what}: {ratio:.2f} (target <= {target}: {'met' if ratio <= target else 'NOT met'})")


if __name__ == "__main__":
    main()
