"""A Redis lease: one holder at a time per key, renewed by the holder, taken over when it lapses."""
from __future__ import annotations

import os
import socket

import redis.asyncio as aioredis


class Lease:
    def __init__(self, redis: aioredis.Redis, key: str) -> None:
        self._redis, self.key = redis, key
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self)}"

    async def hold(self, ttl_s: int) -> bool:
        """Take or renew the lease; True while this process holds it."""
        if await self._redis.set(self.key, self.owner, nx=True, ex=ttl_s):
            return True
        if await self._redis.get(self.key) == self.owner:
            await self._redis.expire(self.key, ttl_s)
            return True
        return False
