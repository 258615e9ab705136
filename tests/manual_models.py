"""timm models written out by hand, block by block, for the tests' independent computations.

Explicit softmax attention in every block and in SigLIP's attention pool (``kept`` lists receive every
map, so tests can differentiate with respect to it by autograd), never through ``explainers.capture``.
Tests check these forwards against the models' own logits.
"""

import torch


def attend(q, k, v, scale, kept):
    """``softmax(q kᵀ · scale) v``; the attention is appended to ``kept``."""
    attention = ((q * scale) @ k.transpose(-2, -1)).softmax(-1)
    kept.append(attention)
    return attention @ v


def vit_blocks(model, images):
    """A timm VisionTransformer's blocks (NaFlexViT's too, on images): ``(block tokens, attentions)``."""
    attentions, tokens = [], []
    if hasattr(model, "embeds"):  # NaFlexViT: patches + position embedding + prefix tokens
        x = model.embeds(images)[0]
    else:
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
    for blk in model.blocks:
        y = blk.norm1(x)
        b, n, c = y.shape
        h = blk.attn.num_heads
        q, k, v = blk.attn.qkv(y).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        out = attend(q, k, v, blk.attn.scale, attentions).transpose(1, 2).reshape(b, n, c)
        x = x + blk.ls1(blk.attn.proj(out))
        x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        tokens.append(x)
    return tokens, attentions


def attention_pool(model, x, kept):
    """SigLIP's AttentionPoolLatent on the normed tokens ``x``; its attention is appended to ``kept``."""
    p = model.attn_pool
    tokens = x if model.pool_include_prefix else x[:, model.num_prefix_tokens :]
    b, n, c = tokens.shape
    q = p.q(p.latent).reshape(1, 1, p.num_heads, p.head_dim).transpose(1, 2)
    k, v = p.kv(tokens).reshape(b, n, 2, p.num_heads, p.head_dim).permute(2, 0, 3, 1, 4)
    out = p.proj(attend(q, k, v, p.scale, kept).transpose(1, 2).reshape(b, 1, c))
    return (out + p.mlp(p.norm(out)))[:, 0]


def classify(model, features):
    """The classifier; distilled DeiT averages its two heads (on the same features here)."""
    if getattr(model, "head_dist", None) is not None:
        return (model.head(features) + model.head_dist(features)) / 2
    return model.head(features)


def head(model, x, pool_kept=None, pre_logits=False):
    """The readout of normed tokens ``x``: distilled DeiT's two tokens, the attention pool (its attention
    appended to ``pool_kept``), the mean of the patch tokens, or the class token."""
    if getattr(model, "head_dist", None) is not None:
        return (model.head(x[:, 0]) + model.head_dist(x[:, 1])) / 2
    if model.attn_pool is not None:
        x = attention_pool(model, x, [] if pool_kept is None else pool_kept)
    elif model.global_pool == "avg":
        x = x[:, model.num_prefix_tokens :].mean(1)
    else:
        x = x[:, 0]
    x = model.fc_norm(x)
    return x if pre_logits else classify(model, x)


def vit(model, images):
    """``(logits, block attentions, pool attentions, block tokens)`` of a timm VisionTransformer."""
    tokens, attentions = vit_blocks(model, images)
    pool = []
    return head(model, model.norm(tokens[-1]), pool), attentions, pool, tokens


def cait(model, images):
    """CaiT: talking-heads patch blocks, then class attention from the late class token.

    ``(logits, patch-block attentions (softmax before proj_w), class attentions, step tokens)``; a step's
    tokens are the patches after a patch block, ``[class token, patches]`` after a class-attention block.
    """
    patches, classes, tokens = [], [], []
    x = model.patch_embed(images) + model.pos_embed
    for blk in model.blocks:
        y = blk.norm1(x)
        b, n, c = y.shape
        a = blk.attn
        q, k, v = a.qkv(y).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        scores = a.proj_l(((q * a.scale) @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        softmax = scores.softmax(-1)
        patches.append(softmax)
        mixed = a.proj_w(softmax.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + blk.gamma_1 * a.proj((mixed @ v).transpose(1, 2).reshape(b, n, c))
        x = x + blk.gamma_2 * blk.mlp(blk.norm2(x))
        tokens.append(x)
    cls = model.cls_token.expand(x.shape[0], -1, -1)
    for blk in model.blocks_token_only:
        u = blk.norm1(torch.cat((cls, x), dim=1))
        b, n, c = u.shape
        a = blk.attn
        h = a.num_heads
        q = a.q(u[:, :1]).reshape(b, 1, h, c // h).transpose(1, 2)
        k = a.k(u).reshape(b, n, h, c // h).transpose(1, 2)
        v = a.v(u).reshape(b, n, h, c // h).transpose(1, 2)
        out = a.proj(attend(q, k, v, a.scale, classes).transpose(1, 2).reshape(b, 1, c))
        cls = cls + blk.gamma_1 * out
        cls = cls + blk.gamma_2 * blk.mlp(blk.norm2(cls))
        tokens.append(torch.cat((cls, x), dim=1))
    return model.head(model.norm(tokens[-1])[:, 0]), patches, classes, tokens
