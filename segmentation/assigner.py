"""Fast assignment of every client to the clusters fitted on a sample, with HDBSCAN's noise semantics.

`hdbscan.approximate_predict` assigns a new point x through its nearest fitted neighbour in
mutual-reachability distance, mreach(x, j) = max(core(x), core(j), d(x, j)): x joins that
neighbour's cluster C unless it would join the condensed tree below C's birth density, i.e.
unless mreach >= birth(C) (C's birth distance, 1 / lambda_birth). It runs at about 3,500
points/s here, too slow for millions of clients.

`NeighborAssigner` computes the same decision, vectorized:

1. the nearest fitted point j* by max(core(j), d(x, j)) and its label L;
2. x is noise when L is noise, or when max(core(j*), d(x, j*)) >= birth(L), or when x itself is
   not dense enough: core(x) >= birth(L), i.e. fewer than `min_count` fitted points lie within
   birth(L) of x. The triangle inequality d(x, j*) + core(j*) < birth(L) proves the density for
   most points; only the others are counted.

The search is exact within a candidate set: the fitted points are partitioned into cells
(k-means), and the candidates of a cell are the points of every cell that holds one of the
`n_neighbors` nearest fitted neighbours of one of its members. A new point is searched among
the candidates of its nearest cell centre. Each cell's work is a small float32 matrix product
plus two passes over the distance block, run in a thread pool (numpy releases the GIL) with
BLAS limited to one thread per worker.

`CentroidAssigner` is the assigner of the k-means fallback: nearest centre, and noise only
beyond a distance bound learned from the sample.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]

NOISE = -1
NOISE_CONFIDENCE_MAX = 0.2


class Assignment(NamedTuple):
    """Labels (-1 = noise) and confidences in [0, 1] of a batch of points, and for each point
    the cluster it is nearest to even when it is noise (-1 when that is not known: the nearest
    fitted point is noise itself)."""

    labels: np.ndarray
    confidence: np.ndarray
    nearest: np.ndarray | None = None


class ClusterGeometry(NamedTuple):
    """What the assigner needs from an HDBSCAN fit, per fitted point and per cluster label."""

    core_distances: np.ndarray  # per point: distance to its min_samples-th neighbour (self incl.)
    birth_distances: np.ndarray  # per label: distance at which the cluster is born
    densest_distances: np.ndarray  # per label: smallest core distance among its members
    min_samples: int


def hdbscan_geometry(
    Z: np.ndarray, labels: np.ndarray, condensed_tree: np.ndarray, min_samples: int
) -> ClusterGeometry:
    """Core distances and each cluster's birth distance from an HDBSCAN fit on `Z`.

    `condensed_tree` is `HDBSCAN.condensed_tree_.to_numpy()`; a label's cluster node is the
    highest (lowest id) node its points leave from, as hdbscan itself selects it.
    """
    Z = np.asarray(Z, dtype=np.float64)
    labels = np.asarray(labels)
    n_labels = int(labels.max()) + 1 if labels.size else 0
    k = min(max(min_samples, 1), len(Z))
    dist, _ = NearestNeighbors(n_neighbors=k).fit(Z).kneighbors(Z)
    core = dist[:, -1]
    is_point = condensed_tree["child_size"] == 1
    point_parent = np.full(len(Z), -1, dtype=np.int64)
    point_parent[condensed_tree["child"][is_point]] = condensed_tree["parent"][is_point]
    birth_lambda = dict(
        zip(
            condensed_tree["child"][~is_point].tolist(),
            condensed_tree["lambda_val"][~is_point].tolist(),
            strict=True,
        )
    )
    birth = np.full(n_labels, np.inf)
    densest = np.zeros(n_labels)
    for label in range(n_labels):
        members = labels == label
        node = int(point_parent[members].min())
        lam = birth_lambda.get(node, 0.0)
        birth[label] = 1.0 / lam if lam > 0 else np.inf
        densest[label] = core[members].min()
    return ClusterGeometry(core, birth, densest, int(min_samples))


class _Assigner(BaseEstimator):
    """What both assigners share: `predict` and the input check of `assign`."""

    n_features_in_: int

    def assign(self, Z: np.ndarray) -> Assignment:
        """Labels (-1 = noise) and confidences in [0, 1] of new points (rows of `Z`)."""
        raise NotImplementedError

    def predict(self, Z: np.ndarray) -> np.ndarray:
        """Cluster labels of new points (-1 = noise).

        Parameters
        ----------
        Z : ndarray of shape (n_points, n_features_in_)
            Points in the space the assigner was fit in.

        Returns
        -------
        ndarray of int
            One label per point.
        """
        return self.assign(Z).labels

    def _points(self, Z: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        Z = _as_matrix(Z)
        if Z.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} columns, got {Z.shape[1]}")
        return Z


class NeighborAssigner(_Assigner):
    """Assigns new points like `hdbscan.approximate_predict`, vectorized (see module docstring).

    Parameters
    ----------
    n_neighbors : int, default=10
        Neighbours per fitted point that define each cell's candidates (more is more exact
        and slower); `ClusterModel(assigner_neighbors=...)`.
    cells_per_sqrt : float, default=4.0
        Number of cells per square root of the number of fitted points.
    batch_size : int, default=512
        Rows per distance block.
    n_jobs : int or None, default=-1
        Worker threads; -1: all cores, 0 or None: one.
    random_state : int, default=0
        Seed of the k-means that makes the cells.

    Attributes
    ----------
    n_features_in_ : int
        Dimensions of the fitted points.
    labels_ : ndarray of int
        Label of each fitted point (-1: noise).
    centers_ : ndarray of float32, shape (n_cells, n_features_in_)
        The cell centres.
    candidates_ : list of ndarray of int32
        Per cell, the fitted points a new point of that cell is compared with.
    birth_, densest_ : ndarray of float
        Per label, then noise last: birth distance and smallest core distance.
    core_, core2_ : ndarray of float32
        Core distance of each fitted point, and its square.
    reference_, center_block_ : ndarray of float32
        Fitted points and cell centres in the augmented form of the distance products.
    reference_birth_ : float
        Median finite birth distance (the scale of noise confidences).
    min_count_ : float
        Fitted points a new point needs within a cluster's birth distance.
    """

    def __init__(
        self,
        n_neighbors: int = 10,
        cells_per_sqrt: float = 4.0,
        batch_size: int = 512,
        n_jobs: int = -1,
        random_state: int = 0,
    ):
        self.n_neighbors = n_neighbors
        self.cells_per_sqrt = cells_per_sqrt
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(
        self,
        Z: np.ndarray,
        labels: np.ndarray,
        geometry: ClusterGeometry,
        count_scale: float = 1.0,
    ) -> NeighborAssigner:
        """Index the fitted points `Z` with their labels and `geometry`.

        Parameters
        ----------
        Z : ndarray of shape (n_points, n_features)
            The points HDBSCAN was fit on (transformed sample).
        labels : ndarray of int
            Their HDBSCAN labels (-1: noise).
        geometry : ClusterGeometry
            Core and birth distances of that fit (`hdbscan_geometry`).
        count_scale : float, default=1.0
            Share of the fitted sample that `Z` holds (1.0 in production); the density test
            needs proportionally fewer neighbours when `Z` is a subset (validation).

        Returns
        -------
        NeighborAssigner
            self, fitted.
        """
        Z = _as_matrix(Z)
        labels = np.asarray(labels, dtype=np.int64)
        core = np.asarray(geometry.core_distances, dtype=np.float64)
        if not (len(Z) == len(labels) == len(core)):
            raise ValueError("Z, labels and core distances must have the same length")
        if len(Z) == 0:
            raise ValueError("cannot fit an assigner on zero points")
        n = len(Z)
        n_cells = int(np.clip(round(np.sqrt(n) * self.cells_per_sqrt), 1, n))
        km = KMeans(n_cells, n_init=1, max_iter=30, random_state=self.random_state).fit(Z)
        cell = km.labels_
        k = min(self.n_neighbors + 1, n)
        _, graph = NearestNeighbors(n_neighbors=k).fit(Z).kneighbors(Z)
        order = np.argsort(cell, kind="stable")
        bounds = np.searchsorted(cell[order], np.arange(n_cells + 1))
        members = [order[bounds[c] : bounds[c + 1]] for c in range(n_cells)]
        candidates = []
        for c in range(n_cells):
            near_cells = np.unique(np.concatenate([[c], cell[graph[members[c]].ravel()]]))
            candidates.append(np.concatenate([members[x] for x in near_cells]).astype(np.int32))
        self.centers_ = km.cluster_centers_.astype(np.float32)
        c = km.cluster_centers_.astype(np.float64)
        aug = np.hstack([-2.0 * c, (c**2).sum(1)[:, None], np.zeros((n_cells, 1))])
        self.center_block_ = np.ascontiguousarray(aug.T.astype(np.float32))
        self.candidates_ = candidates
        # Augmented rows so that one product gives squared distances: [x, 1, |x|^2] . [-2r, |r|^2, 1]
        self.reference_ = np.hstack([-2.0 * Z, (Z**2).sum(1)[:, None], np.ones((n, 1))]).astype(
            np.float32
        )
        self.labels_ = labels
        self.core_ = core.astype(np.float32)
        self.core2_ = (core**2).astype(np.float32)
        n_labels = len(geometry.birth_distances)
        # index n_labels (reached through label -1) holds the noise "cluster": birth 0
        self.birth_ = np.append(np.asarray(geometry.birth_distances, dtype=np.float64), 0.0)
        self.densest_ = np.append(np.asarray(geometry.densest_distances, dtype=np.float64), 0.0)
        finite = self.birth_[:n_labels][np.isfinite(self.birth_[:n_labels])]
        self.reference_birth_ = float(np.median(finite)) if finite.size else 1.0
        self.min_count_ = max(0.0, (geometry.min_samples - 1) * float(count_scale))
        self.n_features_in_ = Z.shape[1]
        return self

    def assign(self, Z: np.ndarray) -> Assignment:
        """Labels and confidences of new points, processed cell by cell in a thread pool.

        Parameters
        ----------
        Z : ndarray of shape (n_points, n_features_in_)
            Points in the space the assigner was fit in.

        Returns
        -------
        Assignment
            labels (-1: noise) and confidences in [0, 1].
        """
        Z = self._points(Z)
        n = len(Z)
        labels = np.full(n, NOISE, dtype=np.int64)
        mreach = np.zeros(n, dtype=np.float64)
        nearest_label = np.full(n, NOISE, dtype=np.int64)
        if n == 0:
            return Assignment(labels, np.zeros(0), nearest_label)
        queries = np.empty((n, Z.shape[1] + 2), dtype=np.float32)
        queries[:, :-2] = Z
        queries[:, -2] = 1.0
        queries[:, -1] = (Z**2).sum(1)
        workers = _workers(self.n_jobs)
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            chunks = [slice(s, s + 65536) for s in range(0, n, 65536)]
            nearest = np.concatenate(
                list(pool.map(lambda s: self._nearest_cell(queries[s]), chunks))
            )
            order = np.argsort(nearest, kind="stable")
            bounds = np.searchsorted(nearest[order], np.arange(len(self.centers_) + 1))

            def work(c: int) -> None:
                idx = order[bounds[c] : bounds[c + 1]]
                if idx.size:
                    labels[idx], mreach[idx], nearest_label[idx] = self._assign_cell(
                        queries[idx], c
                    )

            list(pool.map(work, range(len(self.centers_))))
        return Assignment(labels, self._confidence(labels, mreach, nearest_label), nearest_label)

    def _nearest_cell(self, queries: np.ndarray) -> np.ndarray:
        """Index of the nearest cell centre, in cache-sized blocks of augmented rows."""
        out = np.empty(len(queries), dtype=np.int64)
        for s in range(0, len(queries), 2048):
            out[s : s + 2048] = np.argmin(queries[s : s + 2048] @ self.center_block_, axis=1)
        return out

    def _assign_cell(
        self, queries: np.ndarray, cell: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cand = self.candidates_[cell]
        ref_t = np.ascontiguousarray(self.reference_[cand].T)
        core2 = self.core2_[cand]
        out_labels = np.empty(len(queries), dtype=np.int64)
        out_mreach = np.empty(len(queries), dtype=np.float64)
        out_near = np.empty(len(queries), dtype=np.int64)
        for start in range(0, len(queries), self.batch_size):
            q = queries[start : start + self.batch_size]
            d2 = q @ ref_t
            np.maximum(d2, core2, out=d2)
            j = np.argmin(d2, axis=1)
            m = np.sqrt(np.maximum(d2[np.arange(len(q)), j], 0.0).astype(np.float64))
            nb = cand[j]
            lab = self.labels_[nb]
            birth = self.birth_[lab]
            noise = (lab < 0) | (m >= birth)
            # density of the point itself: proven by d(x, j*) + core(j*) < birth, else counted
            check = np.flatnonzero(~noise)
            if check.size:
                dnb2 = np.einsum("ij,ji->i", q[check], ref_t[:, j[check]])
                bound = np.sqrt(np.maximum(dnb2, 0.0)) + self.core_[nb[check]]
                check = check[bound >= birth[check]]
            if check.size:
                # max(d2, core2) < b2 implies d2 < b2: count on the block at hand first
                b2 = (birth[check] ** 2).astype(np.float32)[:, None]
                count = (d2[check] < b2).sum(1)
                short = count < self.min_count_
                if short.any():
                    redo = check[short]
                    raw = (q[redo] @ ref_t < b2[short]).sum(1)
                    noise[redo[raw < self.min_count_]] = True
            out_labels[start : start + len(q)] = np.where(noise, NOISE, lab)
            out_mreach[start : start + len(q)] = m
            out_near[start : start + len(q)] = lab
        return out_labels, out_mreach, out_near

    def _confidence(self, labels: np.ndarray, m: np.ndarray, near_label: np.ndarray) -> np.ndarray:
        """Members: 0.2 at the cluster's border up to 1 at its densest core; noise: <= 0.2,
        falling with the distance to the clusters (halved when the nearest point is noise)."""
        conf = np.zeros(len(labels))
        member = labels >= 0
        if member.any():
            birth = self.birth_[labels[member]]
            densest = self.densest_[labels[member]]
            span = np.where(np.isfinite(birth), birth - densest, np.inf)
            depth = np.where(
                np.isfinite(birth),
                (birth - m[member]) / np.maximum(span, 1e-12),
                1.0,
            )
            conf[member] = NOISE_CONFIDENCE_MAX + (1 - NOISE_CONFIDENCE_MAX) * np.clip(depth, 0, 1)
        noise = ~member
        if noise.any():
            scale = np.full(noise.sum(), self.reference_birth_)
            conf[noise] = NOISE_CONFIDENCE_MAX * np.clip(scale / np.maximum(m[noise], 1e-12), 0, 1)
            conf[noise & (near_label < 0)] *= 0.5
        return conf


class CentroidAssigner(_Assigner):
    """Nearest-centre assignment for the k-means fallback; noise only far outside every cluster.

    A point is noise when its distance to the nearest centre exceeds `radius_factor` times that
    cluster's `radius_quantile` member distance on the sample.

    Parameters
    ----------
    radius_quantile : float, default=0.99
        Quantile of the members' distances to their centre that bounds a cluster.
    radius_factor : float, default=1.5
        Multiple of that bound beyond which a point is noise.

    Attributes
    ----------
    n_features_in_ : int
        Dimensions of the fitted points.
    centers_ : ndarray of shape (n_clusters, n_features_in_)
        The cluster centres.
    radius_ : ndarray of float
        Per cluster, the distance beyond which a point is noise.
    """

    def __init__(self, radius_quantile: float = 0.99, radius_factor: float = 1.5):
        self.radius_quantile = radius_quantile
        self.radius_factor = radius_factor

    def fit(self, Z: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> CentroidAssigner:
        """Learn each cluster's distance bound from the sample points `Z` and their labels.

        Parameters
        ----------
        Z : ndarray of shape (n_points, n_features)
            The sample points.
        labels : ndarray of int
            Their cluster (index into `centers`).
        centers : ndarray of shape (n_clusters, n_features)
            The cluster centres.

        Returns
        -------
        CentroidAssigner
            self, fitted.
        """
        Z = _as_matrix(Z)
        labels = np.asarray(labels, dtype=np.int64)
        self.centers_ = np.asarray(centers, dtype=np.float64)
        dist = np.linalg.norm(Z - self.centers_[labels], axis=1)
        radius = np.zeros(len(self.centers_))
        for c in range(len(self.centers_)):
            d = dist[labels == c]
            radius[c] = np.quantile(d, self.radius_quantile) if d.size else 0.0
        positive = radius[radius > 0]
        floor = float(np.median(positive)) if positive.size else 1.0
        self.radius_ = np.maximum(radius, floor * 1e-3) * self.radius_factor
        self.n_features_in_ = Z.shape[1]
        return self

    def assign(self, Z: np.ndarray) -> Assignment:
        """Labels and confidences: 1 at the centre, falling to 0.2 at the bound, noise below.

        Parameters
        ----------
        Z : ndarray of shape (n_points, n_features_in_)
            Points in the space the assigner was fit in.

        Returns
        -------
        Assignment
            labels (-1: noise) and confidences in [0, 1].
        """
        Z = self._points(Z)
        labels = np.empty(len(Z), dtype=np.int64)
        dist = np.empty(len(Z))
        for s in range(0, len(Z), 65536):
            d2 = (
                (Z[s : s + 65536] ** 2).sum(1)[:, None]
                - 2 * Z[s : s + 65536] @ self.centers_.T
                + (self.centers_**2).sum(1)
            )
            labels[s : s + 65536] = np.argmin(d2, axis=1)
            dist[s : s + 65536] = np.sqrt(np.maximum(d2.min(axis=1), 0))
        ratio = dist / self.radius_[labels]
        noise = ratio >= 1
        conf = np.where(
            noise,
            NOISE_CONFIDENCE_MAX * np.clip(1 / np.maximum(ratio, 1e-12), 0, 1),
            NOISE_CONFIDENCE_MAX + (1 - NOISE_CONFIDENCE_MAX) * np.clip(1 - ratio, 0, 1),
        )
        return Assignment(np.where(noise, NOISE, labels), conf, labels)


def _as_matrix(Z: np.ndarray) -> np.ndarray:
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2:
        raise ValueError(f"expected a 2-d array of points, got shape {Z.shape}")
    if not np.isfinite(Z).all():
        raise ValueError("points contain NaN or infinite values")
    return Z


def _workers(n_jobs: int | None) -> int:
    cpus = os.cpu_count() or 1
    if n_jobs is None or n_jobs == 0:
        return 1
    return cpus if n_jobs < 0 else min(n_jobs, cpus)
