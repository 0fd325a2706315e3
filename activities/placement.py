"""prepare_and_place: an order that goes out at once is prepared and placed in one local activity.

Each local activity costs an order a round trip through the SDK (about 1.5 ms on an idle machine,
4 ms under load, and worker CPU either way). An order with nothing to wait for (no start_at, not
split across venues) needs no decision between preparation and submission that the prepared context
does not already settle, so the activity takes it: `order_to_place` is the workflow's decision as a
pure function of that context, and the workflow runs the same function on the recorded context and
checks the answer (workflows/order.py, `_adopt_placement`). A venue answer never fails this activity:
once the request may have left, its outcome is returned as data (`VenueCallOutcome`), and an outcome
not known is reconciled by the workflow, never resubmitted blindly. The activity fails only in
preparation; the workflow makes one attempt and then prepares with prepare_order's retries. A crash
before the workflow task completes re-runs the activity, with the same client order id, as it re-ran
venue_submit before (and a cancel seen first on the re-run looks the order up: _cancel_unsent).
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal
from typing import Awaitable, Callable

from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.execution import ExecutionActivities, OrderContext
from oms.generation import OrderInstruction, generate_order, venue_terms
from oms.models import Signal
from oms.validation import validate_order
from oms.venue import VenueErrorType, VenueOrderReport, VenueOrderRequest


PREPARE_TIMEOUT_S = 10.0  # prepare_order's own start-to-close timeout


class PlaceRequest(BaseModel):
    signal: Signal
    client_order_id: str


class VenueCallFailure(BaseModel):
    """A venue call's error as data: its VenueErrorType value, message and the wait it asked for."""

    type: str
    message: str
    retry_after_s: float | None = None

    def as_error(self) -> ApplicationError:
        """The error the workflow's retry logic reads (workflows/venue_errors.py), as a call would raise it."""
        details = [{"retry_after_s": self.retry_after_s}] if self.retry_after_s else []
        return ApplicationError(self.message, *details, type=self.type)


class VenueCallOutcome(BaseModel):
    """The venue's answer to one call: a report, or the failure."""

    report: VenueOrderReport | None = None
    failure: VenueCallFailure | None = None


class PreparedPlacement(BaseModel):
    context: OrderContext
    placed: VenueOrderRequest | None = None  # sent to the venue; None: nothing was sent
    outcome: VenueCallOutcome | None = None  # the venue's answer to `placed`


class Placement(BaseModel):
    instruction: OrderInstruction
    request: VenueOrderRequest


def mid_price(context: OrderContext) -> Decimal | None:
    """The venue's mid price from the prepared quote, if it gave both sides."""
    return (context.bid + context.ask) / 2 if context.bid is not None and context.ask is not None else None


def order_to_place(signal: Signal, context: OrderContext, client_order_id: str, now: datetime) -> Placement | None:
    """The order the workflow will place straight after preparation, or None when anything stands in
    between: a route refusal or split, an unknown market, no daily slot, a rule the order breaks, a
    start_at still ahead or an expire_at passed. The same checks as the workflow's, in its order."""
    if context.route_refusal is not None or (context.route is not None and context.route.is_split):
        return None
    if context.problem or context.market is None or context.prices is None:
        return None
    if context.daily_decision is None or not context.daily_decision.allowed:
        return None
    start_at = signal.execution.start_at if signal.execution else None
    if (start_at is not None and start_at > now) or (signal.expire_at is not None and now >= signal.expire_at):
        return None
    instruction = generate_order(signal, context.params, context.exchange, context.market, mid_price(context),
                                 context.estimated_slippage_bps)
    if validate_order(instruction, signal.side, context.market, context.limits, now, context.prices,
                      signal.reference_price) is not None:
        return None
    order_type, price, tif = venue_terms(instruction.order_type, instruction.time_in_force, signal.limit_price,
                                         signal.side, instruction.price_collar, context.market.price_step)
    return Placement(instruction=instruction, request=VenueOrderRequest(
        exchange=context.exchange, account=context.account, client_order_id=client_order_id, symbol=signal.symbol,
        side=signal.side, order_type=order_type, quantity=signal.quantity, limit_price=price, time_in_force=tif))


def _failure(error: ApplicationError) -> VenueCallFailure:
    retry_after = error.details[0].get("retry_after_s") if error.details and isinstance(error.details[0], dict) else None
    return VenueCallFailure(type=error.type or VenueErrorType.TRANSIENT.value, message=str(error)[:500],
                            retry_after_s=retry_after)


Decide = Callable[[Signal, OrderContext, str, datetime], "Placement | None"]


async def prepare_and_place(request: PlaceRequest, prepare: Callable[[Signal], Awaitable[OrderContext]],
                            submit: Callable[[VenueOrderRequest], Awaitable[VenueOrderReport]],
                            decide: Decide = order_to_place) -> PreparedPlacement:
    """Prepare (may raise: nothing was sent, the activity is retried), then place if the order goes out
    at once. `submit` raises ApplicationError as venue_submit does; `decide` is order_to_place (a test
    replaces it to play a worker whose decision differs from the workflow's)."""
    context = await asyncio.wait_for(prepare(request.signal), PREPARE_TIMEOUT_S)  # a timeout: retried, nothing sent
    placement = decide(request.signal, context, request.client_order_id, datetime.now(timezone.utc))
    if placement is None:
        return PreparedPlacement(context=context)
    timeout_s = context.params.execution_timeout_ms / 1000
    try:
        outcome = VenueCallOutcome(report=await asyncio.wait_for(submit(placement.request), timeout_s))
    except ApplicationError as error:
        outcome = VenueCallOutcome(failure=_failure(error))
    except asyncio.TimeoutError:
        outcome = VenueCallOutcome(failure=VenueCallFailure(
            type=VenueErrorType.UNKNOWN_OUTCOME.value, message=f"no answer within execution_timeout_ms {timeout_s * 1000:.0f}"))
    except Exception as error:  # noqa: BLE001 - the request may have left: its outcome is unknown, never retried here
        outcome = VenueCallOutcome(failure=VenueCallFailure(
            type=VenueErrorType.UNKNOWN_OUTCOME.value, message=f"{type(error).__name__}: {error}"[:500]))
    if outcome.failure is not None:  # not an activity failure, so said here: the order's log shows it
        activity.logger.warning("venue submit failed, outcome handed to the workflow: %s: %s",
                                outcome.failure.type, outcome.failure.message)
    return PreparedPlacement(context=context, placed=placement.request, outcome=outcome)


class PlacementActivities:
    """The activity, on the worker's ExecutionActivities (the same preparation and venue adapters)."""

    def __init__(self, execution: ExecutionActivities) -> None:
        self._execution = execution

    @activity.defn(name="prepare_and_place")
    async def prepare_and_place(self, request: PlaceRequest) -> PreparedPlacement:
        return await prepare_and_place(request, self._execution.prepare_order, self._execution.venue_submit)
