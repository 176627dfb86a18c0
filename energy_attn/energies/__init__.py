"""Built-in energies. Importing this package registers them by name.

Each is a small pure function  energy(q, k, v, zeta, *, mask, **params) -> scalar.
"""
from .distance import distance  # noqa: F401
from .entmax import entmax, entmax_energy, sparsemax_energy, tsallis_conjugate  # noqa: F401
from .linear import linear  # noqa: F401
from .sigmoid import sigmoid  # noqa: F401
from .softmax import softmax, softmax_reference  # noqa: F401
