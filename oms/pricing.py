"""Prices the Order Validator decides from: the venue's top of book and the account currency.

Read by an activity (`activities/execution.py`) and recorded in history as `VenuePrices`, so the
workflow decides from them deterministically. Account limits are in `account_limits.currency`: an
order's value in its market's quote currency is converted at the venue's price of that quote
currency (ETH/BTC is valued through BTC/USDT, or USDT/BTC inverted). With no such price the
order cannot be valued and is refused, never compared in the wrong currency.
"""
from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel

ONE = Decimal(1)


class VenuePrices(BaseModel):
    account_currency: str
    bid: Decimal | None = None  # None: the venue publishes no book here (e.g. QuantConnect)
    ask: Decimal | None = None
    conversion_symbol: str | None = None  # the pair that values the quote currency, None if same
    conversion_price: Decimal | None = None  # account-currency units per quote unit; None: unknown

    @property
    def mid(self) -> Decimal | None:
        if self.bid is None or self.ask is None or self.bid <= 0 or self.ask <= 0:
            return None
        return (self.bid + self.ask) / 2


def conversion_candidates(quote: str, account_currency: str) -> list[tuple[str, bool]]:
    """Pairs that price `quote` in `account_currency`: (symbol, inverted), in order of preference."""
    return [(f"{quote}/{account_currency}", False), (f"{account_currency}/{quote}", True)]


def conversion_from_mid(mid: Decimal, inverted: bool) -> Decimal:
    return ONE / mid if inverted else mid


def to_account_currency(value_in_quote: Decimal, prices: VenuePrices) -> Decimal | None:
    if prices.conversion_price is None:
        return None
    return value_in_quote * prices.conversion_price
