"""Layer-wise relevance propagation (LRP) through a timm ViT, with the rules of Chefer, Gur & Wolf 2021.

The rules per module kind are all in this file, written as in the authors' code
(hila-chefer/Transformer-Explainability, ``modules/layers_ours.py`` and ``baselines/ViT/ViT_LRP.py``):

* **Linear** (``qkv``, ``proj``, ``fc1``, ``fc2``, ``head``): αβ rule with α = 1, β = 0, bias left out:
  ``Z = x⁺W⁺ᵀ + x⁻W⁻ᵀ``, ``S = R ⊘ Z``, ``R_x = x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻)`` (Bach et al. 2015).
* **Matrix products** ``A·V`` and ``Q·Kᵀ``: the LRP-0 rule for each factor,
  ``R_a = a ⊙ ((R ⊘ ab) bᵀ)``, ``R_b = b ⊙ (aᵀ (R ⊘ ab))``, each then halved (the two factors share R).
* **Residual addition** ``x + y``: ``R_x = x ⊙ S``, ``R_y = y ⊙ S`` with ``S = R ⊘ (x + y)``, then each
  rescaled so that ``ΣR_x : ΣR_y = |Σ x⊙S| : |Σ y⊙S|`` and ``ΣR_x + ΣR_y = ΣR`` (sums per image; the
  authors' code sums over the whole batch, which is the same for their batch of one).
* **Softmax, LayerNorm (also q/k norms and ``fc_norm``), GELU, dropout, LayerScale**: relevance passes
  unchanged (identity), as in their code. Where the residual stream forks (their ``Clone``) the
  branches' relevances are added (q, k and v read one input; so do the two factors of a gated MLP).

Beyond the authors' class-token ViT (the same rules, applied to the other parts; ``Relevance`` below):

* **Readouts** (how the relevance at the pooled embedding ``e`` reaches the last block's tokens ``t``):
  class token: ``R_t[cls] = R_e``; mean of the tokens S (``global_pool='avg'``, I-JEPA, BEiT): the z-rule
  (LRP-0) of the linear map ``e = Σ_{n∈S} t_n / |S|``: ``R_t[n] = (t_n / |S|) ⊙ (R_e ⊘ e)``; heads that
  read several parts (DINOv2's ``[t_cls | mean(t_patches)]``, distilled DeiT's two heads averaged, whose
  α1β0 rule runs on ``[t_cls | t_dist]`` with ``[W_head | W_dist]``) split ``R_e`` by channels.
* **Attention pool** (SigLIP's ``map`` head, ``AttentionPoolLatent``): the pool is one more attention
  layer with a residual MLP, ``p = y + fc2(act(fc1(norm(y))))``, ``y = proj(A v)``, ``A = softmax(q kᵀ)``,
  and gets the same rules (add, linear, LRP-0 on ``A·v`` halved). Its query ``q`` is a parameter (the
  projected latent), so ``q kᵀ`` is a linear map of the keys: the whole relevance of ``A`` goes to ``k``
  (``R_k = k ⊙ (qᵀ (R_A ⊘ q kᵀ))``), none stays on the latent.
* **Relative-position bias** (BEiT, ``vit_relpos``) is an additive term of the scores
  ``q kᵀ·s + B``; the LRP-0 rule of ``q kᵀ`` divides by ``q kᵀ`` alone, so the bias's share goes to q and
  k, as the linear rule leaves every bias out.
* **Talking heads** (CaiT's patch blocks, ``TalkingHeadAttn``): ``S = q kᵀ·s``, ``S' = proj_l(S)``,
  ``A = softmax(S')``, ``A' = proj_w(A)``, ``out = A'·v``, where ``proj_l`` and ``proj_w`` are linear maps
  across the heads (applied at every query-key pair). LRP-0 on ``A'·v`` (halved) gives ``R_{A'}``; LRP-0
  of ``proj_w`` along the head axis, ``R_A[h] = A[h] Σ_g W[g, h] R_{A'}[g] ⊘ z[g]`` with ``z = W A`` (bias
  left out), gives ``R_A``; the softmax is the identity; the same rule through ``proj_l`` gives ``R_S``;
  then LRP-0 on ``q kᵀ``. These maps mix a few signed inputs (the heads): the α1β0 rule of the wide
  linear layers would drop the relevance of every output whose contributions are all negative (about one
  in 2ᴴ for signed scores), so they get LRP-0, like the attention products, which conserves relevance.
  The attention relevance of such a block (``Relevance.attention``) is ``R_A``, of the post-softmax map
  ``A`` that the capture records and whose gradient ``∂y/∂A`` it holds, so ``transformer_attribution``
  pairs ``∂y/∂A ⊙ R_A`` and ``partial_lrp`` reads ``R_A`` of the same map the attention methods show.
* **Class attention** (CaiT's ``blocks_token_only``): ``x_cls ← x_cls + s₁(proj(A v))`` with ``A =
  softmax(q kᵀ)`` ``(1 × N)`` per head, ``q`` from ``x̂_cls`` and ``k, v`` from ``x̂ = norm1([x_cls |
  patches])``, then the MLP on ``x_cls`` alone. The class token's relevance splits by the add rule into
  its residual and each branch; the attention branch goes through ``proj``, ``A·v`` (halved), ``q kᵀ``
  (halved) and the q, k, v projections to ``x̂``, so to the class token and to every patch token, whose
  relevance adds up over these blocks (the patches themselves pass through unchanged). The class token
  enters here as a parameter: its relevance after the first class-attention block is the share of the
  ``cls_token`` parameter, reported as token 0 of ``Relevance.tokens``; the patch tokens' relevance then
  goes back through the patch blocks as usual, so ``Σ_patches + R_cls + R_position`` is the starting
  relevance. Each class-attention step's ``R_A`` is laid out on the class token's row of the
  ``(N × N)`` map, and each patch block's on the patch rows and columns, as the capture lays out the
  attention itself (:class:`~explainers.TokenLayout`).
* **Similarity target** (headless models, :class:`~explainers.SimilarityTarget`): the explained score is
  ``cos(e, r) = Σ_c e_c r̂_c / ‖e‖`` with ``r̂ = r / ‖r‖``, and the relevance at ``e`` is each
  dimension's term, ``R_c = e_c r̂_c / ‖e‖``, which sums to the cosine.

``⊘`` is their ``safe_divide``: ``a / (b + 1e-9)`` where ``b ≠ 0``, else 0. The relevance at the output
is the one-hot vector of the target class (not its logit), or the cosine's terms. The propagation is
plain tensor maths over the activations the capture records in its one forward pass
(:class:`~explainers.recorder.ActivationRecorder`), at the modules that
:mod:`explainers.lrp_families` names for each model family: no autograd, no hook, no second model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .lrp_families import BlockParts, ModelParts, PoolParts, model_parts

EPS = 1e-9


@dataclass(frozen=True)
class Relevance:
    """LRP relevance of one capture, for its targets.

    Attributes:
        attention: per block, the relevance of the post-softmax attention ``R_A`` ``(B, H, N, N)``
            (the authors' ``attn_cam``: the halved share of ``A`` in ``A·V``).
        tokens: ``(B, N)`` relevance of each token's embedding at the input, summed over channels (the
            authors' ``method="full"`` before the patch embedding; their pixel map summed per patch).
        position: ``(B,)`` relevance of the position embedding, the other term of the input sum; the
            rules conserve relevance, so ``tokens.sum(-1) + position`` is the starting relevance: 1 for
            the one-hot target, the cosine for a similarity target.
        pool: the relevance ``R_A`` of the attention pool's map ``(B, H, 1, N)`` (zero on tokens it does
            not read), laid out like ``Capture.pool_attention``; ``None`` without an attention pool.
    """

    attention: tuple[torch.Tensor, ...]
    tokens: torch.Tensor
    position: torch.Tensor
    pool: torch.Tensor | None = None

    def to(self, dtype: torch.dtype) -> Relevance:
        pool = None if self.pool is None else self.pool.to(dtype)
        attention = tuple(r.to(dtype) for r in self.attention)
        return Relevance(attention, self.tokens.to(dtype), self.position, pool)


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / (b + ε)`` where ``b ≠ 0``, 0 where ``b = 0`` (the authors' stabiliser, ε = 1e-9)."""
    den = b + EPS
    den = den + (den == 0) * EPS
    return a / den * (b != 0)


def linear_rule(x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """α = 1, β = 0: ``R_x = x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻)`` with ``S = R ⊘ (x⁺W⁺ᵀ + x⁻W⁻ᵀ)``."""
    weight = weight.to(x.dtype)
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    s = safe_divide(r, xp @ wp.T + xn @ wn.T)
    return xp * (s @ wp) + xn * (s @ wn)


def matmul_rule(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LRP-0 for ``a @ b``, halved per factor: ``(a ⊙ (S bᵀ) / 2, b ⊙ (aᵀ S) / 2)``, ``S = R ⊘ ab``."""
    s = safe_divide(r, a @ b)
    return a * (s @ b.transpose(-1, -2)) / 2, b * (a.transpose(-1, -2) @ s) / 2


def linear_map_rule(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """LRP-0 for a linear map without bias ``z = f(x) = J x``: ``R_x = x ⊙ Jᵀ(R ⊘ f(x))``, ``Jᵀ`` by
    ``torch.func.vjp`` (used for the rotary position embedding, a fixed rotation of channel pairs)."""
    z, transpose = torch.func.vjp(f, x)
    return x * transpose(safe_divide(r, z))[0]


def add_rule(x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of ``x + y`` split by the z-rule, then each share renormalised per image (see above)."""
    s = safe_divide(r, x + y)
    rx, ry = x * s, y * s
    dims = tuple(range(1, r.dim()))
    sx, sy, total = rx.sum(dims, keepdim=True), ry.sum(dims, keepdim=True), r.sum(dims, keepdim=True)
    norm = sx.abs() + sy.abs()
    rx = rx * safe_divide(safe_divide(sx.abs(), norm) * total, sx)
    ry = ry * safe_divide(safe_divide(sy.abs(), norm) * total, sy)
    return rx, ry


def check_supported(model: nn.Module) -> None:
    """``ValueError`` naming the model and the reason unless :mod:`explainers.lrp_families` covers it."""
    model_parts(model)


def supports(model: nn.Module) -> bool:
    """Whether :func:`check_supported` accepts ``model`` (relevance can be captured for it)."""
    try:
        check_supported(model)
    except ValueError:
        return False
    return True


def watch_list(model: nn.Module) -> dict[int, str]:
    """The layers whose activations the propagation reads, by ``id`` of their weight."""
    parts = model_parts(model)
    named: dict[str, nn.Module | None] = {"patches": parts.patches, "embed": parts.norm_pre}
    named["norm"] = parts.norm
    named.update({f"head{j}": head for j, head in enumerate(parts.heads)})
    blocks = [*enumerate(parts.blocks), *((f"c{j}", b) for j, b in enumerate(parts.class_blocks))]
    for i, block in blocks:
        named.update({f"{i}.{name}": getattr(block, name) for name in ("norm1", "q_norm", "k_norm", "proj",
                                                                        "norm2", "fc2")})
        named.update({f"{i}.qkv{j}": m for j, m in enumerate(block.qkv)})
        named.update({f"{i}.fc1{j}": m for j, m in enumerate(block.fc1)})
        if block.talking_heads is not None:
            named[f"{i}.proj_l"], named[f"{i}.proj_w"] = block.talking_heads
    if parts.pool is not None:
        pool_layers = ("kv", "k_norm", "proj", "fc1", "fc2")
        named.update({f"pool.{name}": getattr(parts.pool, name) for name in pool_layers})
    return {id(module.weight): name for name, module in named.items() if module is not None}


def _weight(linears: tuple[nn.Linear, ...]) -> torch.Tensor:
    """The weights of linear layers that read one input, stacked by output (``[W_q; W_k; W_v]``)."""
    if len(linears) == 1:
        return linears[0].weight
    return torch.cat([m.weight for m in linears])


def propagate(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    outputs: dict[str, torch.Tensor],
    attentions: list[torch.Tensor],
    targets: torch.Tensor | None,
    grid: tuple[int, int],
    similarity: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Relevance:
    """Relevance from the target at the output back to the input tokens (``ViT_LRP.relprop``).

    ``inputs``/``outputs``: what :class:`~explainers.recorder.ActivationRecorder` kept for
    :func:`watch_list`; ``attentions``: the post-softmax maps of the same pass (the blocks', CaiT's
    class-attention blocks', then the attention pool's); ``grid``: the patch grid. ``Relevance.attention``
    has the recorded maps' shapes (CaiT: ``(B, H, P, P)`` then ``(B, H, 1, N)``; the capture lays them
    out). ``targets``: the class per image, or ``similarity = (e, r)``: the pooled embeddings ``(B, D)``
    and the reference ``(D,)`` whose cosine is explained.
    """
    parts = model_parts(model)
    with torch.no_grad():
        dtype = torch.promote_types(torch.float32, next(iter(inputs.values())).dtype)  # float32, or float64
        x = {k: v.detach().to(dtype) for k, v in inputs.items()}
        y = {k: v.detach().to(dtype) for k, v in outputs.items()}
        blocks, class_blocks = parts.blocks, parts.class_blocks
        last = len(blocks) - 1
        if "norm" in x:  # the last block's output
            tokens_out = x["norm"]
        elif class_blocks:  # [x_cls | patches] after the last class-attention block
            cls_out = _block_output(class_blocks[-1], x, y, f"c{len(class_blocks) - 1}")
            tokens_out = torch.cat([cls_out, x["c0.norm1"][:, 1:]], dim=1)
        else:
            tokens_out = _block_output(blocks[last], x, y, last)
        r_e, readout = _output_relevance(parts, x, similarity, targets, dtype)
        r = torch.zeros_like(tokens_out)
        pool_relevance = None
        if parts.pool is not None:
            pool_map = attentions[len(blocks) + len(class_blocks)].to(dtype)
            r_pooled, r_a = _pool_rule(parts.pool, x, y, pool_map, r_e)
            r[:, -r_pooled.shape[1] :] = r_pooled  # the pool reads the last M tokens
            pool_relevance = r_a.new_zeros(*r_a.shape[:-1], r.shape[1])
            pool_relevance[..., -r_a.shape[-1] :] = r_a
        else:
            final = y.get("norm", tokens_out)  # the tokens the readout pools (after the final norm)
            for (start, stop), r_part in zip(readout, r_e.split(final.shape[-1], dim=-1), strict=True):
                if stop == start + 1:
                    r[:, start] += r_part
                else:
                    r[:, start:stop] += _mean_rule(final[:, start:stop], r_part)
        attention_relevance = []  # from the last attention step back
        r_cls = None
        if class_blocks:  # the class token's relevance, then the patches' (unchanged by these blocks)
            r_cls, r, cls_out = r[:, :1], r[:, 1:], tokens_out[:, :1]
            for j in reversed(range(len(class_blocks))):
                block, name = class_blocks[j], f"c{j}"
                joined, cls_mid = _residual_inputs(block, x, name)  # norm1 reads [x_cls | patches]
                cls_in = joined[:, :1]
                r_cls = _mlp_rule(block, x, name, cls_mid, cls_out, r_cls)
                r_skip, r_attn = add_rule(cls_in, cls_mid - cls_in, r_cls)
                step = attentions[len(blocks) + j].to(dtype)
                r_joined, r_a = _class_attention_rule(block, x, y, step, name, r_attn)
                attention_relevance.append(r_a)
                r_cls, r = r_skip + r_joined[:, :1], r + r_joined[:, 1:]
                cls_out = cls_in
            tokens_out = x["c0.norm1"][:, 1:]  # the last patch block's output
        for i in reversed(range(len(blocks))):
            block = blocks[i]
            x_in, x_mid = _residual_inputs(block, x, i)
            r = _mlp_rule(block, x, i, x_mid, tokens_out, r)
            r_skip, r_attn = add_rule(x_in, x_mid - x_in, r)
            r_attn, r_a = _attention_rule(block, x, y, attentions[i].to(dtype), i, r_attn, grid)
            attention_relevance.append(r_a)
            r = r_skip + r_attn
            tokens_out = x_in
        embed = x.get("embed", tokens_out)
        patches = parts.patch_tokens(x["patches"], y["patches"]).to(dtype)
        prefix = [t.expand(len(patches), -1, -1).to(dtype) for t in parts.prefix]
        tokens = torch.cat([*prefix, patches], dim=1)
        r_tokens, r_position = add_rule(tokens, embed - tokens, r)  # token embeddings + position embedding
        token_relevance = r_tokens.sum(-1)
        if r_cls is not None:  # CaiT: the share of the cls_token parameter, where the class token joined
            token_relevance = torch.cat([r_cls.sum(-1), token_relevance], dim=1)
        return Relevance(
            tuple(reversed(attention_relevance)), token_relevance, r_position.sum((1, 2)), pool_relevance
        )


def _block_output(block: BlockParts, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], i: int | str
                  ) -> torch.Tensor:
    """``x_out = x_mid + s₂(fc2(h))`` of a block, from its recorded tensors."""
    return _residual_inputs(block, x, i)[1] + block.mlp_scale(y[f"{i}.fc2"])


def _mlp_rule(
    block: BlockParts, x: dict[str, torch.Tensor], i: int | str, x_mid: torch.Tensor, x_out: torch.Tensor,
    r: torch.Tensor,
) -> torch.Tensor:
    """Relevance at ``x_mid`` from ``r`` at ``x_out = x_mid + s₂(fc2(act(fc1(norm2(x_mid)))))``."""
    r_skip, r_mlp = add_rule(x_mid, x_out - x_mid, r)
    r_mlp = linear_rule(x[f"{i}.fc2"], block.fc2.weight, r_mlp)
    if block.gated:  # h = a ⊙ act(b): LRP-0 of the product gives each factor half
        r_mlp = torch.cat([r_mlp, r_mlp], dim=-1) / 2
    return r_skip + linear_rule(x[f"{i}.fc10"], _weight(block.fc1), r_mlp)


def _residual_inputs(
    block: BlockParts, x: dict[str, torch.Tensor], i: int | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_in, x_mid)``: the inputs of the pre-norms, or of the attention and the MLP after a post-norm."""
    if block.norm1 is None:
        return x[f"{i}.qkv0"], x[f"{i}.fc10"]
    return x[f"{i}.norm1"], x[f"{i}.norm2"]


def _output_relevance(
    parts: ModelParts,
    x: dict[str, torch.Tensor],
    similarity: tuple[torch.Tensor, torch.Tensor] | None,
    targets: torch.Tensor | None,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, tuple[tuple[int, int | None], ...]]:
    """``R_e`` at the pooled embedding and the token ranges it reads: the cosine's terms
    ``e_c r̂_c / ‖e‖`` for a similarity target, else the head's α1β0 rule from the one-hot target."""
    if similarity is not None:
        e, reference = (t.detach().to(dtype) for t in similarity)
        unit = reference / reference.norm().clamp_min(EPS)
        return e * unit / e.norm(dim=-1, keepdim=True).clamp_min(EPS), parts.embedding_readout
    head_in = torch.cat([x[f"head{j}"] for j in range(len(parts.heads))], dim=-1)
    weight = torch.cat([head.weight for head in parts.heads], dim=1)
    one_hot = torch.zeros(head_in.shape[0], weight.shape[0], device=head_in.device, dtype=head_in.dtype)
    one_hot.scatter_(1, targets[:, None].to(head_in.device), 1.0)
    return linear_rule(head_in, weight, one_hot), parts.readout


def _mean_rule(tokens: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """z-rule of ``e = mean_n t_n`` ``(B, M, D) → (B, D)``: ``R_n = (t_n / M) ⊙ (R ⊘ e)``."""
    return tokens * (safe_divide(r, tokens.mean(1)) / tokens.shape[1]).unsqueeze(1)


def _attention_rule(
    block: BlockParts, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], a: torch.Tensor, i: int,
    r: torch.Tensor, grid: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of the attention branch's input and of its attention map ``A`` (``Attention.relprop``)."""
    batch, tokens, _ = r.shape
    heads = block.num_heads
    r = linear_rule(x[f"{i}.proj"], block.proj.weight, r)
    r = r.reshape(batch, tokens, heads, -1).transpose(1, 2)  # b n (h d) -> b h n d
    qkv = y[f"{i}.qkv0"] if len(block.qkv) == 1 else torch.cat([y[f"{i}.qkv{j}"] for j in range(3)], dim=-1)
    q, k, v = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = y.get(f"{i}.q_norm", q), y.get(f"{i}.k_norm", k)  # the normalised q, k the scores read
    if block.talking_heads is None:
        r_a, r_v = matmul_rule(a, v, r)  # A·V
        r_s = r_a  # softmax: identity
    else:  # out = proj_w(A)·V, A = softmax(proj_l(S)); the head maps act on the last axis of (B, N, N, H)
        proj_l, proj_w = block.talking_heads
        r_mixed, r_v = matmul_rule(y[f"{i}.proj_w"].permute(0, 3, 1, 2), v, r)
        r_a = _head_map_rule(x[f"{i}.proj_w"], proj_w.weight, r_mixed.permute(0, 2, 3, 1))
        r_s = _head_map_rule(x[f"{i}.proj_l"], proj_l.weight, r_a).permute(0, 3, 1, 2)
        r_a = r_a.permute(0, 3, 1, 2)
    if block.rotate is None:
        r_q, r_kt = matmul_rule(q, k.transpose(-1, -2), r_s)  # the scale cancels in LRP-0
        r_k = r_kt.transpose(-1, -2)
    else:  # q' kʹᵀ with q' = rotate(q): LRP-0 through the product, then through each rotation

        def rotate(t: torch.Tensor) -> torch.Tensor:
            return block.rotate(t, grid)

        r_q, r_kt = matmul_rule(rotate(q), rotate(k).transpose(-1, -2), r_s)
        r_q, r_k = linear_map_rule(rotate, q, r_q), linear_map_rule(rotate, k, r_kt.transpose(-1, -2))
    r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(batch, tokens, -1)
    return linear_rule(x[f"{i}.qkv0"], _weight(block.qkv), r_qkv), r_a


def _head_map_rule(x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """LRP-0 of a talking-heads map ``z = x Wᵀ`` (bias left out) over the last (head) axis."""
    weight = weight.to(x.dtype)
    return linear_map_rule(lambda t: t @ weight.T, x, r)


def _class_attention_rule(
    block: BlockParts, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], a: torch.Tensor, name: str,
    r: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance ``(B, N, D)`` of ``x̂ = norm1([x_cls | patches])`` from ``r`` ``(B, 1, D)`` at a
    class-attention output ``proj(A v)``, and the relevance of ``A`` ``(B, H, 1, N)``: LRP-0 (halved) on
    ``A·v`` and ``q kᵀ``, the linear rule for ``proj`` and for ``q`` (the class token's row of ``x̂``), ``k``
    and ``v`` (every row)."""
    batch, heads = r.shape[0], block.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:  # b n (h d) -> b h n d
        return t.reshape(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)

    def merge(t: torch.Tensor) -> torch.Tensor:  # b h n d -> b n (h d)
        return t.transpose(1, 2).reshape(batch, t.shape[2], -1)

    r = split(linear_rule(x[f"{name}.proj"], block.proj.weight, r))
    q, k, v = (split(y[f"{name}.qkv{j}"]) for j in range(3))  # q: (B, D) from the class token alone
    r_a, r_v = matmul_rule(a, v, r)
    r_q, r_kt = matmul_rule(q, k.transpose(-1, -2), r_a)  # softmax: identity; the scale cancels
    r_kv = torch.cat([merge(r_kt.transpose(-1, -2)), merge(r_v)], dim=-1)
    r_joined = linear_rule(x[f"{name}.qkv1"], _weight(block.qkv[1:]), r_kv)
    r_cls = linear_rule(x[f"{name}.qkv0"], block.qkv[0].weight, merge(r_q)[:, 0])
    return torch.cat([r_joined[:, :1] + r_cls[:, None], r_joined[:, 1:]], dim=1), r_a


def _pool_rule(
    pool: PoolParts, x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], a: torch.Tensor, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance ``(B, M, D)`` of the M tokens an attention pool reads, from ``r`` ``(B, D)`` at its output,
    and the relevance of its attention map ``(B, H, 1, M)``."""
    pooled = y["pool.proj"]  # y = proj(A v), (B, 1, D)
    r_skip, r_mlp = add_rule(pooled, y["pool.fc2"], r[:, None])  # p = y + mlp(norm(y))
    r_mlp = linear_rule(x["pool.fc2"], pool.fc2.weight, r_mlp)
    r = r_skip + linear_rule(x["pool.fc1"], pool.fc1.weight, r_mlp)
    r = linear_rule(x["pool.proj"], pool.proj.weight, r)
    batch, heads = r.shape[0], pool.num_heads
    r = r.reshape(batch, 1, heads, -1).transpose(1, 2)  # (B, H, 1, d)
    kv = y["pool.kv"]
    tokens = kv.shape[1]
    k, v = kv.reshape(batch, tokens, 2, heads, -1).permute(2, 0, 3, 1, 4)
    k = y.get("pool.k_norm", k)
    r_a, r_v = matmul_rule(a, v, r)
    q = pool.query().to(k.dtype).expand(batch, -1, -1, -1)
    _, r_kt = matmul_rule(q, k.transpose(-1, -2), r_a)
    r_k = 2 * r_kt.transpose(-1, -2)  # q is a parameter: the keys take both halves of R_A
    r_kv = torch.stack([r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(batch, tokens, -1)
    return linear_rule(x["pool.kv"], pool.kv.weight, r_kv), r_a
