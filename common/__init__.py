"""The shared package of "The Art of Compressing LLMs" labs.

Notebooks, the `workshop` command line and the tests all call these same functions.
"""
import os

from .budgets import Budget, current_mode, get_budget
from .errors import WorkshopError

if os.environ.get("WORKSHOP_BLOCK_NETWORK") == "1":  # set by `make test` for notebook kernels
    from .offline import block_network
    block_network()

__all__ = ["Budget", "WorkshopError", "current_mode", "get_budget"]
