"""Selection methods and their registry."""

from bdsel.selection import bayesian, infobatch, loss_based, simple, svp  # noqa: F401  (registers them)
from bdsel.selection.base import (
    Candidates,
    ForwardOutputs,
    Selection,
    Selector,
    SelectorContext,
    shortlist,
    top_k_positions,
)
from bdsel.selection.configured import selector_from_config
from bdsel.selection.registry import (
    create_selector,
    list_selectors,
    register_selector,
    selector_class,
    selector_settings,
)

__all__ = [
    "Candidates",
    "ForwardOutputs",
    "Selection",
    "Selector",
    "SelectorContext",
    "create_selector",
    "list_selectors",
    "register_selector",
    "selector_class",
    "selector_from_config",
    "selector_settings",
    "shortlist",
    "top_k_positions",
]
