"""Attention flow (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020)."""

from collections.abc import Callable
from functools import partial

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import maximum_flow

from .. import progress
from ..capture import Capture
from ..registry import Cost, register

#: Capacities are scaled by this and rounded down to integers (SciPy's max-flow takes int32 capacities;
#: every capacity is at most 1 and every flow at most the source's capacity 1, so nothing exceeds 2^30).
SCALE = 2**30


def flow_graph(residual: np.ndarray, source_token: int) -> sp.csr_matrix:
    """The authors' layered graph with integer capacities ``⌊SCALE · Â⌋``.

    ``residual`` ``(L, N, N)`` holds Â_l = rownorm(mean_h A_l + I). Node ``i·N + k`` is token ``k`` at
    level ``i`` (level 0: the input tokens; level i: the output of block i-1); node ``i·N + q`` has an
    edge to node ``(i-1)·N + k`` of capacity Â_{i-1}[q, k] (``get_adjmat`` in the authors'
    ``attention_graph_util.py``). At the top level only ``source_token`` keeps its edges (no other top
    node can be reached from it), and edges rounded to zero are left out.
    """
    layers, n, _ = residual.shape
    capacities = np.floor(residual * SCALE).astype(np.int32)
    capacities[-1, np.arange(n) != source_token] = 0
    columns = (np.arange(layers)[:, None, None] * n + np.arange(n)).repeat(n, axis=1).reshape(-1)
    row_starts = np.concatenate([np.zeros(n, dtype=np.int64), np.arange(layers * n + 1) * n])
    nodes = (layers + 1) * n
    graph = sp.csr_matrix((capacities.reshape(-1), columns.astype(np.int32), row_starts), (nodes, nodes))
    graph.eliminate_zeros()
    return graph


def token_flows(
    residual: np.ndarray, source_token: int, on_flow: Callable[[int], None] = lambda token: None
) -> np.ndarray:
    """Maximum flow ``(N,)`` from ``source_token`` at the top level to each input token (capacity units);
    ``on_flow(k)`` is called after the flow to token ``k``."""
    layers, n, _ = residual.shape
    graph = flow_graph(residual, source_token)
    source = layers * n + source_token
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
    """Maximum flow from each input token to the class token's output through the attention graph.

    Â_l = rownorm(mean_h A_l + I) (the residual connection as the identity, as in rollout) are the
    capacities of a graph with one node per token and level and edges from token q at level l+1 to token
    k at level l; map[k] = maxflow(cls at the top level → k at level 0) / Σ_j maxflow(… → j), normalised
    over all input tokens as in the authors' ``compute_flows``. Exact up to the integer capacities that
    SciPy's Dinic algorithm needs: with c̃ = ⌊2³⁰ c⌋ / 2³⁰ every flow value f̃ satisfies
    f − |C|/2³⁰ < f̃ ≤ f, C a minimum cut of the exact graph (at most its L·N² edges: < 4.4e-4 for
    ViT-Ti/16, in practice about 1e-9). N max-flows per image, on the CPU.
    """
    layout = capture.layout
    if getattr(layout, "readout", "cls") != "cls":
        raise ValueError(
            "attention_flow starts the flow at the class token's output; this model reads its output "
            f"through {layout.readout} pooling. Use a model with a class-token readout (e.g. deit_*)."
        )
    flows, n, total = [], layout.num_tokens, capture.batch_size * layout.num_tokens
    for b, attentions in enumerate(zip(*capture.attentions, strict=True)):  # one image at a time
        fused = torch.stack([a.double().mean(dim=0) for a in attentions])
        fused += torch.eye(n, dtype=fused.dtype, device=fused.device)
        fused /= fused.sum(dim=-1, keepdim=True)
        report = partial(_report_flow, b * n, total)
        flow = token_flows(fused.cpu().numpy(), layout.cls_index, report)
        flows.append(flow / flow.sum())
    return torch.from_numpy(np.stack(flows)).to(device=capture.device, dtype=torch.float32)
