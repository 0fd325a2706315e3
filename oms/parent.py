"""Parent orders: what ParentOrderWorkflow starts from (the parent workflow itself: workflows/parent.py).

An order the router splits across venues, or cuts into children by the configured child caps,
continues as new into ParentOrderWorkflow with this input: the signal and the router's plan (one
child per leg, on its venue). Defined here so OrderWorkflow can hand over before the parent
workflow is merged; the parent order branch extends it (its own state for continue-as-new).
"""
from __future__ import annotations

from pydantic import BaseModel

from oms.models import Signal
from oms.routing import RoutePlan


class ParentOrderInput(BaseModel):
    signal: Signal
    route: RoutePlan | None = None
