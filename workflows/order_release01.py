"""The tracking paths of release 0.1, kept as they were so that orders started before the
`order-lifecycle-v2` patch (workflows/order.py) replay and finish exactly as they began.

Never change these methods: an order recorded by release 0.1 takes them until it ends or
continues as new (a new run takes the current paths). Only calls into shared helpers changed:
`apply` became `apply_safely`, identical wherever the transition is legal.
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from temporalio import workflow

from workflows.venue_errors import VENUE_ERRORS, _error_message, _error_type

with workflow.unsafe.imports_passed_through():
    from oms.models import OrderState, TimeInForce, client_order_id_for
    from oms.states import apply_safely as apply
    from oms.venue import OPEN_STATUSES, VenueErrorType, VenueOrderReport, VenueOrderRequest, VenueOrderStatus

S = OrderState
RECONCILE_BACKOFF_MAX = timedelta(seconds=10)
RECONCILE_ATTEMPTS = 20
POLL_FIRST = timedelta(minutes=5)
POLL_AFTER_FILL = timedelta(seconds=5)
POLL_MAX = timedelta(minutes=30)


class Release01Paths:
    """Mixin of OrderWorkflow: the release-0.1 bodies, called when workflow.patched says so."""

    async def _reconcile_v1(self) -> None:
        """Resolve `unknown` by asking the venue about our client order id; resubmit only if absent."""
        delay = timedelta(milliseconds=max(self._state.context.params.retry_delay_ms, 100))
        for _ in range(RECONCILE_ATTEMPTS):
            try:
                report = await self._venue("venue_fetch", self._ref())
            except VENUE_ERRORS as error:
                workflow.logger.warning("reconcile fetch failed: %s", _error_message(error))
                await workflow.sleep(delay)
                delay = min(delay * 2, RECONCILE_BACKOFF_MAX)
                continue
            if report.status == VenueOrderStatus.NOT_FOUND:
                if self._state.cancel_request is not None:
                    await self._transition(S.CANCELLED, "cancelled; the venue never received the order")
                    return
                await self._submit()
                if self._state.snapshot.state != S.UNKNOWN:
                    return
                # Still unknown (an earlier request may yet land at the venue): look again later.
                await workflow.sleep(delay)
                delay = min(delay * 2, RECONCILE_BACKOFF_MAX)
                continue
            await self._apply_report_v1(report)
            return
        await self._transition(S.UNKNOWN, "venue unreachable during reconciliation; will keep trying")


    async def _track_once_v1(self) -> None:
        """Wait for a request or the next poll, then act on it."""
        snap = self._state.snapshot
        if snap.state == S.UNKNOWN:
            await self._reconcile_v1()
            return
        if self._state.cancel_request is not None:
            await self._cancel_at_venue_v1(self._state.cancel_request.reason or "cancel requested", S.CANCELLED)
            return
        if self._state.amend_requests:
            await self._amend_at_venue(self._state.amend_requests.pop(0))
            return
        if snap.expire_at is not None and workflow.now() >= snap.expire_at:
            await self._cancel_at_venue_v1("expire_at reached", S.EXPIRED)
            return
        if self._state.poll_interval_ms is None:
            first_ms = POLL_FIRST.total_seconds() * 1000
            self._state.poll_interval_ms = int(first_ms * (0.5 + workflow.random().random()))
        interval = timedelta(milliseconds=self._state.poll_interval_ms)
        if snap.expire_at is not None:
            interval = min(interval, snap.expire_at - workflow.now())
        woke = await self._wait(
            lambda: self._state.cancel_request is not None or bool(self._state.amend_requests)
            or bool(self._state.venue_updates), interval)
        if self._state.venue_updates:
            # Pushed by the account poller; each report has the whole order, so the latest one wins.
            report, self._state.venue_updates = self._state.venue_updates[-1], []
            if not report.fills_complete and (report.filled_quantity > snap.filled_quantity
                                              or report.status not in OPEN_STATUSES):
                report = await self._fetch_quietly()  # listed without its trades: fetch them
                if report is None:
                    return
            await self._apply_report_v1(report)
            return
        if woke:
            return  # a cancel or amend request: handled on the next turn
        report = await self._fetch_quietly()
        if report is not None:
            before = snap.filled_quantity
            await self._apply_report_v1(report)
            # Back off while nothing happens; look again soon after a fill.
            self._state.poll_interval_ms = (
                int(POLL_AFTER_FILL.total_seconds() * 1000) if snap.filled_quantity != before
                else min(self._state.poll_interval_ms * 2, int(POLL_MAX.total_seconds() * 1000)))


    async def _cancel_at_venue_v1(self, reason: str, final: OrderState) -> None:
        await self._transition(S.PENDING_CANCEL, reason)
        try:
            report = await self._venue("venue_cancel", self._ref())
        except VENUE_ERRORS as error:
            if _error_type(error) == VenueErrorType.NOT_FOUND.value:
                await self._transition(final, reason)
                return
            await self._transition(S.UNKNOWN, f"cancel outcome unknown: {_error_message(error)}")
            return  # reconcile; the cancel request stays and is retried
        await self._apply_report_v1(report, cancel_target=final, reason=reason)


    async def _cancel_and_replace_v1(self, pending: PendingAmend, new_qty: Decimal, new_price: Decimal | None,
                                  back_to: OrderState) -> None:
        """Amend where the venue has none: the old order is confirmed cancelled before the new one
        is placed, so there are never two live orders."""
        try:
            report = await self._venue("venue_cancel", self._ref())
        except VENUE_ERRORS as error:
            await self._amend_failed(pending, back_to, _error_type(error), error)
            return
        snap = self._state.snapshot
        await self._apply_fills(report)
        if snap.filled_quantity >= new_qty or report.status == VenueOrderStatus.FILLED:
            if snap.state != S.FILLED:
                snap.quantity = max(snap.filled_quantity, new_qty)
                apply(snap, S.FILLED, workflow.now(), "filled before the amend could apply")
            await self._publish()
            self._state.amend_results[pending.id] = "order filled before the amend could apply"
            return
        self._state.generation += 1
        snap.client_order_id = client_order_id_for(snap.order_id, self._state.generation)
        snap.quantity, snap.limit_price = new_qty, new_price
        await self._transition(S.ACCEPTED if snap.filled_quantity == 0 else S.PARTIALLY_FILLED,
                               "replaced (cancel-and-replace amend)")
        request = VenueOrderRequest(
            exchange=snap.exchange, account=self._state.context.account, client_order_id=snap.client_order_id,
            symbol=snap.symbol, side=snap.side, order_type=snap.order_type,
            quantity=new_qty - snap.filled_quantity, limit_price=new_price, time_in_force=TimeInForce.GTC)
        try:
            report = await self._venue("venue_submit", request)
        except VENUE_ERRORS as error:
            self._state.amend_results[pending.id] = f"replacement order: {_error_message(error)}"
            await self._on_submit_error(error)
            return
        await self._apply_report_v1(report)
        self._state.amend_results[pending.id] = None


    async def _apply_report_v1(self, report: VenueOrderReport, cancel_target: OrderState = S.CANCELLED,
                            reason: str | None = None) -> None:
        snap = self._state.snapshot
        if snap.state in (S.SUBMITTED, S.UNKNOWN) and report.status == VenueOrderStatus.NEW and not report.fills:
            apply(snap, S.ACCEPTED, workflow.now(), None)
        await self._apply_fills(report)
        status = report.status
        if status == VenueOrderStatus.REJECTED:
            apply(snap, S.REJECTED, workflow.now(), report.reason or "rejected by the venue")
        elif status == VenueOrderStatus.CANCELLED and not snap.is_terminal:
            apply(snap, cancel_target, workflow.now(), reason or report.reason or "cancelled at the venue")
        elif status == VenueOrderStatus.EXPIRED and not snap.is_terminal:
            apply(snap, S.EXPIRED, workflow.now(), report.reason or "expired at the venue")
        elif status in OPEN_STATUSES and snap.state in (
                S.PENDING_CANCEL, S.UNKNOWN):
            # The cancel did not take (yet), or reconciliation found the order live.
            apply(snap, S.PARTIALLY_FILLED if snap.filled_quantity > 0 else S.ACCEPTED, workflow.now(), None)
        await self._publish()

