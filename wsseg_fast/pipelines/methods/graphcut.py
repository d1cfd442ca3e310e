"""An exact binary labelling of a pixel grid: the minimum of a unary plus a contrast-sensitive Potts
term, by one minimum cut (GrabCut's energy, for one fixed colour model).

    E(x) = sum_p [x_p = 0] max(u_p, 0) + [x_p = 1] max(-u_p, 0) + sum_{p~q} w_pq [x_p != x_q]

``u`` is each pixel's logit of being the object and ``w`` the weight of each 4-neighbour pair.
The cut is solved by SciPy's maximum flow (Dinic's algorithm, integer capacities: the energy is
scaled and rounded, far below the logits' own precision), or by PyMaxflow (Boykov-Kolmogorov)
when it is installed (``pip install PyMaxflow``): the same minimum, ~4x faster (a 150x100 box:
8 ms against 31 ms).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

try:  # optional: the same cut, faster
    import maxflow as _maxflow
except ImportError:  # pragma: no cover - depends on the environment
    _maxflow = None

_FLOW_BUDGET = 1e9  # the largest total capacity the int32 flow may carry


def contrast_weights(colours: np.ndarray, weight: float, beta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GrabCut's pairwise weights ``weight * exp(-beta |c_p - c_q|^2)`` of the right and the down
    neighbours of ``colours`` ``[H, W, C]``: ``[H, W - 1]`` and ``[H - 1, W]``. ``beta`` defaults to
    1 / (2 mean |c_p - c_q|^2) over these pairs (so the weights adapt to the image's contrast)."""
    right = ((colours[:, 1:] - colours[:, :-1]) ** 2).sum(-1)
    down = ((colours[1:] - colours[:-1]) ** 2).sum(-1)
    if beta is None:
        mean = (right.sum() + down.sum()) / max(1, right.size + down.size)
        beta = 1.0 / (2.0 * mean) if mean > 0 else 0.0
    return weight * np.exp(-beta * right), weight * np.exp(-beta * down)


def min_cut(unary: np.ndarray, right: np.ndarray, down: np.ndarray, solver: str = "auto") -> np.ndarray:
    """``[H, W]`` bool: the labelling (True = object) of least energy (see the module docstring) for
    ``unary`` ``[H, W]`` and the pair weights ``right`` ``[H, W - 1]``, ``down`` ``[H - 1, W]`` (>= 0).
    ``solver``: ``"scipy"``, ``"pymaxflow"`` or ``"auto"`` (PyMaxflow when installed). Where several
    labellings share the least energy (a pixel with a zero logit and no pull from its neighbours) the
    solvers may pick different ones: SciPy's is the smallest object."""
    if solver not in ("auto", "scipy", "pymaxflow"):
        raise ValueError(f"solver must be 'auto', 'scipy' or 'pymaxflow', got {solver!r}")
    if solver == "pymaxflow" and _maxflow is None:
        raise ImportError("the pymaxflow solver needs PyMaxflow: pip install PyMaxflow")
    unary = np.asarray(unary, np.float64)
    h, w = unary.shape
    if solver == "scipy" or _maxflow is None or unary.size == 1:
        return _scipy_cut(unary, right, down)
    graph = _maxflow.Graph[float]()
    nodes = graph.add_grid_nodes((h, w))
    # PyMaxflow takes one weight per node for an edge to its neighbour; the last column/row's edge is ignored.
    padded = np.zeros((h, w))
    padded[:, :-1] = right
    graph.add_grid_edges(nodes, weights=padded, structure=np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]]), symmetric=True)
    padded = np.zeros((h, w))
    padded[:-1] = down
    graph.add_grid_edges(nodes, weights=padded, structure=np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0]]), symmetric=True)
    graph.add_grid_tedges(nodes, np.maximum(unary, 0), np.maximum(-unary, 0))
    graph.maxflow()
    return ~graph.get_grid_segments(nodes)  # the source's side is the object


def _scipy_cut(unary: np.ndarray, right: np.ndarray, down: np.ndarray) -> np.ndarray:
    h, w = unary.shape
    n = h * w
    source, sink = n, n + 1
    index = np.arange(n).reshape(h, w)
    tails = [index[:, :-1].ravel(), index[:-1].ravel()]
    heads = [index[:, 1:].ravel(), index[1:].ravel()]
    pairs = [np.asarray(right, np.float64).ravel(), np.asarray(down, np.float64).ravel()]
    terminal = [np.maximum(unary, 0).ravel(), np.maximum(-unary, 0).ravel()]
    capacity = np.concatenate(pairs + pairs + terminal)
    total = capacity.sum()
    scale = min(1e4, _FLOW_BUDGET / total) if total > 0 else 1.0
    graph = csr_matrix(
        (
            np.rint(capacity * scale).astype(np.int32),
            (
                np.concatenate(tails + heads + [np.full(n, source), index.ravel()]),
                np.concatenate(heads + tails + [index.ravel(), np.full(n, sink)]),
            ),
        ),
        shape=(n + 2, n + 2),
    )
    flow = maximum_flow(graph, source, sink, method="dinic").flow
    residual = graph - flow  # what each edge can still carry (a backward flow frees its reverse edge)
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    reached = breadth_first_order(residual, source, directed=True, return_predecessors=False)
    labels = np.zeros(n + 2, bool)
    labels[reached] = True
    return labels[:n].reshape(h, w)
