"""The Energy Transformer (Hoover et al. 2023, arXiv 2302.07253): tokens descend one energy.

Pure energy functions first (HAMUX style: small scalar functions, everything else
is `jax.grad`), then one NNX layer that holds their parameters.

    x  (B, T, D)   token states                 g = ∂L/∂x = LayerNorm(x)   (activations)
    L(x)  = D·γ·sqrt(mean((x − x̄)²) + eps) + δ·x                        (Lagrangian, per token)
    E_ATT = −Σ_h (1/β_h) Σ_C log Σ_{B≠C} exp(β_h K_hB·Q_hC),  K = W_K g, Q = W_Q g  (no values)
    E_HN  = −½ Σ_C Σ_μ relu(ξ_μ·g_C)²                        (Hopfield net: replaces the MLP)
    x ← x − α ∂E/∂g,   E = E_ATT + E_HN,   T steps of ONE weight-tied block.

Why it descends: dE/dt = (∂E/∂g)ᵀ (∂g/∂x) dx/dt = −(∂E/∂g)ᵀ ∇²L (∂E/∂g) ≤ 0, because
L is convex for γ > 0 (a norm of the centred x plus a linear term), so ∇²L ⪰ 0.

Causal LMs. With `causal=True` the attention rows only see keys B < C. The *plain*
gradient ∂E_ATT/∂g_C is still not causal: it has a query term (C attends to B < C)
and a key term (later queries D > C attend to C), and the key term pulls future
tokens into the update of token C. So the causal update holds the keys fixed
(a partial derivative in the query slot, E_ATT(g_query, g_key) at g_query = g_key = g;
not `stop_gradient`, which would also cut the keys out of the training gradient):
then ∂/∂g_C reaches only Q_C, i.e. the update of token C is
∂E_C/∂g_C, the gradient of C's own row energy, which depends on tokens ≤ C only.
Consequence: the causal dynamics are no longer exact descent of one global energy
(each token descends its own row energy with the past held fixed, a "game", not
a potential); the reported energy is still the true E, it just need not decrease
monotonically. The non-causal block (`causal=False`) is exact descent.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from .masks import Mask, causal as causal_mask, explicit
from .primitives import logsumexp, scores, source
from .registry import register_energy

Array = Any


# ------------------------------------------------------------- pure energies


def layernorm_lagrangian(x, gamma, delta, *, eps: float = 1e-5):
    """L(x) per token, (..., D) -> (...): D·γ·sqrt(var(x) + eps) + δ·x.

    γ is a scalar (a per-feature γ would make g = γ ⊙ LN(x) the gradient of no
    scalar function); ∂L/∂x is exactly LayerNorm(x) with scale γ and bias δ.
    """
    d = x.shape[-1]
    xc = x - jnp.mean(x, axis=-1, keepdims=True)
    return d * gamma * jnp.sqrt(jnp.mean(xc * xc, axis=-1) + eps) + x @ delta


def activations(x, gamma, delta, *, eps: float = 1e-5):
    """g = ∂L/∂x (= LayerNorm(x)), by jax.grad. Tokens are independent, so the
    gradient of the summed Lagrangian is every token's own gradient."""
    return jax.grad(lambda x: layernorm_lagrangian(x, gamma, delta, eps=eps).sum())(x)


def per_head_beta(beta, num_heads: int, head_dim: int):
    """(H,) inverse temperatures: default 1/sqrt(head_dim), a scalar, or one per head."""
    beta = head_dim ** -0.5 if beta is None else beta
    return jnp.broadcast_to(jnp.asarray(beta, jnp.float32), (num_heads,))


def with_causal(mask: Mask | None) -> Mask:
    """`mask` & causal (keys at or before the query; the diagonal goes in `_pair_mask`)."""
    return causal_mask() if mask is None else mask & causal_mask()


def _pair_mask(tq: int, tk: int, mask: Mask | None) -> Mask:
    """`mask` & B ≠ C: ET attention excludes the diagonal (a token is not its own key).
    Query i sits at key position offset + i (the mask's offset: Tk − Tq, or a KV-cache index)."""
    offset = Mask().offset(tq, tk) if mask is None else mask.offset(tq, tk)
    off_diagonal = explicit(jnp.arange(tk)[None, :] != (offset + jnp.arange(tq))[:, None])
    return off_diagonal if mask is None else mask & off_diagonal


def project(g, w):
    """(B, T, D) tokens, (H, Y, D) weights -> (B, T, H, Y) per-head queries or keys."""
    return jnp.einsum("btd,hyd->bthy", g, w)


def attention_energy(g, wq, wk, *, beta=None, mask: Mask | None = None, key_tokens=None):
    """E_ATT per batch element, (B,): −Σ_h (1/β_h) Σ_C log Σ_{B≠C, allowed} exp(β_h K_hB·Q_hC).

    g: (B, T, D) activations; wq, wk: (H, Y, D). mask: extra restrictions (an
    `ea.causal()` for B < C, `ea.segments(ids)` for packed documents). Rows with no
    allowed key (the first token of a causal sequence) contribute 0.
    key_tokens: the activations the keys are computed from (default g); the causal
    update differentiates in g with the keys' slot held fixed.
    """
    h, y, _ = wq.shape
    b = per_head_beta(beta, h, y)
    q = project(g, wq)
    k = project(g if key_tokens is None else key_tokens, wk)
    s = scores(q, k, mask=_pair_mask(q.shape[1], k.shape[1], mask), beta=b)
    lse = logsumexp(s, axis=-1)          # (B, H, T); 0 on rows that see no key
    return -jnp.sum(lse / b[:, None], axis=(1, 2))


def hopfield_energy(g, xi):
    """E_HN per batch element, (B,): −½ Σ_C Σ_μ relu(ξ_μ·g_C)². xi: (M, D) memories."""
    h = jax.nn.relu(jnp.einsum("btd,md->btm", g, xi))
    return -0.5 * jnp.sum(h * h, axis=(1, 2))


class ETParams(NamedTuple):
    """Everything the energy depends on (a pytree: differentiable, scan-friendly)."""
    wq: Array      # (H, Y, D)
    wk: Array      # (H, Y, D)
    xi: Array      # (M, D) Hopfield memories
    gamma: Array   # () LayerNorm scale (keep > 0: it makes L convex)
    delta: Array   # (D,) LayerNorm bias


def energy_terms(g, p: ETParams, *, beta=None, mask: Mask | None = None, key_tokens=None):
    """{'attention', 'hopfield', 'total'}, each (B,), at activations g."""
    e_att = attention_energy(g, p.wq, p.wk, beta=beta, mask=mask, key_tokens=key_tokens)
    e_hn = hopfield_energy(g, p.xi)
    return {"attention": e_att, "hopfield": e_hn, "total": e_att + e_hn}


def energy(g, p: ETParams, *, beta=None, mask: Mask | None = None):
    """E(g) = E_ATT(g) + E_HN(g), (B,)."""
    return energy_terms(g, p, beta=beta, mask=mask)["total"]


def energy_and_update(x, p: ETParams, *, beta=None, mask: Mask | None = None,
                      causal: bool = False, eps: float = 1e-5):
    """(energy terms at x, ∂E/∂g): the terms (each (B,)) and the token update direction.

    causal: adds the causal mask (B < C) and holds the keys' slot fixed, so token C's
    update is ∂E_C/∂g_C, the gradient of its own row energy only; see the module
    docstring for why the plain gradient is not causal and what this costs.
    """
    if causal:
        mask = with_causal(mask)
    g = activations(x, p.gamma, p.delta, eps=eps)

    def total(g_query, g_key):
        terms = energy_terms(g_query, p, beta=beta, mask=mask, key_tokens=g_key)
        return terms["total"].sum(), terms      # batch elements are independent: sum is fine

    # Causal: the partial derivative in the query slot, at (g, g). Not stop_gradient(keys):
    # that would also cut the keys out of the *training* gradient (d update_C / d g_B).
    if causal:
        (_, terms), dEdg = jax.value_and_grad(total, argnums=0, has_aux=True)(g, g)
    else:
        (_, terms), dEdg = jax.value_and_grad(lambda g: total(g, g), has_aux=True)(g)
    return terms, dEdg


def descend(x, p: ETParams, *, steps: int = 12, alpha: float = 0.1, beta=None,
            mask: Mask | None = None, causal: bool = False, eps: float = 1e-5,
            return_states: bool = False):
    """Run x ← x − α ∂E/∂g for `steps` steps. Returns (final x, trajectory) where the
    trajectory holds each energy term at every state, shape (steps + 1, B), and with
    `return_states` also the state before each step, "x": (steps, B, T, D)."""
    def step(x, _):
        terms, dEdg = energy_and_update(x, p, beta=beta, mask=mask, causal=causal, eps=eps)
        return x - alpha * dEdg, (terms, x) if return_states else terms

    # lax.scan: the one weight-tied step is traced and compiled once, however many steps.
    x_final, traj = jax.lax.scan(step, x, None, length=steps)
    traj, states = traj if return_states else (traj, None)
    last = energy_terms(activations(x_final, p.gamma, p.delta, eps=eps), p, beta=beta,
                        mask=with_causal(mask) if causal else mask)
    traj = jax.tree.map(lambda t, l: jnp.concatenate([t, l[None]], axis=0), traj, last)
    return x_final, (traj if states is None else {**traj, "x": states})


# ------------------------------------------------------------------ the layer


class EnergyTransformerBlock(nnx.Module):
    """One weight-tied ET block: `steps` steps of x ← x − α ∂E/∂g.

        block = EnergyTransformerBlock(64, 4, 16, 256, rngs=nnx.Rngs(0))
        x = block(x)                                        # (B, T, D) -> (B, T, D)
        x, traj = block(x, return_trajectory=True)          # traj["total"]: (steps + 1, B)
        block.energy(x), block.energy_terms(x)              # (B,) each

    causal=True: keys B < C only, and the causal update (module docstring).
    beta: scalar or per-head inverse temperature, fixed (default 1/sqrt(head_dim)).
    init_std: N(0, init_std) for W_Q, W_K and ξ (GPT's 0.02; Hoover's code uses 0.002
    for W_Q, W_K and 0.02 for ξ). γ starts at 1, δ at 0.
    """

    def __init__(self, d_model: int, num_heads: int, head_dim: int, num_memories: int, *,
                 steps: int = 12, alpha: float = 0.1, causal: bool = True,
                 beta: float | Sequence[float] | None = None, eps: float = 1e-5,
                 init_std: float = 0.02, rngs: nnx.Rngs):
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if alpha <= 0:
            raise ValueError(f"alpha (the step size) must be > 0, got {alpha}")
        init = nnx.initializers.normal(init_std)
        self.wq = nnx.Param(init(rngs.params(), (num_heads, head_dim, d_model)))
        self.wk = nnx.Param(init(rngs.params(), (num_heads, head_dim, d_model)))
        self.xi = nnx.Param(init(rngs.params(), (num_memories, d_model)))
        self.gamma = nnx.Param(jnp.ones((), jnp.float32))
        self.delta = nnx.Param(jnp.zeros((d_model,), jnp.float32))
        self.steps, self.alpha, self.causal, self.eps = int(steps), float(alpha), bool(causal), eps
        # Hashable static: a float, or a tuple of per-head floats.
        self.beta = None if beta is None else (
            float(beta) if jnp.ndim(beta) == 0 else tuple(float(b) for b in beta))
        self.attention_recorder = None     # set by ea.record_attention while pictures are taken

    def params(self) -> ETParams:
        return ETParams(self.wq[...], self.wk[...], self.xi[...], self.gamma[...], self.delta[...])

    def _mask(self, mask: Mask | None) -> Mask | None:
        return with_causal(mask) if self.causal else mask

    def energy_terms(self, x, *, mask: Mask | None = None) -> dict:
        """{'attention', 'hopfield', 'total'} at token states x (B, T, D), each (B,)."""
        x = x.astype(jnp.float32)
        p = self.params()
        g = activations(x, p.gamma, p.delta, eps=self.eps)
        return energy_terms(g, p, beta=self.beta, mask=self._mask(mask))

    def energy(self, x, *, mask: Mask | None = None):
        """E(x) = E_ATT(g(x)) + E_HN(g(x)), (B,)."""
        return self.energy_terms(x, mask=mask)["total"]

    def __call__(self, x, *, mask: Mask | None = None, return_trajectory: bool = False):
        """x (B, T, D) -> final tokens (B, T, D) [, trajectory dict of (steps + 1, B)].

        mask: extra restrictions, e.g. `ea.segments(ids)` (causality comes from `causal`).
        The dynamics run in float32 (descent is a sum of many small steps).
        """
        dtype = x.dtype
        recording = self.attention_recorder is not None
        x, traj = descend(x.astype(jnp.float32), self.params(), steps=self.steps,
                          alpha=self.alpha, beta=self.beta, mask=mask, causal=self.causal,
                          eps=self.eps, return_states=recording)
        if recording:
            self._record(traj.pop("x"), mask)
        x = x.astype(dtype)
        return (x, traj) if return_trajectory else x

    def _record(self, states, mask: Mask | None):
        """Each descent step's attention, as softmax over the keys B ≠ C (B < C if causal):
        the map ∂E_ATT/∂s that the step's update follows."""
        p = self.params()
        heads, head_dim = p.wq.shape[:2]
        beta = per_head_beta(self.beta, heads, head_dim)
        for x in states:
            g = activations(x, p.gamma, p.delta, eps=self.eps)
            q, k = project(g, p.wq), project(g, p.wk)
            pairs = _pair_mask(q.shape[1], k.shape[1], self._mask(mask))
            self.attention_recorder.add("softmax", q, k, mask=pairs, params={"beta": beta})


# ------------------------------------------- ET attention as a contract energy


@register_energy("energy_transformer")
def et_attention(q, k, v, zeta, *, mask=None, beta=None):
    """ET's attention in the library contract: F(ζ) = Σ_C log Σ_{B≠C} exp(β q_C·k_B + ζ_C·v_B).

    ∂F/∂ζ at 0 is softmax attention that skips the token itself. At ζ = 0, −F_h/β_h
    summed over heads is E_ATT with q = W_Q g, k = W_K g. Registered so that a config can say
    `model.attention.energy: energy_transformer`; the descent's own options (steps, step
    size, memories) are the model's: `model.energy_transformer` in a config.
    """
    s = scores(q, k, mask=_pair_mask(q.shape[1], k.shape[1], mask), beta=beta)
    return logsumexp(s + source(zeta, v), axis=-1).sum()
