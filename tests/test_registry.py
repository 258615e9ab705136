"""The registry's declarations, validation messages, and adding a method from outside."""

import pytest
import torch
from torch import nn

import explainers
from explainers import get_explainer, registry
from explainers.registry import Cost, capture_options
from tests.conftest import make_vit


def test_the_four_methods_are_registered_with_their_declarations():
    names = explainers.list_explainers()
    assert {"rollout", "grad_rollout", "raw_attention", "gae"} <= set(names)
    rollout = explainers.get_explainer("rollout")
    assert not rollout.needs_gradients and explainers.get_explainer("gae").needs_gradients
    assert [p.name for p in rollout.params] == ["head_fusion", "discard_ratio", "start_layer"]
    assert rollout.defaults() == {"head_fusion": "mean", "discard_ratio": 0.0, "start_layer": 0}
    assert all(
        explainers.get_explainer(n).description and explainers.get_explainer(n).reference for n in names
    )


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("nope", {}, "unknown method 'nope': choose one of"),
        ("rollout", {"discard_ratio": 1.0}, "discard_ratio must be in [0.0, 1.0)"),
        ("rollout", {"discard_ratio": -0.1}, "discard_ratio must be in [0.0, 1.0)"),
        ("rollout", {"discard_ratio": float("nan")}, "discard_ratio must be"),
        ("rollout", {"head_fusion": "sum"}, "head_fusion must be one of 'mean', 'max', 'min'"),
        ("rollout", {"start_layer": 12}, "start_layer must be in [0, 11]"),
        ("gae", {"start_layer": -1}, "start_layer must be in [0, 11]"),
        ("raw_attention", {"layer": 12}, "layer must be in [0, 11]"),
        ("raw_attention", {"layer": -13}, "layer must be in [0, 11] (or -12..-1"),
        ("raw_attention", {"head": 3}, "head must be in [0, 2] or None"),
        ("raw_attention", {"head": 1.5}, "head must be in [0, 2]"),
        (
            "gae",
            {"discard_ratio": 0.5},
            "gae has no parameter 'discard_ratio'; its parameters are: start_layer",
        ),
    ],
)
def test_bad_parameters_name_the_parameter_and_the_valid_range(deit_tiny, images, method, params, message):
    with pytest.raises(ValueError) as error:
        explainers.explain(deit_tiny, images, method, **params)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (1000, "target 1000 is outside the model's classes: choose a class in 0..999"),
        (-1, "target -1 is outside"),
        ([1, 2, 3], "target must be one class or one per image (2)"),
    ],
)
def test_bad_targets(deit_tiny, images, target, message):
    with pytest.raises(ValueError) as error:
        explainers.explain(deit_tiny, images, "gae", target=target)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("make_images", "message"),
    [
        (lambda: torch.randn(3, 224, 224), "images must be a normalised float tensor of shape (B, 3, H, W)"),
        (lambda: torch.randn(1, 1, 224, 224), "got (1, 1, 224, 224)"),
        (lambda: torch.randn(1, 3, 160, 160), "images are 160×160 pixels but this model takes 224×224"),
        (lambda: torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "images must be floating point"),
        (lambda: [[0.0]], "got list"),
    ],
)
def test_bad_images(deit_tiny, make_images, message):
    with pytest.raises(ValueError) as error:
        explainers.explain(deit_tiny, make_images(), "rollout")
    assert message in str(error.value)


@pytest.mark.parametrize("model", [nn.Linear(3, 3), make_vit("resnet18")])
def test_a_model_that_is_not_a_vit(model):
    with pytest.raises(ValueError, match="is not a Vision Transformer with attention blocks"):
        explainers.explain(model, torch.randn(1, 3, 224, 224), "rollout")


def test_a_model_without_class_token_reads_its_pooled_tokens():
    model = make_vit("vit_small_patch16_224", class_token=False, global_pool="avg", depth=2)
    assert explainers.describe_model(model).readout == "mean"
    assert explainers.explain(model, torch.randn(1, 3, 224, 224), "rollout").shape == (1, 14, 14)
    pooled_by_max = make_vit("vit_small_patch16_224", class_token=False, global_pool="max", depth=2)
    with pytest.raises(ValueError, match="each channel is pooled from a different token"):
        explainers.explain(pooled_by_max, torch.randn(1, 3, 224, 224), "rollout")


def test_gradient_method_on_a_capture_without_gradients(deit_tiny, images):
    cap = explainers.capture(deit_tiny, images, gradients=False)
    assert cap.gradients is None
    with pytest.raises(ValueError, match="gae needs gradients but this capture has none"):
        explainers.compute(cap, "gae")


@pytest.fixture
def plugin():
    """A fifth method registered from outside the package, as a plugin module would."""

    @explainers.register(
        "cls_to_patch_max",
        label="Max CLS attention over layers",
        needs_gradients=False,
        params=(explainers.Param("scale", float, 1.0, "Multiplier.", low=0.0),),
        reference="test plugin",
    )
    def cls_to_patch_max(capture, *, scale):
        """The largest CLS attention any head of any layer gives each token."""
        return scale * torch.stack([a[:, :, 0].amax(1) for a in capture.attentions]).amax(0)

    yield
    del registry._REGISTRY["cls_to_patch_max"]


def test_a_registered_plugin_works_everywhere(plugin, deit_tiny, images):
    assert "cls_to_patch_max" in explainers.list_explainers()
    maps = explainers.explain(deit_tiny, images, "cls_to_patch_max", scale=2.0)
    assert maps.shape == (2, 14, 14)
    with pytest.raises(ValueError, match=r"scale must be ≥ 0\.0; got -1\.0"):
        explainers.explain(deit_tiny, images, "cls_to_patch_max", scale=-1.0)


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="already registered"):
        explainers.register("rollout", label="again", needs_gradients=False)(lambda capture: capture)


def test_every_method_declares_its_cost():
    dims = {"num_layers": 12, "num_heads": 3, "num_tokens": 197}
    described = {
        name: get_explainer(name).cost.describe(get_explainer(name).needs_gradients, dims)
        for name in explainers.list_explainers()
    }
    assert described == {
        "rollout": "forward to the last attention",
        "raw_attention": "forward to the last attention",
        "gae": "forward + backward",
        "grad_rollout": "forward + backward",
        "attn_gradcam": "forward + backward",
        "legrad": "forward + 12 partial backwards (one per block)",
        "lrp": "forward + 1 LRP pass",
        "partial_lrp": "forward + 1 LRP pass",
        "transformer_attribution": "forward + backward + 1 LRP pass",
        "attention_flow": "forward to the last attention + 197 max-flows on 12·197² edges",
    }
    for name in explainers.list_explainers():  # what each method reads is what its cost declares
        explainer = get_explainer(name)
        assert explainer.needs_relevance == (name in {"lrp", "partial_lrp", "transformer_attribution"})
        assert capture_options([name])["relevance"] == explainer.needs_relevance
        assert capture_options([name])["layer_gradients"] == explainer.cost.layer_backwards
    for name in explainers.list_explainers():  # only max-flows cost more than the shared capture
        seconds = get_explainer(name).cost.estimate_seconds(dims)
        assert (seconds > 1.0) == get_explainer(name).cost.max_flows
        assert (seconds == 0.0) != get_explainer(name).cost.max_flows
    flow = get_explainer("attention_flow").cost
    small = flow.estimate_seconds({"num_layers": 5, "num_tokens": 65})
    assert small < 0.1 < 1.0 < flow.estimate_seconds(dims)  # the embedded model: at once
    assert Cost(lrp_passes=2).describe(True, dims) == "forward + backward + 2 LRP passes"
