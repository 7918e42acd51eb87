"""The in-process broker: publishing never waits for anyone, and a lagging watcher is dropped."""

from __future__ import annotations

from app.streams.broker import Broker


async def test_each_subscriber_gets_every_item_of_its_topics_with_the_topic():
    broker = Broker()
    logs, status = broker.subscribe("logs"), broker.subscribe("logs", "status")
    broker.publish("logs", [1])
    broker.publish("status", {"s": 1})
    broker.publish("other", "nobody listens")
    assert logs.drain() == [[1]]
    assert [await status.next(0.1), await status.next(0.1)] == [("logs", [1]), ("status", {"s": 1})]
    assert await status.next(0.01) is None


async def test_a_full_subscriber_is_dropped_and_told_while_the_others_keep_receiving():
    broker = Broker(queue_size=2)
    slow, fast = broker.subscribe("t"), broker.subscribe("t")
    for item in range(3):
        broker.publish("t", item)
        assert fast.drain() == [item]
    assert slow.overflowed and not fast.overflowed
    assert broker.subscriber_count("t") == 1
    broker.publish("t", 3)
    assert slow.drain() == [0, 1] and fast.drain() == [3]


async def test_closing_a_subscription_removes_it_from_every_topic():
    broker = Broker()
    with broker.subscribe("a", "b"):
        assert broker.subscriber_count("a") == broker.subscriber_count("b") == 1
    assert broker.subscriber_count("a") == broker.subscriber_count("b") == 0
