"""A local exchange emulator speaking the Binance spot and Bybit v5 REST wire protocols.

`tom exchange-emulator --venue binance|bybit --port P` serves one venue per process, so the real
ccxt client (with its `urls['api']` rewritten to the emulator) can trade against it: a paper-trading
venue for any ccxt-based tool, and the test double of our direct-exchange adapter.

- `book`: the venue's state (balances, orders, trades) on top of `oms.venue_model`, the same price
  path and matching as the simulation adapter, so the emulator and the workers agree on prices.
- `faults`: the fault schedule and the ban state, driven through the admin API.
- `traffic`: the request log and the statistics computed from it (rates per sliding window).
- `binance`, `bybit`: each venue's routes, request parsing, signatures, JSON shapes and error codes.
- `protocol`: what the server needs from a venue module, and the state they share.
- `server`: the aiohttp app, the per-request fault/recording wrapper and `run` (the CLI entry).
- `admin`: the emulator's own API under /_emulator/ (faults, orders, stats, reset).
"""
