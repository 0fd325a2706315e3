"""Reading a failed venue call: which VenueErrorType it carries, how long it asks us to wait.

Shared by the current tracking paths (workflows/order.py) and release 0.1's (order_release01.py).
"""
from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from oms.venue import VenueErrorType

# A failed local activity surfaces as ActivityError, or as its ApplicationError / TimeoutError itself.
VENUE_ERRORS = (ActivityError, ApplicationError, TemporalTimeoutError)
# Errors after which the venue certainly holds no order: retried, then `failed`, never `unknown`.
NOTHING_SENT = {VenueErrorType.TRANSIENT.value, VenueErrorType.RATE_LIMITED.value, VenueErrorType.CIRCUIT_OPEN.value}
# The venue asked us to stay away (429/418) or its breaker is open: wait as long as told, durably,
# without spending a retry attempt, up to the order's max_venue_wait_s in all.
VENUE_BUSY = {VenueErrorType.RATE_LIMITED.value, VenueErrorType.CIRCUIT_OPEN.value}
# No answer, or an answer lost after the venue may have acted: what it did is known only by asking.
OUTCOME_UNKNOWN = {"timeout", VenueErrorType.UNKNOWN_OUTCOME.value}

def _error_type(error: BaseException) -> str:
    """The VenueErrorType of a failed activity call, or 'timeout'."""
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, TemporalTimeoutError):
        return "timeout"
    if isinstance(cause, ApplicationError):
        return cause.type or VenueErrorType.TRANSIENT.value
    return VenueErrorType.TRANSIENT.value


def _retry_after_s(error: BaseException) -> float | None:
    """The wait a RATE_LIMITED / CIRCUIT_OPEN error asks for (its first detail), if any."""
    cause = error.cause if isinstance(error, ActivityError) else error
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        value = cause.details[0].get("retry_after_s")
        return float(value) if value is not None else None
    return None


def _error_message(error: BaseException) -> str:
    cause = error.cause if isinstance(error, ActivityError) and error.cause else error
    return str(cause) or type(cause).__name__
