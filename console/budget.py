"""`oracle budget USER`: a user's GPT budget as the scanner sees it (check_gpt_budget: spend vs the
hourly and daily limits, reserving nothing) and their spend history (get_budget_analytics: per day
and per model). Both are RPCs, called as service_role."""

from __future__ import annotations

from typing import Any

from console.database import OpsError
from console.users import User
from shared.rpc.port import RpcPort

MAX_DAYS = 366


def budget(rpc: RpcPort, user: User, days: int) -> dict[str, Any]:
    check = rpc.call("check_gpt_budget", {"p_user_id": user.id})
    analytics = rpc.call("get_budget_analytics", {"p_user_id": user.id, "p_days": days})
    if not isinstance(check, dict) or not isinstance(analytics, dict):
        raise OpsError("unexpected answer from the budget RPCs")
    if check.get("reason") == "not_found" or analytics.get("status") == "not_found":
        raise OpsError(f"user {user.label} has no trading_settings row")
    return {"user_id": user.id, "email": user.email, "check": check, "analytics": analytics}
