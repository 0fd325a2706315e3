"""The simulated venue's listed markets: exchange constraints and the base of each price path."""
from __future__ import annotations

from decimal import Decimal

from oms.venue import MarketInfo


# The venue's minimum order value, in each market's own quote currency (as Binance's NOTIONAL filter:
# 5 USDT, 0.0001 BTC). A minimum is only meaningful in the currency the market is quoted in.
_MIN_NOTIONAL = {"USDT": Decimal("5"), "BTC": Decimal("0.0001")}


def _market(symbol: str, base_price: str, amount_step: str, price_step: str, min_amount: str,
            depth_notional: str) -> tuple[MarketInfo, Decimal, Decimal]:
    base, quote = symbol.split("/")
    info = MarketInfo(
        symbol=symbol, base=base, quote=quote, amount_step=Decimal(amount_step),
        price_step=Decimal(price_step), min_amount=Decimal(min_amount), min_notional=_MIN_NOTIONAL[quote],
    )
    return info, Decimal(base_price), Decimal(depth_notional)


# symbol -> (constraints, base price, quote notional available per book level)
_CATALOGUE = {
    m[0].symbol: m
    for m in (
        _market("BTC/USDT", "60000", "0.00001", "0.01", "0.00001", "250000"),
        _market("ETH/USDT", "3000", "0.0001", "0.01", "0.0001", "150000"),
        _market("SOL/USDT", "150", "0.001", "0.01", "0.001", "60000"),
        _market("BNB/USDT", "550", "0.001", "0.1", "0.001", "40000"),
        _market("XRP/USDT", "0.6", "0.1", "0.0001", "0.1", "30000"),
        _market("DOGE/USDT", "0.15", "1", "0.00001", "1", "20000"),
        _market("ADA/USDT", "0.45", "0.1", "0.0001", "0.1", "20000"),
        _market("ETH/BTC", "0.05", "0.0001", "0.00001", "0.0001", "1"),
    )
}

SIMULATED_SYMBOLS = tuple(sorted(_CATALOGUE))


def simulated_market(symbol: str) -> MarketInfo | None:
    entry = _CATALOGUE.get(symbol)
    return entry[0] if entry else None


def base_price(symbol: str) -> Decimal:
    return _CATALOGUE[symbol][1]


def level_notional(symbol: str) -> Decimal:
    return _CATALOGUE[symbol][2]
