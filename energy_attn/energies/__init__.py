"""Built-in energies. Importing this package registers them by name."""
from .softmax import softmax, softmax_reference  # noqa: F401
