"""The search attributes the order workflows keep current, all Keyword: what operators filter on in
the Temporal UI and `tom orders` lists from visibility. One list for the workflows that set them,
for intake that starts an order with them, and for `tom temporal-setup` / `tom dev` that register
them on a namespace (a worker refuses to start where one is missing)."""
from __future__ import annotations

from temporalio.common import SearchAttributeKey

ORDER_STATE = SearchAttributeKey.for_keyword("OrderState")
SYMBOL = SearchAttributeKey.for_keyword("Symbol")
EXCHANGE = SearchAttributeKey.for_keyword("Exchange")
STRATEGY_ID = SearchAttributeKey.for_keyword("StrategyId")
PARENT_ORDER_ID = SearchAttributeKey.for_keyword("ParentOrderId")  # on the children of a parent order

ALL = (ORDER_STATE, SYMBOL, EXCHANGE, STRATEGY_ID, PARENT_ORDER_ID)
NAMES = tuple(key.name for key in ALL)
