"""The model loader: embedded model, timm hub (offline), local weight files, and its error messages."""

import json
import time

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from explainers.datasets import cluttered_digits
from explainers.models import EMBEDDED_DIR, ModelLoadError, available_devices, load_model

from .conftest import make_vit

DEIT = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def embedded():
    return load_model()


@pytest.fixture(scope="module")
def deit7() -> torch.nn.Module:
    """A randomly initialised DeiT-tiny with a 7-class head, as someone's fine-tuned model."""
    return make_vit(DEIT, num_classes=7)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_embedded_model_is_a_plain_timm_vit_in_eval_mode(embedded):
    assert type(embedded.model) is VisionTransformer and not embedded.model.training
    assert embedded.spec == "embedded" and embedded.device == "cpu"
    assert embedded.class_names == tuple(str(d) for d in range(10))
    assert embedded.model.patch_embed.grid_size == (8, 8)
    assert next(embedded.model.parameters()).device.type == "cpu"


def test_embedded_preprocessing_comes_from_the_config(embedded):
    cfg = json.loads((EMBEDDED_DIR / "config.json").read_text())["pretrained_cfg"]
    assert embedded.data_config == timm.data.resolve_model_data_config(embedded.model)
    assert embedded.data_config["input_size"] == (3, 64, 64)
    assert embedded.data_config["mean"] == tuple(cfg["mean"])
    assert embedded.data_config["std"] == tuple(cfg["std"])
    assert embedded.data_config["crop_pct"] == 1.0


def test_preprocess_normalises_exactly_and_to_display_undoes_it(embedded):
    image = cluttered_digits(1, seed=5).images[0]
    x = embedded.preprocess(Image.fromarray(image))
    mean = torch.tensor(embedded.data_config["mean"]).view(3, 1, 1)
    std = torch.tensor(embedded.data_config["std"]).view(3, 1, 1)
    expected = (torch.from_numpy(image).permute(2, 0, 1) / 255 - mean) / std
    assert x.shape == (3, 64, 64) and torch.allclose(x, expected, atol=1e-6)
    assert np.array_equal(embedded.to_display(x), image)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_preprocess_accepts_any_pil_mode(embedded, mode):
    image = Image.fromarray(cluttered_digits(1, seed=6).images[0]).convert(mode).resize((100, 80))
    assert embedded.preprocess(image).shape == (3, 64, 64)


def test_each_load_is_a_new_model(embedded):
    again = load_model("embedded", device="cpu")
    assert again.model is not embedded.model
    again.model.head.bias.data.add_(1.0)
    assert not torch.equal(again.model.head.bias, embedded.model.head.bias)


def test_available_devices():
    devices = available_devices()
    assert devices[0] == "cpu" and set(devices) <= {"cpu", "cuda", "mps"}
    assert ("cuda" in devices) == torch.cuda.is_available()


def test_unavailable_device_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="not available"):
        load_model(device="tpu")


def test_unknown_timm_name_suggests_close_names():
    with pytest.raises(ModelLoadError, match="deit_tiny_patch16_224"):
        load_model("deit_tiny_patch16_22")


def test_hub_weights_offline_fail_fast_with_a_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="weights=") as error:
        load_model(DEIT)
    assert time.perf_counter() - start < 10
    assert "not in the local cache" in str(error.value)


def test_model_without_pretrained_weights_says_so():
    with pytest.raises(ModelLoadError, match=r"no pretrained weights.*weights="):
        load_model("vit_small_patch16_18x2_224")


def test_hub_weights_come_from_the_cache_when_offline(monkeypatch, tmp_path, deit7, batch):
    """A cached hub file is loaded through timm (pretrained_cfg_overlay=dict(file=...)) without network."""
    repo = timm.models.get_pretrained_cfg(DEIT).hf_hub_id
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    model = make_vit(DEIT)
    save_file(model.state_dict(), snapshot / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = load_model(DEIT)
    assert torch.equal(outputs(loaded.model, batch), outputs(model, batch))
    assert len(loaded.class_names) == 1000 and "tabby" in loaded.class_names[281]


def test_local_safetensors_matches_the_saved_model_and_timms_own_file_loading(tmp_path, deit7, batch):
    path = tmp_path / "deit7.safetensors"
    save_file(deit7.state_dict(), path)
    loaded = load_model(DEIT, weights=path)
    assert loaded.model.num_classes == 7
    assert loaded.class_names == tuple(f"class {i}" for i in range(7))
    assert torch.equal(outputs(loaded.model, batch), outputs(deit7, batch))
    # timm's own file loading; it needs to be told the head size, else it drops the file's classifier
    overlay = dict(file=str(path), num_classes=7)
    via_timm = timm.create_model(DEIT, pretrained=True, num_classes=7, pretrained_cfg_overlay=overlay)
    assert torch.equal(outputs(loaded.model, batch), outputs(via_timm.eval(), batch))
    assert loaded.data_config == timm.data.resolve_model_data_config(via_timm)
    assert loaded.data_config["input_size"] == (3, 224, 224)
    assert loaded.preprocess(Image.new("RGB", (300, 200))).shape == (3, 224, 224)


@pytest.mark.parametrize("nesting", [None, "model", "state_dict"])
@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_local_torch_state_dict_plain_or_nested(tmp_path, deit7, batch, nesting, suffix):
    path = tmp_path / f"deit7{suffix}"
    state = deit7.state_dict()
    torch.save(state if nesting is None else {nesting: state, "epoch": 3}, path)
    loaded = load_model(DEIT, weights=path)
    assert torch.equal(outputs(loaded.model, batch), outputs(deit7, batch))


class _RunsCode:
    """Unpickling this object would create a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_rejected(tmp_path, deit7):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": deit7.state_dict(), "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(ModelLoadError, match="run code"):
        load_model(DEIT, weights=path)
    assert not marker.exists()


def test_wrong_keys_are_listed(tmp_path, deit7):
    state = dict(deit7.state_dict())
    del state["blocks.0.attn.qkv.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "wrong.safetensors"
    save_file(state, path)
    with pytest.raises(ModelLoadError) as error:
        load_model(DEIT, weights=path)
    message = str(error.value)
    assert "1 missing" in message and "blocks.0.attn.qkv.weight" in message
    assert "1 unexpected" in message and "extra.weight" in message


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    path = tmp_path / "small.safetensors"
    save_file(make_vit("deit_small_patch16_224").state_dict(), path)
    with pytest.raises(ModelLoadError, match="another shape"):
        load_model(DEIT, weights=path)


@pytest.mark.parametrize("name", ["weights.ckpt", "weights.npz", "weights"])
def test_unsupported_file_type_says_what_is_expected(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=r"\.safetensors.*\.pth"):
        load_model(DEIT, weights=path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(DEIT, weights=tmp_path / "nothing.safetensors")


def test_embedded_architecture_with_other_weights(tmp_path, embedded):
    changed = {k: v + 0.01 for k, v in embedded.model.state_dict().items()}
    path = tmp_path / "retrained.safetensors"
    save_file(changed, path)
    loaded = load_model("embedded", weights=path)
    assert loaded.weights == str(path)
    assert torch.equal(loaded.model.head.weight, changed["head.weight"])


def test_errors_are_value_errors():
    assert issubclass(ModelLoadError, ValueError)
