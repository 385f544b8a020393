"""Splitting a dense FFN's d_ff neurons into E equal experts (host-side numpy).

Every method returns a partition: an int array [e f] whose rows are the neuron ids of each
expert, together a permutation of range(d_ff). Equal sizes keep the expert weights a dense
[e d f] tensor, which is what grouped matmuls and the per-expert buffers need.

Shape vocabulary: d width, e experts, f = d_ff / e neurons per expert, N tokens.
"""

from __future__ import annotations

import enum
import logging

import numpy as np
from scipy.optimize import linear_sum_assignment

log = logging.getLogger(__name__)


class SplitMethod(enum.StrEnum):
    """How neurons are grouped into experts.

    RANDOM: a random equal split (baseline).
    KMEANS: balanced k-means on the L2-normalised input weight rows (parameter clustering).
    COACTIVATION: METIS k-way partition (pymetis) of the co-activation graph built from real
      hidden states, rebalanced to equal sizes.
    """

    RANDOM = "random"
    KMEANS = "kmeans"
    COACTIVATION = "coactivation"


def _check(d_ff: int, num_experts: int) -> int:
    if num_experts < 1 or d_ff % num_experts:
        raise ValueError(
            f"d_ff must be divisible by num_experts (equal experts), got {d_ff=} {num_experts=}"
        )
    return d_ff // num_experts


def split_random(d_ff: int, num_experts: int, seed: int = 0) -> np.ndarray:
    f = _check(d_ff, num_experts)
    return np.random.default_rng(seed).permutation(d_ff).reshape(num_experts, f)


def balanced_assign(cost: np.ndarray, size: int) -> np.ndarray:
    """Assigns N points to C clusters of exactly `size` points, minimising the total cost.

    An exact linear assignment of points to `size` copies of every cluster (N = C * size).
    """
    n, c = cost.shape
    if n != c * size:
        raise ValueError(f"need N = clusters * size, got N={n} clusters={c} {size=}")
    # [n c] -> [n (c size)]: each cluster offers `size` identical seats
    rows, cols = linear_sum_assignment(np.repeat(cost, size, axis=1))
    labels = np.empty(n, np.int64)
    labels[rows] = cols // size
    return labels


def balanced_kmeans(points: np.ndarray, num_clusters: int, seed: int = 0, iters: int = 15):
    """Equal-size k-means on unit vectors (cosine distance): labels [N]."""
    n = points.shape[0]
    size = _check(n, num_clusters)
    rng = np.random.default_rng(seed)
    centers = points[rng.choice(n, num_clusters, replace=False)]
    labels = np.full(n, -1)
    for _ in range(iters):
        new = balanced_assign(-(points @ centers.T), size)
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(num_clusters):
            m = points[labels == c].mean(0)
            centers[c] = m / (np.linalg.norm(m) + 1e-12)
    return labels


def _labels_to_partition(labels: np.ndarray, num_experts: int) -> np.ndarray:
    return np.stack([np.flatnonzero(labels == e) for e in range(num_experts)])


def split_kmeans(w_in: np.ndarray, num_experts: int, seed: int = 0) -> np.ndarray:
    """Balanced k-means on the normalised input weight rows.

    Args:
      w_in: [d d_ff] the dense FFN's input kernel (neuron i is column i).
      num_experts: E.
      seed: initial centres.
    """
    w = np.asarray(w_in, np.float64).T
    w = w / (np.linalg.norm(w, axis=1, keepdims=True) + 1e-12)
    _check(w.shape[0], num_experts)
    return _labels_to_partition(balanced_kmeans(w, num_experts, seed), num_experts)


def coactivation_graph(active: np.ndarray) -> np.ndarray:
    """[d_ff d_ff] co-activation counts: tokens on which both neurons are positive."""
    a = np.asarray(active, np.float32)
    g = a.T @ a
    np.fill_diagonal(g, 0.0)
    return g


def _rebalance(labels: np.ndarray, graph: np.ndarray, num_experts: int) -> np.ndarray:
    # METIS parts are only roughly equal. Move neurons out of over-full parts, each time the
    # neuron with the weakest tie to its part, into the under-full part it is most tied to.
    size = labels.shape[0] // num_experts
    labels = labels.copy()
    while True:
        counts = np.bincount(labels, minlength=num_experts)
        over = np.flatnonzero(counts > size)
        if over.size == 0:
            return labels
        under = np.flatnonzero(counts < size)
        # [d_ff e] affinity of each neuron to each part
        affinity = np.stack([graph[:, labels == e].sum(1) for e in range(num_experts)], 1)
        members = np.flatnonzero(labels == over[0])
        own = affinity[members, over[0]]
        best_gain, move, dest = -np.inf, -1, -1
        for i, neuron in enumerate(members):
            target = under[np.argmax(affinity[neuron, under])]
            gain = affinity[neuron, target] - own[i]
            if gain > best_gain:
                best_gain, move, dest = gain, neuron, target
        labels[move] = dest


def split_coactivation(active: np.ndarray, num_experts: int, seed: int = 0) -> np.ndarray:
    """METIS partition of the co-activation graph, rebalanced to equal experts.

    Args:
      active: [N d_ff] bool, which neurons are positive on each of N real tokens.
      num_experts: E.
      seed: METIS seed.

    Edges below the lowest non-zero decile are dropped and the weights made integer, as in
    the MoEfication code. Without pymetis, the rows of the normalised co-activation matrix
    are clustered with balanced k-means instead (logged).
    """
    d_ff = active.shape[1]
    f = _check(d_ff, num_experts)
    graph = coactivation_graph(active)
    try:
        import pymetis
    except ImportError:
        log.warning("pymetis is not installed: co-activation split falls back to k-means")
        rows = graph / (np.linalg.norm(graph, axis=1, keepdims=True) + 1e-12)
        return _labels_to_partition(balanced_kmeans(rows, num_experts, seed), num_experts)
    nonzero = graph[graph > 0]
    cut = np.percentile(nonzero, 10) if nonzero.size else 0.0
    weights = np.where(graph >= cut, graph, 0.0)
    # integer weights in [1, 1000] for METIS
    weights = np.ceil(1000.0 * weights / max(weights.max(), 1e-12)).astype(np.int64)
    xadj, adjncy, eweights = [0], [], []
    for i in range(d_ff):
        nbrs = np.flatnonzero(weights[i])
        adjncy.extend(nbrs.tolist())
        eweights.extend(weights[i, nbrs].tolist())
        xadj.append(len(adjncy))
    options = pymetis.Options(seed=seed)
    _, parts = pymetis.part_graph(
        num_experts, xadj=xadj, adjncy=adjncy, eweights=eweights, options=options
    )
    labels = _rebalance(np.asarray(parts), graph, num_experts)
    partition = _labels_to_partition(labels, num_experts)
    assert partition.shape == (num_experts, f)
    return partition


def merge_experts(partition: np.ndarray, w_in: np.ndarray, group: int, seed: int = 0):
    """Merges fine experts into super-experts of `group` fine experts each.

    Fine experts (e.g. 32 neurons, as in MoEfication) underfill grouped-matmul tiles
    (128 columns on TPU, 64-128 on GPU) and per-matmul overhead dominates on CPU. Fine
    experts with similar centroids are merged by balanced k-means on their centroids.

    Args:
      partition: [e f] fine experts.
      w_in: [d d_ff] input kernel.
      group: fine experts per super-expert; must divide e.

    Returns:
      [e / group, f * group] the merged partition.
    """
    e, f = partition.shape
    if group < 1 or e % group:
        raise ValueError(f"group must divide the number of experts, got {group=} {e=}")
    w = np.asarray(w_in, np.float64).T
    w = w / (np.linalg.norm(w, axis=1, keepdims=True) + 1e-12)
    centroids = w[partition].mean(1)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
    labels = balanced_kmeans(centroids, e // group, seed)
    return np.stack([partition[labels == c].reshape(-1) for c in range(e // group)])


def split(
    method: SplitMethod | str,
    num_experts: int,
    w_in: np.ndarray,
    active: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Partition [e f] of a dense FFN's neurons by `method` (see `SplitMethod`)."""
    try:
        method = SplitMethod(method)
    except ValueError:
        raise ValueError(
            f"method must be one of {[m.value for m in SplitMethod]}, got {method!r}"
        ) from None
    d_ff = np.shape(w_in)[1]
    if method is SplitMethod.RANDOM:
        return split_random(d_ff, num_experts, seed)
    if method is SplitMethod.KMEANS:
        return split_kmeans(w_in, num_experts, seed)
    if active is None:
        raise ValueError("the co-activation split needs activations from real hidden states")
    if active.ndim != 2 or active.shape[1] != d_ff:
        raise ValueError(f"active must have shape [N, {d_ff}], got {active.shape}")
    return split_coactivation(active, num_experts, seed)
