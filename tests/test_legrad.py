"""LeGrad against the authors' package (legrad-torch 1.1, run outside the project: tests/fixtures/legrad/)."""

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer, _convert_openai_clip

import explainers
from explainers.layer_readout import check_layer_readout
from tests.conftest import make_vit

FIXTURE = Path(__file__).parent / "fixtures" / "legrad" / "legrad_reference.safetensors"
SIGLIP_FIXTURE = FIXTURE.with_name("legrad_siglip_reference.safetensors")


def clip_as_classifier(reference: dict[str, torch.Tensor]) -> VisionTransformer:
    """The fixture's open_clip vision tower as a timm ViT whose head scores the "text" embeddings.

    timm converts the weights (``_convert_openai_clip``: ``ln_post`` becomes ``norm``, ``proj`` the head);
    the head's rows become ``proj · e`` for every text embedding ``e``, so that logit ``t`` is
    ``e_t · ln_post(z) · proj``: LeGrad's cosine similarity times the constant ``√32`` (see make_fixture.py).
    """
    width = reference["visual.proj"].shape[0]
    model = VisionTransformer(img_size=48, patch_size=8, embed_dim=width, depth=4, num_heads=4, pre_norm=True,
                              num_classes=width, norm_layer=partial(torch.nn.LayerNorm, eps=1e-5)).eval()
    state = _convert_openai_clip({k: v for k, v in reference.items() if k.startswith("visual.")}, model)
    model.load_state_dict(state)
    text = reference["text_embeddings"]
    model.reset_classifier(text.shape[0])
    with torch.no_grad():
        model.head.weight.copy_(text @ state["head.weight"])
        model.head.bias.zero_()
    return model


@pytest.mark.parametrize(("key", "start_layer"), [("maps_all_layers", 0), ("maps_last_two", 2)])
def test_maps_match_the_authors_package(key, start_layer):
    reference = load_file(FIXTURE)
    model = clip_as_classifier(reference)
    images, targets = reference["images"], reference["targets"]
    assert max(float(a.max()) for a in explainers.capture(model, images, 0).attentions) > 0.9  # peaked
    for b in range(len(images)):
        for j, target in enumerate(targets[b].tolist()):
            ours = explainers.explain(model, images[b : b + 1], "legrad", target, start_layer=start_layer)
            ours = F.interpolate(ours[None], scale_factor=8, mode="bilinear")[0, 0]  # as the package does
            theirs = reference[key][2 * b + j]
            pearson = np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1]
            assert pearson >= 0.9999, (b, target, pearson)  # same computation: rounding only (≥ 0.99 asked)


def test_attention_pool_maps_match_the_authors_package():
    """SigLIP-style tower (attention pool, no class token, headless): the package's compute_legrad_siglip
    against legrad with a SimilarityTarget on the text embedding; the trunk's final norm is the identity
    in the fixture (the package leaves it out, see make_siglip_fixture.py)."""
    reference = load_file(SIGLIP_FIXTURE)
    model = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, depth=2, embed_dim=32,
                              num_heads=4, patch_size=8, img_size=48, num_classes=0).eval()
    model.norm = torch.nn.Identity()
    trunk = {k.removeprefix("trunk."): v for k, v in reference.items() if k.startswith("trunk.")}
    model.load_state_dict(trunk)
    images, targets, text = reference["images"], reference["targets"], reference["text_embeddings"]
    assert explainers.describe_model(model).readout == "attention_pool"
    for b in range(len(images)):
        for j, target in enumerate(targets[b].tolist()):
            similarity = explainers.SimilarityTarget(text[target])
            ours = explainers.explain(model, images[b : b + 1], "legrad", similarity)
            ours = F.interpolate(ours[None], scale_factor=8, mode="bilinear")[0, 0]
            theirs = reference["maps_all_layers"][2 * b + j]
            assert float(theirs.std()) > 0.1  # min-max scaled by the package: a map with contrast
            pearson = np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1]
            assert pearson >= 0.9999, (b, target, pearson)


def test_layer_gradient_is_of_the_readout_through_norm_and_head():
    """∂s/∂A for a one-block model, finished by hand from the recorded attention, s = head(norm(mean x))."""
    model = make_vit("deit_tiny_patch16_224", depth=1)
    images = torch.randn(1, 3, 224, 224)
    cap = explainers.capture(model, images, target=4, gradients=False, layer_gradients=True)
    attn = cap.attentions[0].clone().requires_grad_(True)
    block = model.blocks[0]
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
        qkv = block.attn.qkv(block.norm1(x)).reshape(1, x.shape[1], 3, block.attn.num_heads, -1)
    v = qkv.permute(2, 0, 3, 1, 4)[2]
    x = x + block.ls1(block.attn.proj((attn @ v).transpose(1, 2).reshape(1, x.shape[1], -1)))
    x = x + block.ls2(block.mlp(block.norm2(x)))
    (grad,) = torch.autograd.grad(model.head(model.norm(x.mean(dim=1)))[0, 4], attn)
    torch.testing.assert_close(cap.layer_gradients[0], grad, rtol=1e-4, atol=1e-8)
    assert cap.gradients is None


def test_capture_with_layer_gradients_is_the_same_forward(deit_tiny, images):
    params = [p.clone() for p in deit_tiny.parameters()]
    plain = explainers.capture(deit_tiny, images, target=[1, 2])
    both = explainers.capture(deit_tiny, images, target=[1, 2], layer_gradients=True)
    torch.testing.assert_close(both.logits, plain.logits)
    for a, b, g, h in zip(both.attentions, plain.attentions, both.gradients, plain.gradients, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(g, h)
    assert len(both.layer_gradients) == 12 and all(p.grad is None for p in deit_tiny.parameters())
    assert all(torch.equal(p, q) for p, q in zip(params, deit_tiny.parameters(), strict=True))
    assert torch.equal(both.subset(1).layer_gradients[3], both.layer_gradients[3][1:2])
    assert len(both.upto(5).layer_gradients) == 5


def test_runs_on_the_embedded_model_and_explains_clear_errors():
    loaded = explainers.load_model("embedded")
    images = torch.randn(2, 3, *loaded.model.patch_embed.img_size)
    maps = explainers.explain(loaded.model, images, "legrad", target=[3, 5])
    assert maps.shape == (2, 8, 8) and torch.isfinite(maps).all() and (maps >= 0).all() and maps.sum() > 0
    cap = explainers.capture(loaded.model, images)
    with pytest.raises(ValueError, match="layer_gradients=True"):
        explainers.compute(cap, "legrad")
    with pytest.raises(ValueError, match="has no forward_intermediates, norm, forward_head"):
        check_layer_readout(torch.nn.Linear(2, 2))


def test_threads_on_one_model_give_the_serial_maps():
    model = explainers.load_model("embedded").model
    batches = [torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    serial = [explainers.explain(model, b, "legrad", target=i % 10) for i, b in enumerate(batches)]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(lambda i: explainers.explain(model, batches[i], "legrad", target=i % 10),
                                 range(6)))
    for a, b in zip(serial, parallel, strict=True):
        torch.testing.assert_close(a, b)
