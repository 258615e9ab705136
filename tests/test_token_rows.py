"""Where one token looks: its attention rows and its rollout row, against full-matrix references."""

import numpy as np
import pytest
import torch

import explainers
from explainers.token_rows import attention_rows, patch_token, rollout_row
from tests import reference
from tests.test_methods import per_image, synthetic_capture


def test_patch_token_follows_the_layout():
    cap = synthetic_capture(num_prefix=2, grid=(2, 3))
    assert patch_token(cap.layout, 0, 0) == 2
    assert patch_token(cap.layout, 1, 2) == 2 + 5
    with pytest.raises(ValueError, match="outside the 2×3 patch grid"):
        patch_token(cap.layout, 2, 0)


def test_attention_rows_are_the_tokens_rows_of_every_layer_and_head():
    cap = synthetic_capture()
    token = patch_token(cap.layout, 1, 1)
    rows = attention_rows(cap, token)
    assert rows.shape == (3, 4, 3, 2, 3)
    for layer, attention in enumerate(cap.attentions):
        for head in range(3):
            expected = attention[:, head, token, 2:].reshape(3, 2, 3)
            torch.testing.assert_close(rows[:, layer, head], expected)


@pytest.mark.parametrize("params", [{}, {"head_fusion": "max", "discard_ratio": 0.5},
                                    {"head_fusion": "min", "discard_ratio": 0.9, "start_layer": 1}])
def test_rollout_row_is_a_row_of_the_full_rollout_matrix(params):
    cap = synthetic_capture()
    token = patch_token(cap.layout, 0, 2)
    rows = rollout_row(cap, token, **params)
    for b in range(cap.batch_size):
        attn, _ = per_image(cap, b)
        _, matrix = reference.rollout(attn, 2, params.get("head_fusion", "mean"),
                                      params.get("discard_ratio", 0.0), params.get("start_layer", 0))
        np.testing.assert_allclose(rows[b].numpy().reshape(-1), matrix[token, 2:], rtol=1e-4, atol=1e-6)


def test_the_class_tokens_rollout_row_is_the_rollout_map():
    cap = synthetic_capture()
    params = {"head_fusion": "max", "discard_ratio": 0.7, "start_layer": 1}
    torch.testing.assert_close(rollout_row(cap, cap.layout.cls_index, **params),
                               explainers.compute(cap, "rollout", **params))


def test_a_token_outside_the_sequence_is_refused():
    cap = synthetic_capture()
    with pytest.raises(ValueError, match="token must be in"):
        attention_rows(cap, cap.layout.num_tokens)
