"""Whether a drift check retrains: hysteresis and cooldown, as a pure function (no I/O).

A single noisy check must not retrain, and a lasting drift must not retrain on every check:

* **hysteresis**: retrain only when drift was found in ``required_consecutive`` checks in a row, all
  against the same champion (a new champion starts a new streak: it was trained on newer data), on
  as many different data versions: the streak counts evidence, not repetitions (two checks of one
  data version, seconds apart, are one piece of evidence; a check that judges the data version the
  previous check judged does not extend the streak, and its reason says so);
* **cooldown**: at most one drift-triggered retrain per ``cooldown_hours``, counted from the last
  check that triggered one (whichever champion it judged).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Mapping, Optional, Sequence


@dataclass(frozen=True)
class Decision:
    """The outcome of one check: ``trigger`` means "emit the DRIFT Asset, retrain now"."""

    drift: bool
    """This check found drift (share of drifted features >= the threshold)."""
    trigger: bool
    consecutive: int
    """Different data versions in the run of drifted checks against this champion, this one included
    (0 without drift)."""
    required_consecutive: int
    cooldown_until: Optional[str]
    """ISO time (UTC) before which no drift-triggered retrain may start, when a cooldown is running."""
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def decide(
    drift: bool,
    previous: Sequence[Mapping],
    *,
    champion_run_id: str,
    data_version: Optional[str] = None,
    now: datetime,
    required_consecutive: int,
    cooldown_hours: float,
) -> Decision:
    """Decide whether this check triggers a retrain.

    ``previous`` are the earlier checks' history entries, oldest first; each needs ``drift`` (bool),
    ``trigger`` (bool), ``champion_run_id`` and ``checked_at`` (ISO time), and ``current_data_version``
    (the data version it judged; an entry without one counts as different evidence). ``data_version``
    is the data version this check judged.
    """
    required = max(1, int(required_consecutive))
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)

    consecutive = 0
    last = previous[-1] if previous else None
    # The previous check, when it judged this same data version (and found drift, against this champion).
    repeated = None
    if (drift and last is not None and data_version is not None and last.get("drift")
            and last.get("champion_run_id") == champion_run_id and last.get("current_data_version") == data_version):
        repeated = last
    if drift:
        seen = {data_version}
        consecutive = 1
        for entry in reversed(previous):
            if not entry.get("drift") or entry.get("champion_run_id") != champion_run_id:
                break
            judged = entry.get("current_data_version")
            if judged is not None and judged in seen:
                continue  # the same evidence again
            seen.add(judged)
            consecutive += 1

    last_trigger = next((e for e in reversed(previous) if e.get("trigger")), None)
    cooldown_until = None
    if last_trigger is not None and cooldown_hours > 0:
        until = _parse_time(str(last_trigger["checked_at"])) + timedelta(hours=cooldown_hours)
        if until > now:
            cooldown_until = _iso(until)

    def outcome(trigger: bool, reason: str) -> Decision:
        return Decision(drift, trigger, consecutive, required, cooldown_until, reason)

    if not drift:
        return outcome(False, "no drift")
    streak = f"drift in {consecutive} of {required} required consecutive checks"
    if repeated is not None:
        streak += (
            f" (data version {data_version} was judged by the previous check "
            f"{repeated.get('check_id', '?')} too: not new evidence, the streak is not extended)"
        )
    if consecutive < required:
        return outcome(False, streak)
    if repeated is not None and repeated.get("trigger"):
        return outcome(False, f"{streak}; that check already triggered the retrain this evidence calls for")
    if cooldown_until is not None:
        return outcome(
            False,
            f"{streak}, but cooling down until {cooldown_until} "
            f"(last drift-triggered retrain: check {last_trigger.get('check_id', '?')} at {last_trigger['checked_at']})",
        )
    return outcome(True, f"{streak}: retrain")
