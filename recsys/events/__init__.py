"""Live events: interactions that arrive while the platform serves.

Two ways in, one validation (:mod:`recsys.events.validation`): the HTTP API's ``POST /v1/events``
(:mod:`recsys.api`) and producers already on Redis, who ``XADD`` to the inbox stream that the event
worker validates (:mod:`recsys.events.worker`). An accepted event is appended to the event log and
applied to the live layer of the online store in one step
(:meth:`recsys.online.store.OnlineStore.accept_events`); serving reads it at once. The landing
consumer (:mod:`recsys.events.landing`) writes the log into the landing folder as parquet parts,
exactly once, for the next ``recsys_etl``. :mod:`recsys.events.freshness` reports how fresh it all is.
"""
