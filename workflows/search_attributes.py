"""The search attributes the order workflows keep current, all Keyword: what operators filter on in
the Temporal UI and `tom orders` lists from visibility. One list for the workflows that set them,
for intake that starts an order with them, and for `tom temporal-setup` / `tom dev` that register
them on a namespace (a worker refuses to start where one is missing)."""
from __future__ import annotations

from temporalio import workflow
from temporalio.common import SearchAttributeKey

ORDER_STATE = SearchAttributeKey.for_keyword("OrderState")
SYMBOL = SearchAttributeKey.for_keyword("Symbol")
EXCHANGE = SearchAttributeKey.for_keyword("Exchange")
STRATEGY_ID = SearchAttributeKey.for_keyword("StrategyId")
PARENT_ORDER_ID = SearchAttributeKey.for_keyword("ParentOrderId")  # on the children of a parent order

ALL = (ORDER_STATE, SYMBOL, EXCHANGE, STRATEGY_ID, PARENT_ORDER_ID)
NAMES = tuple(key.name for key in ALL)


class ChangedAttributes:
    """Upserts the order's attributes; with `only_changes`, only those that changed since this run
    last set them: each upsert is a visibility write on the server, and symbol and strategy never
    change (the exchange may, when the order is routed). Held in the workflow's memory, so a new
    run (continue-as-new) sets them all once; replay computes the same commands. Without it, every
    call upserts all four, as runs recorded before the change did."""

    def __init__(self, only_changes: bool) -> None:
        self._only_changes = only_changes
        self._set: dict[str, str] = {}

    def upsert(self, state: str, symbol: str, exchange: str, strategy_id: str) -> None:
        values = {ORDER_STATE: state, SYMBOL: symbol, EXCHANGE: exchange, STRATEGY_ID: strategy_id}
        changed = [key.value_set(value) for key, value in values.items()
                   if not self._only_changes or self._set.get(key.name) != value]
        if changed:
            workflow.upsert_search_attributes(changed)
            self._set.update((key.name, value) for key, value in values.items())
