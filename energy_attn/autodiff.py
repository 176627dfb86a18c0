"""Helpers for custom derivative rules that receive symbolic zero tangents."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero


def _is_symbolic(x):
    return isinstance(x, SymbolicZero)


def all_symbolic_zero(tree) -> bool:
    """True if every tangent leaf of `tree` is a symbolic zero (nothing varies)."""
    return all(_is_symbolic(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=_is_symbolic))


def instantiate_zeros(tree):
    """Replace symbolic zeros by real zero arrays (float0 for integer/bool primals)."""
    def zeros(x):
        if not _is_symbolic(x):
            return x
        if x.dtype == jax.dtypes.float0:
            return np.zeros(x.shape, x.dtype)
        # Inside shard_map a zero tangent must vary over the same mesh axes as its primal.
        axes = tuple(sorted(x.aval.manual_axis_type.varying))
        z = jnp.zeros(x.shape, x.dtype)
        return jax.lax.pcast(z, axes, to="varying") if axes else z
    return jax.tree_util.tree_map(zeros, tree, is_leaf=_is_symbolic)
