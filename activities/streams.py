"""Append to a Redis stream exactly once per item id.

A Lua script sets a marker key with SET NX and appends only if the marker was new, atomically,
so a retried activity, a replayed workflow or a consumer that crashed before acknowledging never
appends the same item twice.
"""
from __future__ import annotations

import redis.asyncio as aioredis

from oms.events import STREAM_MAXLEN, published_marker_key

MARKER_TTL_S = 14 * 86400  # longer than any retry, replay or redelivery of the same item

# KEYS: marker, stream; ARGV: maxlen, ttl, field1, value1, ... -> 1 if appended
_PUBLISH_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[2])) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[1]), '*', unpack(ARGV, 3))
  return 1
end
return 0
"""


class StreamPublisher:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._script = redis.register_script(_PUBLISH_ONCE)

    async def publish_once(self, stream: str, item_id: str, fields: dict[str, str], client=None) -> int:
        """Queue (on a pipeline `client`) or run the append; 1 if appended, 0 if already there."""
        flat = [value for pair in fields.items() for value in pair]
        return await self._script(keys=[published_marker_key(stream, item_id), stream],
                                  args=[STREAM_MAXLEN, MARKER_TTL_S, *flat], client=client)
