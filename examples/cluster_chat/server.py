"""A chat served by several processes, even on several machines: Redis carries each message to all of them.

    python -m blockws serve server:chat --workers 3 --port 8001     (in this directory)

Every worker process keeps its own clients. A message from any client is
published on a Redis channel; each process is subscribed to it and
broadcast()s what arrives to its own clients, so everyone gets every
message, whichever process they are connected to. nginx in front (see
nginx.conf) gives clients one address for all the processes.

Settings, from the environment: REDIS_URL (redis://127.0.0.1:6379/0),
CHAT_CHANNEL (chat).
"""

from __future__ import annotations

import os
import threading

import redis

import blockws

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL = os.environ.get("CHAT_CHANNEL", "chat")

clients: set[blockws.WebSocket] = set()
lock = threading.Lock()
_redis: redis.Redis | None = None


def _connect_redis() -> redis.Redis:
    """This process's Redis connection, and its subscriber thread, made on first use.

    Not at import time: worker processes may be forked from the process
    that imported this module, and a thread doesn't survive a fork.
    """
    global _redis
    with lock:
        if _redis is None:
            # Every handler thread publishes through this client: a blocking
            # pool makes a burst of them wait for a connection instead of
            # failing with "Too many connections".
            pool = redis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=16, timeout=10)
            client = redis.Redis(connection_pool=pool)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(CHANNEL)
            pubsub.get_message(timeout=5)  # the subscription is confirmed: nothing published from now on is missed
            threading.Thread(target=_relay, args=(pubsub,), name="redis subscriber", daemon=True).start()
            _redis = client
        return _redis


def _relay(pubsub: redis.client.PubSub) -> None:
    """Give every message published on the channel to this process's clients."""
    for item in pubsub.listen():
        message = item["data"].decode("utf-8")
        with lock:
            local = list(clients)
        # Never waits on a slow client: one that can't take the message now misses it.
        blockws.broadcast(local, message)


def chat(ws: blockws.WebSocket) -> None:
    """Serve one client: publish what it sends; broadcasting is _relay's."""
    r = _connect_redis()
    with lock:
        clients.add(ws)
    try:
        ws.send(f"welcome from process {os.getpid()}")
        for message in ws:
            r.publish(CHANNEL, message)
    finally:
        with lock:
            clients.discard(ws)
