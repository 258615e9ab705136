"""Capture: the right tensors from the right layers, for every ViT layout, leaving the model untouched."""

import threading

import pytest
import torch
from torch import nn

import explainers
from explainers import get_explainer
from explainers.relevance import supports as supports_relevance
from tests.conftest import make_vit


def hooked_reference(model: nn.Module, images: torch.Tensor, targets: torch.Tensor):
    """vit-explain's mechanism done right: hooks on attn_drop with fused attention off, full backward."""
    saved, handles = [], []
    flags = [b.attn.fused_attn for b in model.blocks]
    for block in model.blocks:
        block.attn.fused_attn = False

        def keep(_module, _inputs, output):
            output.retain_grad()
            saved.append(output)

        handles.append(block.attn.attn_drop.register_forward_hook(keep))
    try:
        logits = model(images)
        logits.gather(1, targets[:, None]).sum().backward()
    finally:
        for handle, block, flag in zip(handles, model.blocks, flags, strict=True):
            handle.remove()
            block.attn.fused_attn = flag
        model.zero_grad(set_to_none=True)
    return [a.detach() for a in saved], [a.grad for a in saved]


def hook_count(model: nn.Module) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, n)) for m in model.modules() for n in names)


def test_attention_and_gradients_match_hooked_backward(deit_tiny, images):
    targets = torch.tensor([3, 7])
    cap = explainers.capture(deit_tiny, images, target=targets)
    attentions, gradients = hooked_reference(deit_tiny, images, targets)
    assert cap.num_layers == len(attentions) == 12
    for layer in range(12):  # same layer, same order: no reversed or shifted pairing
        torch.testing.assert_close(cap.attentions[layer], attentions[layer], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cap.gradients[layer], gradients[layer], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(cap.targets, targets)
    # without autograd the attention is computed head by head, in place: the same maps and logits
    no_grad = explainers.capture(deit_tiny, images, target=targets, gradients=False)
    for layer in range(12):
        torch.testing.assert_close(no_grad.attentions[layer], attentions[layer], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(no_grad.logits, cap.logits, rtol=1e-5, atol=1e-5)


def test_gradients_are_of_the_post_softmax_attention():
    """d y/d A, not d y/d (scores): the two differ by the softmax Jacobian, so a mix-up shows."""
    model = make_vit("deit_tiny_patch16_224", depth=1)
    images = torch.randn(1, 3, 224, 224)
    cap = explainers.capture(model, images, target=0)
    attn = cap.attentions[0].clone().requires_grad_(True)
    # finish the block by hand from the recorded attention and compare autograd's d y/d A
    block = model.blocks[0]
    with torch.no_grad():
        x = model.patch_embed(images)
        x = model._pos_embed(x)
        x = model.norm_pre(x)
        h = block.norm1(x)
        qkv = block.attn.qkv(h).reshape(1, x.shape[1], 3, block.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    v = qkv[2]
    out = (attn @ v).transpose(1, 2).reshape(1, x.shape[1], -1)
    x = x + block.ls1(block.attn.proj(out))
    x = x + block.ls2(block.mlp(block.norm2(x)))
    logits = model.forward_head(model.norm(x))
    (grad,) = torch.autograd.grad(logits[0, 0], attn)
    torch.testing.assert_close(cap.gradients[0], grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "prefix", "grid"),
    [
        ("deit_tiny_patch16_224", {}, (224, 224), 1, (14, 14)),
        ("deit_tiny_distilled_patch16_224", {}, (224, 224), 2, (14, 14)),
        ("vit_small_patch14_reg4_dinov2", {"img_size": 224, "num_classes": 10}, (224, 224), 5, (16, 16)),
        ("vit_small_patch16_224", {"img_size": (160, 256)}, (160, 256), 1, (10, 16)),
        ("vit_small_patch16_224", {"dynamic_img_size": True}, (96, 160), 1, (6, 10)),
    ],
)
def test_token_layout_from_the_model(name, kwargs, size, prefix, grid):
    model = make_vit(name, **kwargs)
    images = torch.randn(2, 3, *size)
    cap = explainers.capture(model, images, gradients=False)
    assert (cap.layout.num_prefix, cap.layout.grid) == (prefix, grid)
    assert cap.attentions[0].shape[-1] == prefix + grid[0] * grid[1]
    for method in explainers.list_explainers():
        if explainers.get_explainer(method).needs_relevance and not supports_relevance(model):
            with pytest.raises(ValueError, match="supports the class-token readout only"):  # distilled
                explainers.explain(model, images, method)
            continue
        batch = 1 if get_explainer(method).cost.max_flows else 2  # seconds per image: one is enough
        maps = explainers.explain(model, images[:batch], method)
        assert maps.shape == (batch, *grid)
        assert torch.isfinite(maps).all() and (maps >= 0).all()
    # the map is the CLS row (index 0), never the distillation or register tokens' rows
    raw = explainers.compute(cap, "raw_attention", head=0)
    torch.testing.assert_close(raw, cap.attentions[-1][:, 0, 0, prefix:].reshape(2, *grid))


@pytest.mark.parametrize("method", ["rollout", "grad_rollout", "raw_attention", "gae"])
def test_fused_and_unfused_attention_give_the_same_maps(method, images):
    model = make_vit("deit_tiny_patch16_224")
    params = {"discard_ratio": 0.5} if method.endswith("rollout") else {}
    maps = {}
    for fused in (True, False):
        for block in model.blocks:
            block.attn.fused_attn = fused
        maps[fused] = explainers.explain(model, images, method, **params)
    torch.testing.assert_close(maps[True], maps[False], rtol=1e-4, atol=1e-7)
    assert all(not b.attn.fused_attn for b in model.blocks)


@pytest.mark.parametrize("training", [False, True])
def test_model_is_left_exactly_as_found(training, images):
    model = make_vit("deit_tiny_patch16_224")
    model.train(training)
    model.blocks[3].attn.fused_attn = False
    flags = [b.attn.fused_attn for b in model.blocks]
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = hook_count(model)
    for method in explainers.list_explainers():
        explainers.explain(model, images[:1] if get_explainer(method).cost.max_flows else images, method)
    assert hook_count(model) == hooks == 0
    assert [b.attn.fused_attn for b in model.blocks] == flags
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


def test_eight_threads_on_one_model_give_the_serial_results(deit_tiny):
    batches = [torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    methods = ["gae", "rollout", "grad_rollout", "raw_attention"] * 2
    serial = [
        explainers.explain(deit_tiny, x, m, target=i)
        for i, (x, m) in enumerate(zip(batches, methods, strict=True))
    ]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = explainers.explain(deit_tiny, batches[i], methods[i], target=i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert torch.equal(results[i], serial[i]), f"thread {i} ({methods[i]}) differs from the serial result"
    assert hook_count(deit_tiny) == 0


def test_capture_stores_only_attention_gradients_logits_and_scores(deit_tiny, images):
    cap = explainers.capture(deit_tiny, images)
    per_layer = 2 * 3 * 197 * 197 * 4
    assert cap.nbytes == 2 * 12 * per_layer + cap.logits.numel() * 4 + 2 * 8 + 2 * 4  # targets, scores
    torch.testing.assert_close(cap.scores, cap.logits.gather(1, cap.targets[:, None])[:, 0])
    assert all(not a.requires_grad and a.grad_fn is None for a in cap.attentions)


def test_float16_storage_halves_memory_and_keeps_the_maps(deit_tiny, images):
    full = explainers.capture(deit_tiny, images, relevance=True, layer_gradients=True)
    half = explainers.capture(deit_tiny, images, dtype=torch.float16, relevance=True, layer_gradients=True)
    stored = (half.attentions[0], half.gradients[0], half.relevance.attention[0], half.layer_gradients[0])
    assert all(t.dtype == torch.float16 for t in stored)
    assert half.nbytes < 0.51 * full.nbytes
    for method in explainers.list_explainers():
        one = get_explainer(method).cost.max_flows  # seconds per image: one image is enough
        a, b = (explainers.compute(c.subset(0) if one else c, method) for c in (full, half))
        assert b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3 * float(a.max()))


def test_subset_and_upto(deit_tiny, images):
    cap = explainers.capture(deit_tiny, images, target=[1, 2])
    one = cap.subset(1)
    torch.testing.assert_close(explainers.compute(one, "gae"), explainers.compute(cap, "gae")[1:])
    short = cap.upto(4)
    assert short.num_layers == 4
    torch.testing.assert_close(
        explainers.compute(short, "raw_attention"), explainers.compute(cap, "raw_attention", layer=3)
    )


def test_attention_only_capture_stops_at_the_last_attention_map(deit_tiny, images):
    full = explainers.capture(deit_tiny, images, gradients=False)
    calls = []
    after_last_attention = (deit_tiny.blocks[-1].mlp, deit_tiny.head)
    handles = [m.register_forward_hook(lambda *_: calls.append(1)) for m in after_last_attention]
    try:
        short = explainers.capture(deit_tiny, images, gradients=False, logits=False)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []  # neither the last MLP nor the head ran
    assert short.logits is None and short.targets is None
    assert all(torch.equal(a, b) for a, b in zip(short.attentions, full.attentions, strict=True))
    assert short.nbytes == full.nbytes - full.logits.nbytes - full.targets.nbytes - full.scores.nbytes
    assert short.subset(1).batch_size == 1 and short.subset(1).logits is None
    for method in ("rollout", "raw_attention"):
        assert torch.equal(explainers.explain(deit_tiny, images, method), explainers.compute(full, method))
    with pytest.raises(ValueError, match="gradients need the logits"):
        explainers.capture(deit_tiny, images, logits=False)


def test_attention_only_methods_explain_a_headless_backbone(images):
    backbone = make_vit("deit_tiny_patch16_224", num_classes=0)
    maps = explainers.explain(backbone, images, "rollout", discard_ratio=0.5)
    assert maps.shape == (2, 14, 14) and torch.isfinite(maps).all()
    with pytest.raises(ValueError, match="no classifier head"):
        explainers.explain(backbone, images, "gae")
    with pytest.raises(ValueError, match="no classifier head"):
        explainers.explain(backbone, images, "rollout", target=3)
