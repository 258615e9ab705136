"""Attention flow (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020)."""

from collections.abc import Callable
from functools import partial

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import maximum_flow

from .. import progress
from ..attention_ops import readout_row
from ..capture import Capture
from ..registry import Cost, register

#: Capacities are scaled by this and rounded down to integers (SciPy's max-flow takes int32 capacities;
#: every capacity is at most 1 and every flow at most the source's capacity 1, so nothing exceeds 2^30).
SCALE = 2**30


def flow_graph(residual: np.ndarray, readout: int | np.ndarray) -> tuple[sp.csr_matrix, int]:
    """The authors' layered graph with integer capacities ``⌊SCALE · Â⌋``, and its source node.

    ``residual`` ``(L, N, N)`` holds Â_l = rownorm(mean_h A_l + I). Node ``i·N + k`` is token ``k`` at
    level ``i`` (level 0: the input tokens; level i: the output of block i-1); node ``i·N + q`` has an
    edge to node ``(i-1)·N + k`` of capacity Â_{i-1}[q, k] (``get_adjmat`` in the authors'
    ``attention_graph_util.py``). ``readout`` says where the flow starts:

    - a token index t (the class token): the source is t at the top level, the authors' graph as it is;
    - a readout row ρ ``(N,)`` with Σ ρ = 1 (mean of pooled tokens, attention pool): one more node, the
      super-source ``(L+1)·N``, with an edge of capacity ρ_k to each top-level token k. For ρ = e_t this
      is the same flow as from t itself (the one edge's capacity 1 is at least t's whole out-capacity).

    At the top level only tokens the source reaches keep their edges, and edges rounded to zero are left
    out.
    """
    layers, n, _ = residual.shape
    capacities = np.floor(residual * SCALE).astype(np.int32)
    top = layers * n
    if isinstance(readout, int | np.integer):
        source, rho, nodes = top + int(readout), None, (layers + 1) * n
        capacities[-1, np.arange(n) != readout] = 0
    else:
        rho = np.floor(np.asarray(readout, np.float64) * SCALE).astype(np.int32)
        source, nodes = (layers + 1) * n, (layers + 1) * n + 1
        capacities[-1, rho == 0] = 0
    columns = (np.arange(layers)[:, None, None] * n + np.arange(n)).repeat(n, axis=1).reshape(-1)
    row_starts = np.concatenate([np.zeros(n, dtype=np.int64), np.arange(layers * n + 1) * n])
    data, indices = capacities.reshape(-1), columns.astype(np.int32)
    if rho is not None:  # the super-source's row: an edge to every top-level token
        data = np.concatenate([data, rho])
        indices = np.concatenate([indices, (top + np.arange(n)).astype(np.int32)])
        row_starts = np.concatenate([row_starts, [row_starts[-1] + n]])
    graph = sp.csr_matrix((data, indices, row_starts), (nodes, nodes))
    graph.eliminate_zeros()
    return graph, source


def token_flows(
    residual: np.ndarray, readout: int | np.ndarray, on_flow: Callable[[int], None] = lambda token: None
) -> np.ndarray:
    """Maximum flow ``(N,)`` from the readout (a top-level token, or the super-source of a readout row ρ,
    see :func:`flow_graph`) to each input token (capacity units); ``on_flow(k)`` is called after the
    flow to token ``k``."""
    n = residual.shape[1]
    graph, source = flow_graph(residual, readout)
    flows = np.empty(n)
    for token in range(n):
        flows[token] = maximum_flow(graph, source, token).flow_value / SCALE
        on_flow(token)
    return flows


def _report_flow(done_before: int, total: int, token: int) -> None:
    progress.report(done_before + token + 1, total)


@register(
    "attention_flow",
    label="Attention flow",
    needs_gradients=False,
    reference="Abnar & Zuidema, ACL 2020",
    cost=Cost(max_flows=True),
)
def attention_flow(capture: Capture) -> torch.Tensor:
    """Maximum flow from what the model's output reads to each input token through the attention graph.

    Â_l = rownorm(mean_h A_l + I) (the residual connection as the identity, as in rollout) are the
    capacities of a graph with one node per token and level and edges from token q at level l+1 to token
    k at level l. The flow starts from the readout row ρ: for a class token at the class token's top-level
    node, exactly the authors' graph; for the mean of the pooled tokens S (ρ = 1_S/|S|) and for an
    attention pool (ρ = its head-mean attention over the tokens, which sums to 1) at a super-source with
    an edge of capacity ρ_k to each top-level token k (the pool's latent query is one more attention
    step, without a residual, so its row is these capacities). map[k] = maxflow(source → k at level 0)
    / Σ_j maxflow(source → j), normalised over all input tokens as in the authors' ``compute_flows``.
    CaiT: the class token's rows and columns of the patch-only blocks are zero, so Â is the identity
    there and the class token's flow passes to its own input embedding (a prefix token, not on the map).

    Exact up to the integer capacities that SciPy's Dinic algorithm needs: with c̃ = ⌊2³⁰ c⌋ / 2³⁰ every
    flow value f̃ satisfies f − |C|/2³⁰ < f̃ ≤ f, C a minimum cut of the exact graph (at most its L·N² + N
    edges: < 4.4e-4 for ViT-Ti/16, in practice about 1e-9). N max-flows per image, on the CPU.
    """
    layout = capture.layout
    rho = None
    if layout.readout != "cls":
        rho = readout_row(capture, lambda pool, _: pool.double().mean(dim=1), normalise=True)
        rho = rho.double().cpu().numpy()
    flows, n, total = [], layout.num_tokens, capture.batch_size * layout.num_tokens
    for b, attentions in enumerate(zip(*capture.attentions, strict=True)):  # one image at a time
        fused = torch.stack([a.double().mean(dim=0) for a in attentions])
        fused += torch.eye(n, dtype=fused.dtype, device=fused.device)
        fused /= fused.sum(dim=-1, keepdim=True)
        report = partial(_report_flow, b * n, total)
        flow = token_flows(fused.cpu().numpy(), layout.cls_index if rho is None else rho[b], report)
        flows.append(flow / flow.sum())
    return torch.from_numpy(np.stack(flows)).to(device=capture.device, dtype=torch.float32)
