"""Attention flow against the authors' networkx construction (Abnar & Zuidema, attention_flow repository)."""

import networkx as nx
import numpy as np
import pytest
import torch
from networkx.algorithms.flow import edmonds_karp

import explainers
from explainers.methods.attention_flow import SCALE, token_flows
from tests.conftest import make_vit


def authors_flows(attentions: list[np.ndarray]) -> np.ndarray:
    """``compute_flows`` of github.com/samiraabnar/attention_flow (``attention_graph_util.py``, commit
    8044f53) for the class token of the last level, written again here from their code: the head-mean
    attention plus the identity, row-normalised (their ``bert_example.ipynb``), as the capacities of the
    graph of ``get_adjmat``, networkx's max flow to every input token, normalised by their sum."""
    att = np.stack(attentions)  # (L, H, N, N)
    res = att.sum(axis=1) / att.shape[1]
    res = res + np.eye(res.shape[1])[None]
    res = res / res.sum(axis=-1)[..., None]
    layers, n, _ = res.shape
    adj = np.zeros(((layers + 1) * n, (layers + 1) * n))
    for i in range(1, layers + 1):
        for k_f in range(n):
            for k_t in range(n):
                adj[i * n + k_f][(i - 1) * n + k_t] = res[i - 1][k_f][k_t]
    graph = nx.from_numpy_array(adj, create_using=nx.DiGraph())
    nx.set_edge_attributes(graph, {(i, j): adj[i, j] for i, j in graph.edges}, "capacity")
    source = layers * n  # "L{layers}_0": the class token at the top level
    return np.array([nx.maximum_flow_value(graph, source, k, flow_func=edmonds_karp) for k in range(n)])


def peaked_vit() -> torch.nn.Module:
    """A small random ViT (17 tokens, 3 blocks), query and key weights scaled up: peaked attention."""
    model = make_vit("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:64] *= 6.0
    return model


def test_flows_match_networkx_on_the_authors_graph():
    model = peaked_vit()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    cap = explainers.capture(model, images, gradients=False, logits=False)
    maps = explainers.compute(cap, "attention_flow").reshape(3, -1).double().numpy()
    edges = cap.num_layers * cap.layout.num_tokens**2
    for b in range(3):
        attentions = [a[b].double().numpy() for a in cap.attentions]
        expected = authors_flows(attentions)
        fused = np.stack(attentions).mean(axis=1) + np.eye(cap.layout.num_tokens)
        ours = token_flows(fused / fused.sum(axis=-1, keepdims=True), 0)
        assert np.all(ours <= expected + 1e-12)  # capacities rounded down: never more flow
        assert np.all(expected - ours < edges / SCALE)  # the stated bound
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-7)
        normalised = expected / expected.sum()
        np.testing.assert_allclose(maps[b], normalised[1:], rtol=1e-6)
        assert normalised[1:].std() > 1e-2 * normalised[1:].mean()  # a map with contrast, not a flat one
        rollout_row = explainers.compute(cap.subset(b), "rollout").reshape(-1).numpy()
        assert np.abs(np.corrcoef(rollout_row, maps[b])[0, 1]) < 0.999  # not rollout under another name


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "embedded"])
def test_runs_on_deit_tiny_and_the_embedded_model(name, deit_tiny):
    if name == "embedded":
        loaded = explainers.load_model("embedded")
        model, size = loaded.model, loaded.model.patch_embed.img_size
    else:
        model, size = deit_tiny, (224, 224)
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    maps = explainers.explain(model, images, "attention_flow")
    grid = tuple(model.patch_embed.grid_size)
    assert maps.shape == (1, *grid) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and (maps > 0).all() and maps.sum() < 1
