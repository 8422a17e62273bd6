"""Live events: interactions that arrive while the platform serves.

Two ways in, one validation (:mod:`recsys.events.validation`): the HTTP API's ``POST /v1/events``
(:mod:`recsys.api`) and producers already on Redis, who ``XADD`` to the inbox stream that the event
worker validates (:mod:`recsys.events.worker`). An accepted event is appended to the event log
(:meth:`recsys.online.store.OnlineStore.accept_events`); from there, consumer groups take it:

- the live applier (:mod:`recsys.events.live`) applies it to the live layer of the online store
  milliseconds later, exactly once: serving then filters the item and reads it as recent history;
- the landing consumer (:mod:`recsys.events.landing`) writes it into the landing folder as a parquet
  part, exactly once, for the next ``recsys_etl``.

:mod:`recsys.events.log` holds the consumer-side primitives (one backend, :mod:`recsys.events.redis_log`);
:mod:`recsys.events.freshness` reports how fresh it all is; the event worker runs the inbox
validator, the live applier and the landing consumer in one process (``recsys events worker``, the
stack's ``events`` service).
"""
