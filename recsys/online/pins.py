"""The online store's pin policy for served models: which feature versions must stay readable.

Served models read the online store pinned to the feature version they were trained on (their
encoded ids), so a refresh to a newer feature version never changes what they read, and garbage
collection keeps a pinned version's rows. Publishing owns these pins: their reason starts with
:data:`PIN_PREFIX` (``"triton v4 serving"``); a successful publish or rollback releases every such
pin but the served one (:func:`release_other_pins`). Pins other tools make are never touched.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Optional

from recsys import layout
from recsys.errors import RecsysError, error_text
from recsys.layout import FeatureVersion
from recsys.settings import Settings, get_settings

log = logging.getLogger(__name__)

PIN_PREFIX = "triton "
"""Reason prefix of the online-store pins publishing owns."""


class PinError(RecsysError):
    """The online store cannot hold or pin the feature version served models need."""


@contextlib.contextmanager
def _store(s: Settings) -> Iterator[Any]:
    from recsys.online.redis_store import RedisOnlineStore

    store = RedisOnlineStore.from_settings(s)
    try:
        yield store
    finally:
        store.client.close()


def ensure_online_store(feature_version: str, data_version: str = "", settings: Optional[Settings] = None) -> dict[str, Any]:
    """Make the online store hold a version of ``feature_version``, refreshing from its folder if needed.

    The models read their features from Redis pinned to the feature version they were trained on, so
    it must be there before they load. A refresh here also makes it current; that does not disturb
    served models, which read their own pinned feature version.
    Returns ``{"refreshed", "online_version", "feature_version"}``.
    """
    from recsys.online.refresh import refresh_online_store

    s = settings or get_settings()
    with _store(s) as store:
        held = store.current(feature_version=feature_version)
        current = store.current()
    if held is not None:
        log.info("online store version %s holds feature version %s", held.version, feature_version)
        return {"refreshed": False, "online_version": held.version, "feature_version": feature_version}
    features = FeatureVersion.of(s, feature_version)
    if not features.exists:
        raise PinError(
            f"the served models need feature version {feature_version!r}, the online store holds "
            f"{current.feature_version if current else 'nothing'}, and {features.path} (to refresh it from) does not exist"
        )
    candidate = layout.data_dir(s, data_version) if data_version else None
    data_dir = candidate if candidate is not None and candidate.is_dir() else None
    log.info("online store holds no version of %s (current: %s): refreshing it",
             feature_version, current.feature_version if current else "nothing")
    result = refresh_online_store(str(features.path), str(data_dir) if data_dir else None, settings=s)
    return {"refreshed": True, "online_version": result["version"], "feature_version": feature_version}


def pin_feature_version(s: Settings, feature_version: str, reason: str) -> Optional[str]:
    """Pin ``feature_version``; returns the reason it was pinned with before (None: it was not).

    Raises :class:`PinError` when the store cannot be reached (nothing may load unpinned).
    """
    try:
        with _store(s) as store:
            before = store.pins().get(feature_version)
            store.pin(feature_version, reason)
            if store.current(feature_version=feature_version) is None:
                log.warning("pinned feature version %s, but the online store holds no version of it: the models "
                            "cannot read their features (run `recsys online refresh`)", feature_version)
    except Exception as exc:
        raise PinError(f"cannot pin feature version {feature_version} in the online store: {error_text(exc)}") from exc
    log.info("online store: feature version %s pinned (%s)", feature_version, reason)
    return before


def restore_pin(s: Settings, feature_version: str, before: Optional[str]) -> None:
    """Undo :func:`pin_feature_version` after a failure: unpin, or put the earlier reason back."""
    try:
        with _store(s) as store:
            if before is None:
                store.unpin(feature_version)
            else:
                store.pin(feature_version, before)
    except Exception as exc:  # the publish already failed; an extra pin only delays garbage collection
        log.error("could not restore the online-store pin of %s: %s", feature_version, error_text(exc))


def release_other_pins(s: Settings, served_feature_version: str) -> list[str]:
    """Unpin every feature version publishing pinned but the served one; returns the unpinned ones.

    Called once the served version answers: the models of other feature versions are gone.
    """
    with _store(s) as store:
        released = [fv for fv, reason in store.pins().items() if reason.startswith(PIN_PREFIX) and fv != served_feature_version]
        for fv in released:
            store.unpin(fv)
    if released:
        log.info("online store: released the pins of %s (no served model reads them any more)", released)
    return released
