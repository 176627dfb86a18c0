"""Independent references: attention written as its explicit closed form, with masks
built from their definitions. Nothing here imports energy_attn internals beyond
the public Mask constructors used to build the *inputs*."""
import jax
import jax.numpy as jnp
import numpy as np


def dense_allowed(b, tq, tk, *, causal=False, offset=None, window=None, kv_valid=None,
                  q_valid=None, q_seg=None, kv_seg=None):
    """(B, 1, Tq, Tk) boolean mask built directly from the definitions."""
    off = tk - tq if offset is None else offset
    qpos = off + np.arange(tq)[:, None]
    kpos = np.arange(tk)[None, :]
    ok = np.ones((b, 1, tq, tk), bool)
    if causal:
        ok &= (kpos <= qpos)[None, None]
    if window is not None:
        near = (qpos - kpos < window) if causal else (np.abs(qpos - kpos) < window)
        ok &= near[None, None]
    if kv_valid is not None:
        ok &= np.asarray(kv_valid)[:, None, None, :]
    if q_valid is not None:
        ok &= np.asarray(q_valid)[:, None, :, None]
    if q_seg is not None:
        kv_seg = q_seg if kv_seg is None else kv_seg
        ok &= np.asarray(q_seg)[:, None, :, None] == np.asarray(kv_seg)[:, None, None, :]
    return ok


def _heads(x, h):
    return jnp.repeat(x, h // x.shape[2], axis=2)


def raw_scores(q, k, beta, bias=None):
    s = beta * jnp.einsum("bqhd,bkhd->bhqk", q, _heads(k, q.shape[2]))
    return s if bias is None else s + bias


def softmax_attention(q, k, v, allowed, beta, bias=None):
    s = raw_scores(q, k, beta, bias)
    s = jnp.where(allowed, s, -1e30)
    w = jax.nn.softmax(s, axis=-1) * allowed
    w = jnp.where(allowed.any(-1, keepdims=True), w, 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", w, _heads(v, q.shape[2]))


def softmax_log_partition(q, k, allowed, beta, bias=None):
    s = jnp.where(allowed, raw_scores(q, k, beta, bias), -jnp.inf)
    m = jnp.max(s, -1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0)
    lse = jnp.log(jnp.sum(jnp.exp(s - m), -1)) + m[..., 0]
    return jnp.where(allowed.any(-1), lse, 0.0).sum()


def sigmoid_attention(q, k, v, allowed, beta, bias_b):
    w = jax.nn.sigmoid(raw_scores(q, k, beta) + bias_b) * allowed
    return jnp.einsum("bhqk,bkhd->bqhd", w, _heads(v, q.shape[2]))


def linear_attention(fq, fk, v, allowed, eps=1e-6):
    kappa = jnp.einsum("bqhf,bkhf->bhqk", fq, _heads(fk, fq.shape[2])) * allowed
    num = jnp.einsum("bhqk,bkhd->bqhd", kappa, _heads(v, fq.shape[2]))
    return num / (kappa.sum(-1).transpose(0, 2, 1)[..., None] + eps)


def distance_attention(q, k, v, allowed, beta):
    kk = _heads(k, q.shape[2])
    d2 = jnp.sum((q[:, :, None] - kk[:, None]) ** 2, -1).transpose(0, 3, 1, 2)  # (B,H,Tq,Tk)
    s = jnp.where(allowed, -beta * d2, -1e30)
    w = jax.nn.softmax(s, -1) * allowed
    w = jnp.where(allowed.any(-1, keepdims=True), w, 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", w, _heads(v, q.shape[2]))


def sparsemax(z, allowed):
    """Martins & Astudillo 2016, sort-based closed form; masked entries excluded."""
    n_valid = allowed.sum(-1, keepdims=True)
    z = jnp.where(allowed, z, jnp.min(jnp.where(allowed, z, 0), -1, keepdims=True) - 1e4)
    zs = -jnp.sort(-z, axis=-1)
    k = jnp.arange(1, z.shape[-1] + 1)
    csum = jnp.cumsum(zs, -1)
    support = (1 + k * zs > csum) & (k <= n_valid)
    kz = support.sum(-1, keepdims=True)
    tau = (jnp.take_along_axis(csum, jnp.maximum(kz - 1, 0), -1) - 1) / jnp.maximum(kz, 1)
    return jnp.where(allowed, jnp.maximum(z - tau, 0), 0.0)


def entmax15(z, allowed):
    """Peters et al. 2019, exact sort-based 1.5-entmax; masked entries excluded."""
    n_valid = allowed.sum(-1, keepdims=True)
    x = jnp.where(allowed, z / 2, jnp.min(jnp.where(allowed, z / 2, 0), -1, keepdims=True) - 1e4)
    xs = -jnp.sort(-x, axis=-1)
    k = jnp.arange(1, x.shape[-1] + 1)
    mean = jnp.cumsum(xs, -1) / k
    mean_sq = jnp.cumsum(xs ** 2, -1) / k
    delta = (1 - k * (mean_sq - mean ** 2)) / k
    pos = delta > 0   # where-guarded sqrt: its gradient at 0 would be inf
    tau = mean - jnp.where(pos, jnp.sqrt(jnp.where(pos, delta, 1.0)), 0.0)
    support = (tau <= xs) & (k <= n_valid)
    kz = support.sum(-1, keepdims=True)
    tau_star = jnp.take_along_axis(tau, jnp.maximum(kz - 1, 0), -1)
    return jnp.where(allowed, jnp.maximum(x - tau_star, 0) ** 2, 0.0)


def entmax_attention(q, k, v, allowed, beta, alpha):
    s = raw_scores(q, k, beta)
    p = sparsemax(s, allowed) if alpha == 2 else entmax15(s, allowed)
    p = jnp.where(allowed.any(-1, keepdims=True), p, 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", p, _heads(v, q.shape[2]))
