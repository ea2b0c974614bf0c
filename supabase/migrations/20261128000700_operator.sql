/*
 * Operator: the system kill switch, with the operator's reason in the audit log (`oracle halt` /
 * `oracle resume`).
 *
 *   set_trading_halted     service-only; sets system_controls.trading_halted and audits the
 *                          request with its reason (G9), whether or not it changed anything
 *
 * The system_controls_audit trigger (foundation) already records every change of the row: which
 * columns, from → to, who. A trigger cannot know why. This function writes the why in the same
 * transaction, just before the change it causes:
 *
 *   system_controls.halt | system_controls.resume   {reason, changed, trading_halted_before,
 *                                                    trading_halted, role, db_user}
 *   system_controls.changed                          (the trigger; only when the value changed)
 *
 * Idempotent: halting a halted system changes nothing and leaves only the request row
 * (changed = false), so the log shows every time someone pulled the switch, and why.
 *
 * What a halt stops: every new claim — claim_trade_execution's trading_enabled validator refuses
 * with "trading is halted system-wide". What it does not stop: executions already claimed finish
 * and are reconciled as usual (G10); scans and proposals go on (they move no money).
 */

set lock_timeout = '5s';  -- a queued DDL lock fails the push instead of blocking writes

-- =============================================================================================
-- Section - set_trading_halted (service-only)
-- =============================================================================================

-- SECURITY INVOKER: service_role already holds UPDATE on system_controls and EXECUTE on
-- private.audit, so the function needs no rights of its own; anon and authenticated may not call it.
create or replace function public.set_trading_halted(p_halted boolean, p_reason text) returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_reason text := pg_catalog.btrim(p_reason);
  v_before public.system_controls;
  v_after public.system_controls;
  v_changed boolean;
  v_audit_id bigint;
begin
  if p_halted is null then
    raise exception 'p_halted is required' using errcode = '22023';
  end if;
  if v_reason is null or v_reason = '' or pg_catalog.length(v_reason) > 500 then
    raise exception 'p_reason must be 1..500 characters (why the switch is pulled)'
      using errcode = '22023';
  end if;

  -- The row lock orders concurrent halts and resumes; each sees the state the previous one left.
  select * into v_before from public.system_controls c where c.id for update;
  if not found then
    raise exception 'system_controls has no row' using errcode = '55000';
  end if;
  v_changed := v_before.trading_halted is distinct from p_halted;

  v_audit_id := private.audit(
    case when p_halted then 'system_controls.halt' else 'system_controls.resume' end,
    null, null, null,
    pg_catalog.jsonb_build_object('reason', v_reason, 'changed', v_changed,
                                  'trading_halted_before', v_before.trading_halted,
                                  'trading_halted', p_halted,
                                  'role', auth.role(), 'db_user', session_user));

  if v_changed then
    update public.system_controls c set trading_halted = p_halted where c.id
    returning * into v_after;
  else
    v_after := v_before;
  end if;

  return pg_catalog.jsonb_build_object(
    'trading_halted', v_after.trading_halted,
    'live_trading_allowed', v_after.live_trading_allowed,
    'max_order_quote', v_after.max_order_quote,
    'updated_at', v_after.updated_at,
    'changed', v_changed,
    'audit_id', v_audit_id);
end;
$$;
revoke execute on function public.set_trading_halted(boolean, text) from public, anon, authenticated;
grant execute on function public.set_trading_halted(boolean, text) to service_role;
