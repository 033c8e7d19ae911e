"""Dense CRF (Krähenbühl & Koltun, NIPS 2011) with mean-field inference on a permutohedral lattice.

The pairwise kernels are Gaussians over feature vectors, filtered with the permutohedral lattice of Adams
et al. (2010) — splat, blur, slice — written with plain tensor ops, so one code path runs on CPU and CUDA and
no window truncates DeepLab's long-range kernels (bilateral x/y std 67 px). The steps follow Krähenbühl's
reference implementation (the one pydensecrf wraps): the same lattice scaling, [1 2 1] blur, slicing
constant, symmetric kernel normalisation and Potts compatibility, so the results agree with it.

The defaults are the released DeepLab V2 ResNet-101 model's (w_bilateral=4, theta_alpha=67, theta_beta=3,
w_gaussian=3, theta_gamma=1, 10 iterations; V2 section 4.1 describes their cross-validation); the released V1
LargeFOV script used 4/49/5/3/3. Deviation: DeepLab's CRF (Krahenbuhl's code v2.2) normalises each kernel per
pixel, this one symmetrically (pydensecrf's default), so parameters cross-validated there may not be optimal here.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CRFSettings:
    """Dense CRF parameters (see :func:`dense_crf`); the defaults are the released DeepLab V2 ResNet-101 model's
    (the V1 LargeFOV script used 4/49/5/3/3)."""

    iterations: int = 10
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0
    pos_w: float = 3.0
    pos_xy_std: float = 1.0


def _sparse_csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "CSR support is in beta": the matmul it is used for is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves go away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


class PermutohedralLattice:
    """Gaussian filtering of values at points with ``features`` [N, d]: ``out_i ≈ sum_j exp(-|f_i - f_j|^2 / 2)
    * v_j`` up to a constant factor (which the CRF's normalisation removes).

    Built once per feature set; :meth:`filter` then costs O(N (d + 1) C).
    """

    def __init__(self, features: torch.Tensor) -> None:
        n, d = features.shape
        dev, dtype = features.device, features.dtype
        # Elevate onto the hyperplane sum(x) = 0 in R^{d+1} (Adams et al. 2010, p. 5), scaled so that the
        # lattice blur approximates a unit-variance Gaussian.
        inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
        scale = inv_std / torch.sqrt(torch.arange(1, d + 1, device=dev, dtype=dtype)
                                     * torch.arange(2, d + 2, device=dev, dtype=dtype))
        cf = features * scale
        suffix = torch.cat([cf.flip(1).cumsum(1).flip(1), cf.new_zeros(n, 1)], dim=1)  # sum_{t >= j} cf_t
        j = torch.arange(1, d + 1, device=dev, dtype=dtype)
        elevated = torch.cat([suffix[:, :1], suffix[:, 1:] - j * cf], dim=1)  # [N, d+1]

        # The closest remainder-0 lattice point, and the simplex containing the point (its rank order).
        rounded = _round_half_away(elevated / (d + 1))
        rem0 = rounded * (d + 1)
        total = rounded.sum(1, keepdim=True).long()
        diff = elevated - rem0
        idx = torch.arange(d + 1, device=dev)
        upper = idx[None, :, None] < idx[None, None, :]  # pairs i < j
        less = diff[:, :, None] < diff[:, None, :]  # d_i < d_j
        rank = (upper & less).sum(2) + (upper & ~less).sum(1)
        rank = rank + total
        low, high = rank < 0, rank > d
        rank = torch.where(low, rank + d + 1, torch.where(high, rank - d - 1, rank))
        rem0 = torch.where(low, rem0 + d + 1, torch.where(high, rem0 - d - 1, rem0))

        # Barycentric coordinates (p. 10).
        v = (elevated - rem0) / (d + 1)
        bary = v.new_zeros(n, d + 2)
        bary.scatter_add_(1, d - rank, v)
        bary.scatter_add_(1, d - rank + 1, -v)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        barycentric = bary[:, : d + 1]  # [N, d+1]

        # Each point's simplex has d+1 vertices; vertex r's key (first d coordinates, the last is implied) is
        # rem0_k + r - (d+1) [rank_k > d - r] (Adams et al. 2010, p. 10). Keys are hashed to mixed-radix codes
        # (range widened by the blur's reach), which are linear in the keys: code(r) = code(rem0) + r sum(place)
        # - (d+1) * (the places of the coordinates of the r highest ranks).
        rem0 = rem0.long()
        key_low = rem0[:, :d].min(0).values - (2 * d + 1)
        radix = (rem0[:, :d].max(0).values + (2 * d + 1) - key_low + 1).tolist()
        if math.prod(float(r) for r in radix) >= 2.0**62:
            raise ValueError("PermutohedralLattice: feature range too large to hash; rescale the features")
        place = [math.prod(radix[k + 1:]) for k in range(d)]
        place_t = torch.tensor(place + [0], device=dev, dtype=torch.long)
        by_rank = torch.zeros_like(rem0).scatter_(1, rank, place_t.expand(n, d + 1))  # place of rank j's coordinate
        top_ranks = by_rank.flip(1).cumsum(1)[:, :d]  # [N, d]: places of the 1, 2, ... d highest ranks
        base = ((rem0 - torch.cat([key_low, key_low.new_zeros(1)])) * place_t).sum(1, keepdim=True)
        vertex_codes = base + idx * sum(place) - (d + 1) * torch.cat([top_ranks.new_zeros(n, 1), top_ranks], 1)

        # Sorting the codes numbers the lattice points (in code order) and groups the (point, vertex) pairs of each
        # lattice point, stably, i.e. by point: the splat matrix's rows in CSR order.
        sorted_codes, perm = vertex_codes.reshape(-1).sort(stable=True)
        first = torch.ones_like(sorted_codes, dtype=torch.bool)
        first[1:] = sorted_codes[1:] != sorted_codes[:-1]
        codes = sorted_codes[first]
        m = codes.numel()
        self.num_points = m
        self._buffers: dict[tuple[torch.dtype, int], tuple[torch.Tensor, torch.Tensor]] = {}
        offsets = torch.empty_like(perm)
        offsets[perm] = first.cumsum(0) - 1  # [N*(d+1)]: lattice point of each (point, vertex)

        # Splat, blur and slice as sparse matrices (CSR; cuSPARSE on CUDA): splat [M, N] spreads each point
        # over its simplex's vertices with the barycentric weights; blur_j [M, M] = I + (shift_+ + shift_-)/2
        # along lattice direction j (a missing neighbour contributes nothing); slice [N, M] = alpha * splat^T
        # with alpha = 1 / (1 + 2^-d), the reference implementation's constant.
        crow = torch.cat([first.nonzero().squeeze(1), perm.new_tensor([perm.numel()])])
        self.splat = _sparse_csr(crow, perm // (d + 1), barycentric.reshape(-1)[perm], (m, n))
        vertex_idx, order = offsets.view(n, d + 1).sort(dim=1)  # CSR wants sorted columns within each row
        self.slice = self._csr(vertex_idx, barycentric.gather(1, order) / (1.0 + 2.0 ** (-d)), m)
        self.blur = []
        # Neighbours along direction j: every coordinate -1 (resp. +1) except coordinate j, +d (resp. -d); the
        # codes are linear in the coordinates, so neighbours' codes are shifts of the points' codes, and point
        # i's neighbour at -shift has i as its neighbour at +shift. A missing neighbour becomes a zero entry on
        # the diagonal, which keeps each row's columns sorted.
        ids = torch.arange(m, device=dev)
        weights_1d = torch.tensor([0.5, 1.0, 0.5], device=dev, dtype=dtype)  # the [1 2 1] / 2 blur
        for axis in range(d + 1):
            shift = sum(place) - (d + 1) * place[axis] if axis < d else sum(place)
            query = codes - shift
            pos = torch.searchsorted(codes, query).clamp_max(m - 1)
            found = codes[pos] == query
            minus = torch.where(found, pos, ids)
            plus = ids.clone()
            plus[pos[found]] = ids[found]
            cols = torch.stack([minus, ids, plus], dim=1)
            vals = torch.stack([found, torch.ones_like(found), plus != ids], dim=1).to(dtype) * weights_1d
            if shift < 0:  # the -shift neighbour has the larger code
                cols, vals = cols.flip(1), vals.flip(1)
            self.blur.append(self._csr(cols, vals, m))

    @staticmethod
    def _csr(cols: torch.Tensor, vals: torch.Tensor, num_cols: int) -> torch.Tensor:
        """A CSR matrix with ``cols.shape[1]`` entries in each row (columns sorted within rows)."""
        rows, per_row = cols.shape
        crow = torch.arange(0, rows * per_row + 1, per_row, device=cols.device)
        return _sparse_csr(crow, cols.reshape(-1), vals.reshape(-1), (rows, num_cols))

    def filter(self, values: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """values [N, C] -> filtered [N, C] (splat, blur along every lattice direction, slice), in the values'
        dtype (float32; float64 for gradient checks), written to ``out`` when given (which may be ``values``).
        Differentiable in ``values`` (without ``out``)."""
        splat, slice_ = self.splat.to(values.dtype), self.slice.to(values.dtype)  # no copy when the same
        blurs = [blur.to(values.dtype) for blur in self.blur]
        if values.device.type != "cpu" or (torch.is_grad_enabled() and values.requires_grad):
            lattice = splat @ values
            for blur in blurs:
                lattice = blur @ lattice
            return slice_ @ lattice if out is None else out.copy_(slice_ @ lattice)
        # On the CPU without autograd the lattice products write into two buffers kept with the lattice: a
        # fresh [M, C] result (tens of MB) is mapped from the OS page by page on every product, which took
        # three quarters of the time (a product into a reused buffer is 6x faster on a 2-core CPU). CUDA's
        # caching allocator reuses its memory anyway.
        key = (values.dtype, values.shape[1])
        if key not in self._buffers:
            self._buffers[key] = (values.new_empty(self.num_points, values.shape[1]),
                                  values.new_empty(self.num_points, values.shape[1]))
        lattice, spare = self._buffers[key]
        torch.addmm(lattice, splat, values, beta=0, out=lattice)
        for blur in blurs:
            torch.addmm(spare, blur, lattice, beta=0, out=spare)
            lattice, spare = spare, lattice
        return slice_ @ lattice if out is None else torch.addmm(out, slice_, lattice, beta=0, out=out)


def _pixel_features(image: torch.Tensor, xy_std: float, rgb_std: float | None) -> torch.Tensor:
    """[H*W, 2] (x/xy_std, y/xy_std) or [H*W, 5] with (r, g, b)/rgb_std appended; image uint8 [H, W, 3]."""
    h, w = image.shape[:2]
    dtype = torch.float32
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=dtype),
                            torch.arange(w, device=image.device, dtype=dtype), indexing="ij")
    feats = [xs.reshape(-1, 1) / xy_std, ys.reshape(-1, 1) / xy_std]
    if rgb_std is not None:
        feats.append(image.reshape(-1, 3).to(dtype) / rgb_std)
    return torch.cat(feats, dim=1)


class _NormalisedKernel:
    """A Gaussian kernel with symmetric normalisation: K~ = D^-1/2 K D^-1/2, D = diag(K 1)."""

    def __init__(self, features: torch.Tensor) -> None:
        self.lattice = PermutohedralLattice(features)
        ones = features.new_ones(features.shape[0], 1)
        self.norm = 1.0 / torch.sqrt(self.lattice.filter(ones) + 1e-20)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return self.lattice.filter(q * self.norm) * self.norm

    def accumulate(self, q: torch.Tensor, weight: float, out: torch.Tensor, scratch: torch.Tensor) -> None:
        """``out += weight * K~ q`` without autograd, through ``scratch`` [N, C]: no new [N, C] tensor."""
        self.lattice.filter(torch.mul(q, self.norm, out=scratch), out=scratch)
        out.addcmul_(scratch, self.norm, value=weight)


def dense_crf(image: torch.Tensor, probs: torch.Tensor, *, iterations: int = 10, bi_w: float = 4.0,
              bi_xy_std: float = 67.0, bi_rgb_std: float = 3.0, pos_w: float = 3.0, pos_xy_std: float = 1.0,
              clip: float = 1e-5) -> torch.Tensor:
    """Refine class probabilities with a fully connected CRF; returns probabilities [C, H, W].

    Args:
        image: uint8 [H, W, 3], the un-normalised RGB image, on the same device as ``probs``.
        probs: [C, H, W] class probabilities (softmax output); unaries are ``-log(max(probs, clip))``.
        iterations: mean-field iterations.
        bi_w, bi_xy_std, bi_rgb_std: weight and position / colour std of the appearance (bilateral) kernel.
        pos_w, pos_xy_std: weight and position std of the smoothness (Gaussian) kernel.

    Mean field with Potts compatibility: ``Q <- softmax(-U + sum_k w_k K~_k Q)``. Runs in float32, also
    inside an autocast region (mixed-precision evaluation), without autograd (the trainable CRF is
    :class:`~deeplab_lightning.evaluation.crf_rnn.TrainableDenseCRF`).
    """
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    c, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image is {tuple(image.shape[:2])} but probs are {(h, w)} (H, W)")
    with torch.no_grad(), torch.autocast(probs.device.type, enabled=False):
        return _mean_field(image, probs.float(), iterations, bi_w, bi_xy_std, bi_rgb_std, pos_w, pos_xy_std, clip)


def _mean_field(image: torch.Tensor, probs: torch.Tensor, iterations: int, bi_w: float, bi_xy_std: float,
                bi_rgb_std: float, pos_w: float, pos_xy_std: float, clip: float) -> torch.Tensor:
    c, h, w = probs.shape
    unary = -torch.log(probs.clamp_min(clip)).reshape(c, -1)
    unary = unary.T.contiguous()  # [N, C], row-major as the lattice products want it
    kernels = [(pos_w, _NormalisedKernel(_pixel_features(image, pos_xy_std, None))),
               (bi_w, _NormalisedKernel(_pixel_features(image, bi_xy_std, bi_rgb_std)))]
    # Four [N, C] tensors reused by every iteration: at Cityscapes size each is 160 MB, which the CPU
    # allocator would otherwise map from the operating system afresh for every intermediate result.
    q, scores, scratch = torch.softmax(-unary, dim=1), torch.empty_like(unary), torch.empty_like(unary)
    for _ in range(iterations):
        torch.neg(unary, out=scores)
        for weight, kernel in kernels:
            kernel.accumulate(q, weight, scores, scratch)
        torch.softmax(scores, dim=1, out=q)
    return q.T.reshape(c, h, w)
