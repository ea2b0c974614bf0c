"""The seven pre-flight validators of claim_trade_execution, each passing and failing, and all of
them reported together in SPEC order.

Tests share one database per module (`db`), each with its own user and market; tests that flip
system_controls use `fresh_db`."""

from __future__ import annotations

import pytest

from tests.pg import Database
from tests.test_execution_support import (  # the database fixtures: db, module_db, fresh_db
    CHECK_ORDER,
    _fresh_db_fixture,  # noqa: F401
    _module_db_fixture,  # noqa: F401
    _shared_db_fixture,  # noqa: F401
    allow_market,
    allow_user_market,
    backdate,
    claim,
    claimed,
    failed_checks,
    market_of,
    new_market,
    propose,
    record,
    scalar,
    set_controls,
    set_settings,
    sql,
    trader,
)


def reason(result: dict, check: str) -> str:
    return next(e["reason"] for e in result["failed_checks"] if e["check"] == check)


def assert_claimed(result: dict) -> None:
    assert result["outcome"] == "claimed", result
    assert result["failed_checks"] == []


def assert_only_failure(result: dict, check: str) -> None:
    assert result["outcome"] == "rejected", result
    assert result["execution"] is None
    assert failed_checks(result) == [check]


# -- 1. allowlist (G4) -------------------------------------------------------------------------
def test_allowlist_passes_when_market_enabled_in_both_allowlists(db: Database) -> None:
    user = trader(db)
    assert_claimed(claim(db, user, propose(db, user)))


@pytest.mark.parametrize("case", ["missing_globally", "disabled_globally", "missing_for_user",
                                  "disabled_for_user"])
def test_allowlist_rejects_market_missing_or_disabled_in_either_allowlist(db: Database,
                                                                           case: str) -> None:
    user = trader(db)
    market = market_of(user)
    if case == "missing_globally":
        market = new_market()  # in neither list (the user's row needs the global one to exist)
    elif case == "disabled_globally":
        allow_market(db, market, enabled=False)
    elif case == "missing_for_user":
        sql(db, "delete from public.trading_allowlist where user_id = %s", (user,))
    else:
        allow_user_market(db, user, market, enabled=False)
    result = claim(db, user, propose(db, user, market=market))
    expected = {
        "missing_globally": "not in the global market allowlist",
        "disabled_globally": "disabled in the global market allowlist",
        "missing_for_user": "not in your trading allowlist",
        "disabled_for_user": "disabled in your trading allowlist",
    }[case]
    assert "allowlist" in failed_checks(result)
    assert result["outcome"] == "rejected"
    assert expected in reason(result, "allowlist")
    if case != "missing_globally":  # a missing market also has no order limits
        assert_only_failure(result, "allowlist")
    assert scalar(db, "select count(*) from public.trade_executions where user_id = %s",
                  (user,)) == 0


# -- 2. proposal_state -------------------------------------------------------------------------
def test_proposal_state_passes_for_approved_unexpired_proposal(db: Database) -> None:
    user = trader(db)
    proposal = propose(db, user)
    assert scalar(db, "select status from public.trade_proposals where id = %s", (proposal,)) == \
        "approved"
    assert_claimed(claim(db, user, proposal))


@pytest.mark.parametrize("case", ["pending", "rejected", "expired"])
def test_proposal_state_rejects_unapproved_or_expired_proposal(db: Database, case: str) -> None:
    user = trader(db)
    proposal = propose(db, user, approve=case == "expired")
    if case == "rejected":
        db.rpc("decide_trade_proposal", role="authenticated", user_id=user,
               p_proposal_id=proposal, p_decision="reject")
    if case == "expired":
        sql(db, "update public.trade_proposals set expires_at = now() - interval '1 second' "
                 "where id = %s", (proposal,))
    result = claim(db, user, proposal)
    assert_only_failure(result, "proposal_state")
    expected = {"pending": "proposal is pending, not approved",
                "rejected": "proposal is rejected, not approved",
                "expired": "proposal expired at"}[case]
    assert expected in reason(result, "proposal_state")


# SPEC §4: a service-role bearer may execute any user's auto-approved proposal — only those. The
# claim enforces it when the caller says it is the service (p_require_auto_approval).
def test_proposal_state_for_the_service_rejects_a_proposal_its_user_approved(db: Database
                                                                              ) -> None:
    user = trader(db)
    proposal = propose(db, user)  # auto_execute off: pending, then approved by the user
    assert sql(db, "select status, decided_by from public.trade_proposals where id = %s",
               (proposal,)) == [("approved", "user")]
    result = claim(db, user, proposal, require_auto_approval=True)
    assert_only_failure(result, "proposal_state")
    assert reason(result, "proposal_state") == (
        "proposal was decided by its user, not auto-approved; the service executes "
        "auto-approved proposals only")
    assert scalar(db, "select count(*) from public.trade_executions where proposal_id = %s",
                  (proposal,)) == 0
    assert scalar(db, "select status from public.trade_proposals where id = %s", (proposal,)) == \
        "approved"
    # Its user still may.
    assert_claimed(claim(db, user, proposal, require_auto_approval=False))


def test_proposal_state_for_the_service_rejects_a_pending_proposal_on_both_counts(db: Database
                                                                                   ) -> None:
    user = trader(db)
    result = claim(db, user, propose(db, user, approve=False), require_auto_approval=True)
    assert_only_failure(result, "proposal_state")
    assert reason(result, "proposal_state") == (
        "proposal is pending, not approved; proposal was not decided, not auto-approved; the "
        "service executes auto-approved proposals only")


def test_proposal_state_for_the_service_claims_an_auto_approved_proposal(db: Database) -> None:
    user = trader(db, auto_execute=True)
    proposal = propose(db, user, confidence="0.9")  # min_confidence 0.70: approved by 'auto'
    assert sql(db, "select status, decided_by from public.trade_proposals where id = %s",
               (proposal,)) == [("approved", "auto")]
    assert_claimed(claim(db, user, proposal, require_auto_approval=True))


@pytest.mark.parametrize("auto", [False, True])
def test_proposal_state_without_the_service_flag_accepts_either_approval(db: Database,
                                                                         auto: bool) -> None:
    """p_require_auto_approval false (explicit or the default): the user's own claim, as before."""
    for flag in (False, None):
        user = trader(db, auto_execute=auto)
        proposal = propose(db, user)
        assert scalar(db, "select decided_by from public.trade_proposals where id = %s",
                      (proposal,)) == ("auto" if auto else "user")
        assert_claimed(claim(db, user, proposal, require_auto_approval=flag))


# -- 3. order_limits ---------------------------------------------------------------------------
def test_order_limits_pass_at_the_market_minimum(db: Database) -> None:
    user = trader(db)
    allow_market(db, market_of(user), min_order_quote="5")
    assert_claimed(claim(db, user, propose(db, user, amount="5")))


def test_order_limits_reject_below_the_market_minimum(db: Database) -> None:
    user = trader(db)
    allow_market(db, market_of(user), min_order_quote="5")
    result = claim(db, user, propose(db, user, amount="4.99"))
    assert_only_failure(result, "order_limits")
    assert "below the minimum order of 5 EUR" in reason(result, "order_limits")


CAPS = ["user_setting", "user_allowlist_row", "market", "system"]


def cap_at_20(db: Database, user, cap: str) -> None:
    """Make `cap` the smallest of the four maximums, at 20 EUR (the others stay at 50 or above)."""
    if cap == "user_setting":
        set_settings(db, user, max_order_quote=20)
    elif cap == "user_allowlist_row":
        allow_user_market(db, user, market_of(user), max_order_quote="20")
    elif cap == "market":
        allow_market(db, market_of(user), max_order_quote="20")
    else:
        set_controls(db, max_order_quote=20)


@pytest.mark.parametrize("cap", CAPS)
def test_order_limits_pass_at_the_smallest_maximum(fresh_db: Database, cap: str) -> None:
    db = fresh_db
    user = trader(db)
    cap_at_20(db, user, cap)
    assert_claimed(claim(db, user, propose(db, user, amount="20")))


@pytest.mark.parametrize("cap", CAPS)
def test_order_limits_reject_above_the_smallest_maximum(fresh_db: Database, cap: str) -> None:
    db = fresh_db
    user = trader(db)
    cap_at_20(db, user, cap)
    result = claim(db, user, propose(db, user, amount="20.01"))
    assert_only_failure(result, "order_limits")
    assert "above the maximum order of 20 EUR" in reason(result, "order_limits")


# -- 4. cooldown (G5) --------------------------------------------------------------------------
def test_cooldown_rejects_second_order_in_same_market_within_window(db: Database) -> None:
    user = trader(db, cooldown_seconds=3600)
    claimed(db, user)
    result = claim(db, user, propose(db, user))
    assert_only_failure(result, "cooldown")
    assert "cooldown of 3600 s" in reason(result, "cooldown")


def test_cooldown_passes_once_the_window_has_elapsed(db: Database) -> None:
    user = trader(db, cooldown_seconds=3600)
    first = claimed(db, user)
    backdate(db, first["id"], 3601)
    assert_claimed(claim(db, user, propose(db, user)))


def test_cooldown_is_per_market_and_per_mode(fresh_db: Database) -> None:
    db = fresh_db
    user = trader(db, cooldown_seconds=3600, live_trading_enabled=True)
    set_controls(db, live_trading_allowed=True)
    other = new_market()
    allow_market(db, other)
    allow_user_market(db, user, other)
    claimed(db, user)
    assert_claimed(claim(db, user, propose(db, user, market=other)))
    assert_claimed(claim(db, user, propose(db, user), mode="live"))


@pytest.mark.parametrize(("final", "counts"), [
    ({"status": "failed", "error_code": "E1"}, False),
    ({"status": "rejected", "error_code": "216"}, False),
    ({"status": "canceled"}, False),
    ({"status": "canceled", "filled_amount": "0"}, False),
    ({"status": "canceled", "filled_amount": "0.0001", "filled_amount_quote": "4"}, True),
    ({"status": "filled", "filled_amount": "0.0002", "filled_amount_quote": "10"}, True),
    ({"status": "unknown"}, True),
    ({"status": "submitted", "exchange_order_id": "X1"}, True),
])
def test_cooldown_counts_every_execution_that_may_have_moved_money(db: Database, final: dict,
                                                                    counts: bool) -> None:
    user = trader(db, cooldown_seconds=3600)
    first = claimed(db, user)
    assert record(db, first["id"], **final)["outcome"] == "updated"
    result = claim(db, user, propose(db, user))
    if counts:
        assert_only_failure(result, "cooldown")
    else:
        assert_claimed(result)


# -- 5. anti_flip (G6) -------------------------------------------------------------------------
def test_anti_flip_rejects_opposite_side_within_window(db: Database) -> None:
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=86400)
    claimed(db, user, side="buy")
    result = claim(db, user, propose(db, user, side="sell"))
    assert_only_failure(result, "anti_flip")
    assert f"a paper buy order on {market_of(user)}" in reason(result, "anti_flip")


def test_anti_flip_passes_same_side_and_opposite_side_after_window(db: Database) -> None:
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=86400)
    first = claimed(db, user, side="buy")
    assert_claimed(claim(db, user, propose(db, user, side="buy")))
    sql(db, "update public.trade_executions set claimed_at = now() - interval '86401 seconds' "
             "where user_id = %s", (user,))
    assert first["side"] == "buy"
    assert_claimed(claim(db, user, propose(db, user, side="sell")))


# -- 6. daily_limits ---------------------------------------------------------------------------
def test_daily_limits_count_trades_per_utc_day(db: Database) -> None:
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=0, max_trades_per_day=2)
    claimed(db, user)
    assert_claimed(claim(db, user, propose(db, user)))  # second of two: passes
    result = claim(db, user, propose(db, user))
    assert_only_failure(result, "daily_limits")
    assert "2 paper orders today (UTC) already; the limit is 2 per day" in reason(result,
                                                                                "daily_limits")


def test_daily_limits_sum_amounts_including_this_order(db: Database) -> None:
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=0, max_daily_quote=25)
    claimed(db, user, amount="10")
    assert_claimed(claim(db, user, propose(db, user, amount="15")))  # exactly 25: passes
    result = claim(db, user, propose(db, user, amount="5"))
    assert_only_failure(result, "daily_limits")
    assert "above the daily limit of 25 EUR" in reason(result, "daily_limits")


def test_daily_limits_ignore_yesterday_and_the_other_mode(fresh_db: Database) -> None:
    db = fresh_db
    user = trader(db, cooldown_seconds=0, anti_flip_seconds=0, max_trades_per_day=1,
                  live_trading_enabled=True)
    set_controls(db, live_trading_allowed=True)
    first = claimed(db, user)
    assert_claimed(claim(db, user, propose(db, user), mode="live"))  # paper does not count
    sql(db, "update public.trade_executions set claimed_at = "
             "date_trunc('day', now(), 'UTC') - interval '1 second' where id = %s", (first["id"],))
    assert_claimed(claim(db, user, propose(db, user)))  # yesterday's paper order does not count


# -- 7. trading_enabled ------------------------------------------------------------------------
def test_trading_enabled_passes_for_paper_without_live_switches(fresh_db: Database) -> None:
    db = fresh_db
    user = trader(db)
    assert scalar(db, "select live_trading_allowed from public.system_controls") is False
    assert_claimed(claim(db, user, propose(db, user), mode="paper"))


def test_trading_enabled_passes_for_live_with_all_switches_on(fresh_db: Database) -> None:
    db = fresh_db
    user = trader(db, live_trading_enabled=True)
    set_controls(db, live_trading_allowed=True)
    result = claim(db, user, propose(db, user), mode="live")
    assert_claimed(result)
    assert result["execution"]["mode"] == "live"


@pytest.mark.parametrize(("case", "mode", "expected"), [
    ("halted", "paper", "trading is halted system-wide"),
    ("user_disabled", "paper", "trading is disabled in your settings"),
    ("live_not_allowed", "live", "live trading is not allowed system-wide"),
    ("user_live_disabled", "live", "live trading is not enabled for your account"),
])
def test_trading_enabled_rejects_when_any_switch_is_off(fresh_db: Database, case: str,
                                                        mode: str, expected: str) -> None:
    db = fresh_db
    user = trader(db, live_trading_enabled=case != "user_live_disabled")
    set_controls(db, live_trading_allowed=case != "live_not_allowed")
    if case == "halted":
        set_controls(db, trading_halted=True)
    if case == "user_disabled":
        set_settings(db, user, trading_enabled=False)
    result = claim(db, user, propose(db, user), mode=mode)
    assert_only_failure(result, "trading_enabled")
    assert reason(result, "trading_enabled") == expected


# -- all of them -------------------------------------------------------------------------------
def test_every_failing_validator_is_reported_in_spec_order(db: Database) -> None:
    user = trader(db, max_trades_per_day=1)
    claimed(db, user, side="sell")  # feeds cooldown, anti-flip and the daily count
    allow_market(db, market_of(user), enabled=False)  # allowlist
    set_settings(db, user, trading_enabled=False)  # trading_enabled
    proposal = propose(db, user, side="buy", amount="1000", approve=False)  # state, limits
    result = claim(db, user, proposal)
    assert result["outcome"] == "rejected"
    assert result["reason"] == "validation_failed"
    assert failed_checks(result) == CHECK_ORDER
    assert all(isinstance(e["reason"], str) and e["reason"] for e in result["failed_checks"])
    assert scalar(db, "select count(*) from public.trade_executions where user_id = %s",
                  (user,)) == 1
    assert scalar(db, "select status from public.trade_proposals where id = %s", (proposal,)) == \
        "pending"


def test_rejection_leaves_the_approved_proposal_claimable_later(db: Database) -> None:
    user = trader(db, cooldown_seconds=3600)
    first = claimed(db, user)
    proposal = propose(db, user)
    key = "retry-after-cooldown"
    assert_only_failure(claim(db, user, proposal, key=key), "cooldown")
    assert scalar(db, "select status from public.trade_proposals where id = %s", (proposal,)) == \
        "approved"
    backdate(db, first["id"], 3601)
    assert_claimed(claim(db, user, proposal, key=key))
