"""A plain float64 forward pass of a small timm ViT and LRP written out step by step, one image at a time.

Shares no code with ``explainers``: the forward reads the state dict (not the modules), every layer is
spelled out (LayerNorm, softmax attention, GELU MLP, mean pool, attention pool), and the relevance goes
back through the same steps in a loop with the rules of Chefer, Gur & Wolf 2021 (``layers_ours.py``):
linear α1β0 without bias, LRP-0 on both attention products (halved), identity through norms, softmax
and GELU, renormalised residual sums; the z-rule through the mean pool; in the attention pool the latent
query is a parameter, so the keys take all of the scores' relevance.

:func:`cait_forward_and_relevance` does the same for CaiT: talking-heads patch blocks (the head-mixing maps
``proj_l``, ``proj_w`` get LRP-0 along the head axis, bias left out), then class-attention blocks in which
the class token (a parameter) joins; its relevance there is reported as token 0.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-9


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    den = b + EPS
    den = den + (den == 0) * EPS
    return a / den * (b != 0)


def _ln(x, w, b, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def lin_rule(x, w, r):
    """α=1, β=0 for ``z = x wᵀ`` (rows of x are tokens): positive contributions share each output's R."""
    wp, wn, xp, xn = w.clamp(min=0), w.clamp(max=0), x.clamp(min=0), x.clamp(max=0)
    s = _div(r, xp @ wp.T + xn @ wn.T)
    return xp * (s @ wp) + xn * (s @ wn)


def matmul_rule(a, b, r):
    s = _div(r, a @ b)
    return a * (s @ b.transpose(-1, -2)) / 2, b * (a.transpose(-1, -2) @ s) / 2


def add_rule(x, y, r):
    s = _div(r, x + y)
    rx, ry = x * s, y * s
    sx, sy, total = rx.sum(), ry.sum(), r.sum()
    norm = sx.abs() + sy.abs()
    return rx * _div(_div(sx.abs(), norm) * total, sx), ry * _div(_div(sy.abs(), norm) * total, sy)



def _through_mlp_and_proj(s_, p, b, r, heads):
    """A pre-norm block's MLP residual, its attention residual and ``proj``: ``(R_skip, R_o per head)``."""
    r_skip, r_mlp = add_rule(s_["x_mid"], s_["x_out"] - s_["x_mid"], r)
    r_g = lin_rule(s_["g"], p[b + "mlp.fc2.weight"], r_mlp)
    r = r_skip + lin_rule(s_["h2"], p[b + "mlp.fc1.weight"], r_g)
    r_skip, r_branch = add_rule(s_["x_in"], s_["x_mid"] - s_["x_in"], r)
    r_o = lin_rule(s_["o"], p[b + "attn.proj.weight"], r_branch)
    return r_skip, r_o.reshape(r.shape[0], heads, -1).transpose(0, 1)

def forward_and_relevance(model, image, target, reference=None):
    """``(logits or embedding, token relevance (N,), position relevance, [R_A per block], R_pool)`` for one
    image ``(3, H, W)``; ``reference``: explain ``cos(e, reference)`` instead of the class ``target``."""
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    heads = model.blocks[0].attn.num_heads
    depth = len(model.blocks)
    size = model.patch_embed.patch_size[0]
    # patch embedding: a convolution with kernel = stride = patch size, written as a matrix product
    w = p["patch_embed.proj.weight"]
    d = w.shape[0]
    c, hh, ww = image.shape
    cols = image.double().reshape(c, hh // size, size, ww // size, size).permute(1, 3, 0, 2, 4)
    cols = cols.reshape(-1, c * size**2)
    patches = cols @ w.reshape(d, -1).T + p["patch_embed.proj.bias"]
    prefix = [p[n][0] for n in ("cls_token", "reg_token") if n in p]
    tokens = torch.cat([*prefix, patches])
    x = tokens + p["pos_embed"][0] if "pos_embed" in p else tokens
    embed = x
    saved = []
    for i in range(depth):
        b = f"blocks.{i}."
        x_in = x
        h = _ln(x, p[b + "norm1.weight"], p[b + "norm1.bias"])
        qkv = h @ p[b + "attn.qkv.weight"].T + p[b + "attn.qkv.bias"]
        n = qkv.shape[0]
        q, k, v = qkv.reshape(n, 3, heads, -1).permute(1, 2, 0, 3)  # (H, N, d) each
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        o = (a @ v).transpose(0, 1).reshape(n, -1)
        x = x + o @ p[b + "attn.proj.weight"].T + p[b + "attn.proj.bias"]
        x_mid = x
        h2 = _ln(x, p[b + "norm2.weight"], p[b + "norm2.bias"])
        f1 = h2 @ p[b + "mlp.fc1.weight"].T + p[b + "mlp.fc1.bias"]
        g = _gelu(f1)
        x = x + g @ p[b + "mlp.fc2.weight"].T + p[b + "mlp.fc2.bias"]
        saved.append(dict(x_in=x_in, h=h, q=q, k=k, v=v, a=a, o=o, x_mid=x_mid, h2=h2, g=g, x_out=x))
    final = _ln(x, p["norm.weight"], p["norm.bias"]) if "norm.weight" in p else x
    first = model.num_prefix_tokens if not getattr(model, "pool_include_prefix", False) else 0
    pool = None
    if "attn_pool.latent" in p:
        t = final[first:]
        m = t.shape[0]
        ql = p["attn_pool.latent"][0] @ p["attn_pool.q.weight"].T + p["attn_pool.q.bias"]  # (1, D)
        ql = ql.reshape(1, heads, -1).transpose(0, 1)  # (H, 1, d)
        kv = t @ p["attn_pool.kv.weight"].T + p["attn_pool.kv.bias"]
        kp, vp = kv.reshape(m, 2, heads, -1).permute(1, 2, 0, 3)  # (H, M, d)
        ap = torch.softmax(ql @ kp.transpose(-1, -2) / math.sqrt(ql.shape[-1]), dim=-1)
        op = (ap @ vp).transpose(0, 1).reshape(1, -1)
        yp = op @ p["attn_pool.proj.weight"].T + p["attn_pool.proj.bias"]
        hp = _ln(yp, p["attn_pool.norm.weight"], p["attn_pool.norm.bias"])
        f1p = hp @ p["attn_pool.mlp.fc1.weight"].T + p["attn_pool.mlp.fc1.bias"]
        gp = _gelu(f1p)
        mp = gp @ p["attn_pool.mlp.fc2.weight"].T + p["attn_pool.mlp.fc2.bias"]
        pooled = (yp + mp)[0]
        pool = dict(t=t, q=ql, k=kp, v=vp, a=ap, o=op, y=yp, h=hp, g=gp, m=mp)
    elif model.global_pool == "avg":
        pooled = final[first:].mean(0)
    else:
        pooled = final[0]
    e = _ln(pooled, p["fc_norm.weight"], p["fc_norm.bias"]) if "fc_norm.weight" in p else pooled
    if reference is not None:  # R_c = e_c r̂_c / ‖e‖, Σ_c R_c = cos(e, r)
        out = e
        r_e = e * (reference.double() / reference.double().norm()) / e.norm()
    else:
        out = e @ p["head.weight"].T + p["head.bias"]
        one_hot = torch.zeros_like(out)
        one_hot[target] = 1.0
        r_e = lin_rule(e[None], p["head.weight"], one_hot[None])[0]
    # readout: relevance of the final tokens (fc_norm and the final norm are identities for relevance)
    r = torch.zeros_like(x)
    r_pool = None
    if pool is not None:
        pp = "attn_pool."
        r_skip, r_mlp = add_rule(pool["y"], pool["m"], r_e[None])
        r_g = lin_rule(pool["g"], p[pp + "mlp.fc2.weight"], r_mlp)
        r_y = r_skip + lin_rule(pool["h"], p[pp + "mlp.fc1.weight"], r_g)
        r_o = lin_rule(pool["o"], p[pp + "proj.weight"], r_y).reshape(1, heads, -1).transpose(0, 1)
        r_pool, r_v = matmul_rule(pool["a"], pool["v"], r_o)  # (H, 1, M), (H, M, d)
        s = _div(r_pool, pool["q"] @ pool["k"].transpose(-1, -2))  # scores = q kᵀ: q is a parameter
        r_k = pool["k"] * (s.transpose(-1, -2) @ pool["q"])
        m = r_k.shape[1]
        r_kv = torch.stack([r_k, r_v]).permute(2, 0, 1, 3).reshape(m, -1)
        r[first:] = lin_rule(pool["t"], p[pp + "kv.weight"], r_kv)
    elif model.global_pool == "avg":
        t = final[first:]
        r[first:] = t / t.shape[0] * _div(r_e, t.mean(0))
    else:
        r[0] = r_e
    attention = []
    for i in reversed(range(depth)):
        b, s_ = f"blocks.{i}.", saved[i]
        n = r.shape[0]
        r_skip, r_o = _through_mlp_and_proj(s_, p, b, r, heads)
        r_a, r_v = matmul_rule(s_["a"], s_["v"], r_o)
        r_q, r_kt = matmul_rule(s_["q"], s_["k"].transpose(-1, -2), r_a)
        r_qkv = torch.stack([r_q, r_kt.transpose(-1, -2), r_v]).permute(2, 0, 1, 3).reshape(n, -1)
        r = r_skip + lin_rule(s_["h"], p[b + "attn.qkv.weight"], r_qkv)
        attention.append(r_a)
    r_tokens, r_position = add_rule(tokens, embed - tokens, r)
    return out, r_tokens.sum(-1), r_position.sum(), attention[::-1], r_pool


def _heads(x, w, b=None):
    """A linear map across the head axis 0 of ``x`` ``(H, N, M)``: ``z[g] = Σ_h w[g, h] x[h] (+ b[g])``."""
    z = torch.einsum("hij,gh->gij", x, w)
    return z if b is None else z + b[:, None, None]


def heads_rule(x, w, r):
    """LRP-0 of ``z = Σ_h w[g, h] x[h]`` (bias left out): ``R_x[h] = x[h] Σ_g w[g, h] R[g] / z[g]``."""
    return x * torch.einsum("gij,gh->hij", _div(r, _heads(x, w)), w)


def cait_forward_and_relevance(model, image, target):
    """``(logits, token relevance (1 + P,), position relevance, [R_A per attention step])`` of a timm CaiT
    (``global_pool='token'``) for one image; token 0 is the class token's parameter."""
    p = {k: v.detach().double() for k, v in model.state_dict().items()}
    heads = model.blocks[0].attn.num_heads
    size = model.patch_embed.patch_size[0]
    w = p["patch_embed.proj.weight"]
    d = w.shape[0]
    c, hh, ww = image.shape
    cols = image.double().reshape(c, hh // size, size, ww // size, size).permute(1, 3, 0, 2, 4)
    patches = cols.reshape(-1, c * size**2) @ w.reshape(d, -1).T + p["patch_embed.proj.bias"]
    x = patches + p["pos_embed"][0]  # the class token is not there yet
    embed = x
    saved = []
    for i in range(len(model.blocks)):  # talking heads: S = q kᵀ/√d, A = softmax(proj_l(S)), proj_w(A) v
        b = f"blocks.{i}."
        x_in = x
        h = _ln(x, p[b + "norm1.weight"], p[b + "norm1.bias"])
        qkv = h @ p[b + "attn.qkv.weight"].T + p[b + "attn.qkv.bias"]
        n = qkv.shape[0]
        q, k, v = qkv.reshape(n, 3, heads, -1).permute(1, 2, 0, 3)  # (H, N, d) each
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        a = torch.softmax(_heads(scores, p[b + "attn.proj_l.weight"], p[b + "attn.proj_l.bias"]), dim=-1)
        mixed = _heads(a, p[b + "attn.proj_w.weight"], p[b + "attn.proj_w.bias"])
        o = (mixed @ v).transpose(0, 1).reshape(n, -1)
        x = x + p[b + "gamma_1"] * (o @ p[b + "attn.proj.weight"].T + p[b + "attn.proj.bias"])
        x_mid = x
        h2 = _ln(x, p[b + "norm2.weight"], p[b + "norm2.bias"])
        g = _gelu(h2 @ p[b + "mlp.fc1.weight"].T + p[b + "mlp.fc1.bias"])
        x = x + p[b + "gamma_2"] * (g @ p[b + "mlp.fc2.weight"].T + p[b + "mlp.fc2.bias"])
        saved.append(dict(x_in=x_in, h=h, q=q, k=k, v=v, s=scores, a=a, mixed=mixed, o=o, x_mid=x_mid, h2=h2,
                          g=g, x_out=x))
    cls = p["cls_token"][0]  # (1, D)
    class_saved = []
    for j in range(len(model.blocks_token_only)):  # q from the class token, k and v from [cls | patches]
        b = f"blocks_token_only.{j}."
        h = _ln(torch.cat([cls, x]), p[b + "norm1.weight"], p[b + "norm1.bias"])
        n = h.shape[0]
        q = (h[:1] @ p[b + "attn.q.weight"].T + p[b + "attn.q.bias"]).reshape(1, heads, -1).transpose(0, 1)
        k = (h @ p[b + "attn.k.weight"].T + p[b + "attn.k.bias"]).reshape(n, heads, -1).transpose(0, 1)
        v = (h @ p[b + "attn.v.weight"].T + p[b + "attn.v.bias"]).reshape(n, heads, -1).transpose(0, 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (H, 1, N)
        o = (a @ v).transpose(0, 1).reshape(1, -1)
        cls_in = cls
        cls = cls + p[b + "gamma_1"] * (o @ p[b + "attn.proj.weight"].T + p[b + "attn.proj.bias"])
        cls_mid = cls
        h2 = _ln(cls, p[b + "norm2.weight"], p[b + "norm2.bias"])
        g = _gelu(h2 @ p[b + "mlp.fc1.weight"].T + p[b + "mlp.fc1.bias"])
        cls = cls + p[b + "gamma_2"] * (g @ p[b + "mlp.fc2.weight"].T + p[b + "mlp.fc2.bias"])
        class_saved.append(dict(cls_in=cls_in, h=h, q=q, k=k, v=v, a=a, o=o, cls_mid=cls_mid, h2=h2, g=g,
                                cls_out=cls))
    e = _ln(torch.cat([cls, x]), p["norm.weight"], p["norm.bias"])[0]
    out = e @ p["head.weight"].T + p["head.bias"]
    one_hot = torch.zeros_like(out)
    one_hot[target] = 1.0
    r_cls = lin_rule(e[None], p["head.weight"], one_hot[None])  # (1, D): the class token is read
    r = torch.zeros_like(x)
    attention = []
    for j in reversed(range(len(class_saved))):
        b, s_ = f"blocks_token_only.{j}.", class_saved[j]
        r_skip, r_mlp = add_rule(s_["cls_mid"], s_["cls_out"] - s_["cls_mid"], r_cls)
        r_g = lin_rule(s_["g"], p[b + "mlp.fc2.weight"], r_mlp)
        r_cls = r_skip + lin_rule(s_["h2"], p[b + "mlp.fc1.weight"], r_g)
        r_skip, r_branch = add_rule(s_["cls_in"], s_["cls_mid"] - s_["cls_in"], r_cls)
        r_o = lin_rule(s_["o"], p[b + "attn.proj.weight"], r_branch).reshape(1, heads, -1).transpose(0, 1)
        r_a, r_v = matmul_rule(s_["a"], s_["v"], r_o)
        r_q, r_kt = matmul_rule(s_["q"], s_["k"].transpose(-1, -2), r_a)
        n = s_["h"].shape[0]
        r_h = lin_rule(s_["h"], p[b + "attn.k.weight"], r_kt.transpose(-1, -2).transpose(0, 1).reshape(n, -1))
        r_h = r_h + lin_rule(s_["h"], p[b + "attn.v.weight"], r_v.transpose(0, 1).reshape(n, -1))
        r_h[:1] += lin_rule(s_["h"][:1], p[b + "attn.q.weight"], r_q.transpose(0, 1).reshape(1, -1))
        r_cls, r = r_skip + r_h[:1], r + r_h[1:]
        attention.append(r_a)
    for i in reversed(range(len(saved))):
        b, s_ = f"blocks.{i}.", saved[i]
        n = r.shape[0]
        r_skip, r_o = _through_mlp_and_proj(s_, p, b, r, heads)
        r_mixed, r_v = matmul_rule(s_["mixed"], s_["v"], r_o)
        r_a = heads_rule(s_["a"], p[b + "attn.proj_w.weight"], r_mixed)
        r_s = heads_rule(s_["s"], p[b + "attn.proj_l.weight"], r_a)  # softmax: identity
        r_q, r_kt = matmul_rule(s_["q"], s_["k"].transpose(-1, -2), r_s)
        r_qkv = torch.stack([r_q, r_kt.transpose(-1, -2), r_v]).permute(2, 0, 1, 3).reshape(n, -1)
        r = r_skip + lin_rule(s_["h"], p[b + "attn.qkv.weight"], r_qkv)
        attention.append(r_a)
    r_tokens, r_position = add_rule(patches, embed - patches, r)
    tokens = torch.cat([r_cls.sum(-1), r_tokens.sum(-1)])
    return out, tokens, r_position.sum(), attention[::-1]
