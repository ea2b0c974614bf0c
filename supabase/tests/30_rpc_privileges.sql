/*
 * G8 for the RPCs: money-moving and operator functions are not callable from a browser.
 *   - every SPEC §3 RPC (and the operator's set_trading_halted) exists with its exact signature
 *     and return type;
 *   - service-only RPCs (SPEC §3: "revoke execute … from public, anon, authenticated; grant execute
 *     … to service_role"): no EXECUTE for PUBLIC, anon or authenticated; EXECUTE for service_role;
 *     and a real call as anon and as a signed-in user fails with 42501, every one of them;
 *   - decide_trade_proposal: authenticated yes, anon no; it acts only on the caller's own proposals;
 *   - get_budget_analytics: authenticated (own figures only) and service_role yes, anon no;
 *   - the catalog: no function in public is executable by anon, and the only ones a signed-in
 *     user may execute are the two above (a new RPC that forgets its revoke fails here).
 */
begin;
\ir _lib/helpers.psql

do $$
begin
  perform tap.create_user('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
  perform tap.create_user('b0000000-0000-4000-8000-000000000002', 'other@example.test');
end
$$;
insert into public.market_allowlist (market, enabled) values ('TAPA-EUR', true);
insert into public.trading_allowlist (user_id, market) values
  ('a0000000-0000-4000-8000-000000000001', 'TAPA-EUR'), ('b0000000-0000-4000-8000-000000000002', 'TAPA-EUR');
insert into public.scan_jobs (id, user_id, market, interval_seconds)
values ('5a000000-0000-4000-8000-00000000000a', 'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR', 60);
insert into public.trade_proposals (id, user_id, market, side, amount_quote, confidence, source,
                                    status, expires_at)
values ('7a000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR',
        'buy', 10, 0.5, 'manual', 'pending', now() + interval '1 hour'),
       ('7a000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR',
        'buy', 10, 0.5, 'manual', 'approved', now() + interval '1 hour'),
       ('7b000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000002', 'TAPA-EUR',
        'sell', 10, 0.5, 'manual', 'pending', now() + interval '1 hour');
insert into public.trade_executions (id, proposal_id, user_id, idempotency_key, mode, market, side,
                                     amount_quote, status, claimed_at)
values ('ea000000-0000-4000-8000-000000000002', '7a000000-0000-4000-8000-000000000002',
        'a0000000-0000-4000-8000-000000000001', 'key-a2', 'paper', 'TAPA-EUR', 'buy', 10, 'claimed',
        now() - interval '1 hour');
update public.trade_proposals set status = 'executing' where id = '7a000000-0000-4000-8000-000000000002';
insert into public.gpt_usage_log (id, user_id, model, status, reserved_usd)
values ('6a000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'gpt-4o-mini', 'reserved', 0.01),
       ('6b000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000002', 'gpt-4o-mini', 'reserved', 0.02);

-- =============================================================================================
-- Section - the RPCs: name, argument types, return type, who may call, and a real call
--   callers   'service'       service-only (SPEC §3)
--             'authenticated' signed-in users (and, for get_budget_analytics, service_role)
--   call      a call as a caller would make it, on user A's rows (used for the 42501 attempts)
-- =============================================================================================
create temp table rpcs (ord serial, fn text, args text[], returns text, callers text, call text);
insert into rpcs (fn, args, returns, callers, call) values
  ('claim_trade_execution', '{uuid,uuid,text,text,boolean,integer,integer}', 'jsonb', 'service', null),
  ('record_execution_result', '{uuid,jsonb}', 'jsonb', 'service',
   $$select public.record_execution_result('ea000000-0000-4000-8000-000000000002', '{"status": "failed", "error_code": "x"}')$$),
  ('list_unsettled_executions', '{integer,integer}', 'setof trade_executions', 'service',
   $$select * from public.list_unsettled_executions(0, 50)$$),
  ('list_sweep_markets', '{integer}', 'jsonb', 'service',
   $$select public.list_sweep_markets(3600)$$),
  ('record_exchange_orders', '{jsonb}', 'jsonb', 'service',
   $$select public.record_exchange_orders('[]')$$),
  ('acknowledge_exchange_discrepancy', '{uuid,text}', 'jsonb', 'service',
   $$select public.acknowledge_exchange_discrepancy('ea000000-0000-4000-8000-000000000002', 'from a browser')$$),
  ('lease_auto_approved_proposals', '{text,integer,integer}', 'setof record', 'service',
   $$select * from public.lease_auto_approved_proposals('browser-dispatcher', 100, 30)$$),
  ('release_auto_execution_leases', '{text}', 'integer', 'service',
   $$select public.release_auto_execution_leases('browser-dispatcher')$$),
  ('create_trade_proposal', '{uuid,text,text,numeric,numeric,text,text,text,numeric,uuid,integer}', 'jsonb', 'service',
   $$select public.create_trade_proposal('a0000000-0000-4000-8000-000000000001', 'TAPA-EUR', 'buy', 10, 1, 'x', 'manual')$$),
  ('claim_due_scan_jobs', '{text,integer,integer}', 'setof scan_jobs', 'service',
   $$select * from public.claim_due_scan_jobs('browser-worker', 10, 300)$$),
  ('heartbeat_scan_job', '{uuid,text,integer}', 'boolean', 'service',
   $$select public.heartbeat_scan_job('5a000000-0000-4000-8000-00000000000a', 'browser-worker', 300)$$),
  ('release_job_lock', '{uuid,text,boolean,text}', 'jsonb', 'service',
   $$select public.release_job_lock('5a000000-0000-4000-8000-00000000000a', 'browser-worker', true, null)$$),
  ('cleanup_expired_locks', '{}', 'integer', 'service', $$select public.cleanup_expired_locks()$$),
  ('debug_check_locks', '{}', 'setof record', 'service', $$select * from public.debug_check_locks()$$),
  ('reserve_gpt_budget', '{uuid,text,integer,integer,uuid}', 'jsonb', 'service',
   $$select public.reserve_gpt_budget('a0000000-0000-4000-8000-000000000001', 'gpt-4o-mini', 100, 100, null)$$),
  ('settle_gpt_usage', '{uuid,integer,integer,integer,text}', 'jsonb', 'service',
   $$select public.settle_gpt_usage('6a000000-0000-4000-8000-000000000001', 0, 0, 0, null)$$),
  ('check_gpt_budget', '{uuid}', 'jsonb', 'service',
   $$select public.check_gpt_budget('a0000000-0000-4000-8000-000000000001')$$),
  ('clear_todays_budget', '{uuid}', 'integer', 'service',
   $$select public.clear_todays_budget('a0000000-0000-4000-8000-000000000001')$$),
  ('run_maintenance', '{}', 'jsonb', 'service', $$select public.run_maintenance()$$),
  ('set_trading_halted', '{boolean,text}', 'jsonb', 'service',
   $$select public.set_trading_halted(false, 'resumed from a browser')$$),
  ('get_scan_context', '{uuid,text,text}', 'jsonb', 'service',
   $$select public.get_scan_context('5a000000-0000-4000-8000-00000000000a', 'browser-worker', 'paper')$$),
  ('create_scan_proposal', '{uuid,text,text,numeric,numeric,text,text,text,numeric,integer}', 'jsonb', 'service',
   $$select public.create_scan_proposal('5a000000-0000-4000-8000-00000000000a', 'browser-worker', 'buy', 10, 0.9, 'x', 'manual')$$),
  ('heartbeat_scan_jobs', '{text,jsonb,integer}', 'jsonb', 'service',
   $$select public.heartbeat_scan_jobs('browser-worker', '["5a000000-0000-4000-8000-00000000000a"]', 300)$$),
  ('get_scan_contexts', '{text,jsonb,text}', 'jsonb', 'service',
   $$select public.get_scan_contexts('browser-worker', '["5a000000-0000-4000-8000-00000000000a"]', 'paper')$$),
  ('create_scan_proposals', '{text,jsonb,integer}', 'jsonb', 'service',
   $$select public.create_scan_proposals('browser-worker', '[{"job_id": "5a000000-0000-4000-8000-00000000000a", "side": "buy", "amount_quote": "10", "confidence": "0.9", "source": "manual"}]', 900)$$),
  ('claim_oracle_answer', '{text,text,text,text,text,text,text,text,integer,integer,integer,jsonb}', 'jsonb', 'service',
   $$select public.claim_oracle_answer('browser-worker', 'TAPA-EUR', '1h', repeat('a', 64), 'openai', 'gpt-4o-mini', 'p', 's', 1, 1, 60, null)$$),
  ('record_oracle_answer', '{uuid,text,text,jsonb,integer,integer,integer,text,text}', 'jsonb', 'service',
   $$select public.record_oracle_answer('0a000000-0000-4000-8000-000000000001', 'browser-worker', 'failed', null, 0, 0, 0)$$),
  ('reserve_gpt_budgets', '{uuid,jsonb}', 'jsonb', 'service',
   $$select public.reserve_gpt_budgets('0a000000-0000-4000-8000-000000000001', '[{"user_id": "a0000000-0000-4000-8000-000000000001"}]')$$),
  ('settle_oracle_answers', '{jsonb}', 'jsonb', 'service',
   $$select public.settle_oracle_answers('["0a000000-0000-4000-8000-000000000001"]')$$),
  ('decide_trade_proposal', '{uuid,text}', 'jsonb', 'authenticated',
   $$select public.decide_trade_proposal('7a000000-0000-4000-8000-000000000001', 'approve')$$),
  ('get_budget_analytics', '{uuid,integer}', 'jsonb', 'authenticated',
   $$select public.get_budget_analytics('a0000000-0000-4000-8000-000000000001', 7)$$);
update rpcs set call = $$select public.claim_trade_execution('a0000000-0000-4000-8000-000000000001',
  '7a000000-0000-4000-8000-000000000001', 'browser-key', 'live')$$ where fn = 'claim_trade_execution';

create temp table signatures as
select r.*, format('public.%s(%s)', r.fn, array_to_string(r.args, ', ')) as signature,
       to_regprocedure(format('public.%I(%s)', r.fn, array_to_string(r.args, ', '))) as oid
from rpcs r;

-- Every function in public that is not a trigger function and does not belong to an extension.
create temp table public_functions as
select p.oid, p.oid::regprocedure::text as signature, p.proname::text as fn
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
where n.nspname = 'public'
  and p.prorettype <> 'trigger'::regtype
  and not exists (select 1 from pg_depend d
                  where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e');

-- Real calls: every RPC as anon, every service-only RPC as a signed-in user (on their own rows).
create temp table calls (ord serial, fn text, actor text, outcome text);
insert into calls (fn, actor, outcome)
select s.fn, 'anon', tap.attempt('anon', null, s.call) from signatures s order by s.ord;
insert into calls (fn, actor, outcome)
select s.fn, 'a signed-in user', tap.attempt('authenticated', 'a0000000-0000-4000-8000-000000000001', s.call)
from signatures s where s.callers = 'service' order by s.ord;

select plan(
    (select count(*)::int from signatures) * 5                          -- exists, returns, PUBLIC, anon, authenticated
  + (select count(*)::int from signatures where callers = 'service')    -- service_role may execute
  + 1                                                                   -- get_budget_analytics for service_role
  + (select count(*)::int from calls)
  + (select count(*)::int from public_functions) * 2
  + 2 + 4 + 5                                                           -- explicit throws_ok, decide, analytics
);

select has_function('public', fn::name, args::name[], format('%s exists', signature))
from signatures order by ord;

select is(
  (select case when p.proretset then 'setof ' else '' end
          || case when p.proretset and t.typtype = 'p' then 'record'
                  else format_type(p.prorettype, null) end
   from pg_proc p join pg_type t on t.oid = p.prorettype where p.oid = s.oid),
  s.returns,
  format('%s returns %s', s.signature, s.returns))
from signatures s order by ord;

select ok(
  s.oid is not null and not exists (
    select 1 from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
    where p.oid = s.oid and a.grantee = 0 and a.privilege_type = 'EXECUTE'),
  format('PUBLIC cannot execute %s', s.signature))
from signatures s order by ord;

select function_privs_are('public', fn::name, args::name[], 'anon', '{}'::name[],
                          format('anon cannot execute %s', signature))
from signatures order by ord;

select function_privs_are('public', fn::name, args::name[], 'authenticated',
                          case when callers = 'service' then '{}'::name[] else '{EXECUTE}'::name[] end,
                          format('authenticated %s execute %s',
                                 case when callers = 'service' then 'cannot' else 'can' end, signature))
from signatures order by ord;

select function_privs_are('public', fn::name, args::name[], 'service_role', '{EXECUTE}'::name[],
                          format('service_role can execute %s', signature))
from signatures where callers = 'service' order by ord;

select function_privs_are('public', 'get_budget_analytics', '{uuid,integer}'::name[], 'service_role',
                          '{EXECUTE}'::name[], 'service_role can execute public.get_budget_analytics(uuid, integer)');

select case when outcome = 'denied' then ok(true, d)
            else ok(false, d) || E'\n' || diag('got: ' || outcome) end
from (select c.*, format('%s calling public.%s is refused with 42501', actor, fn) as d from calls c) x
order by ord;

-- The catalog, whoever added the function.
select ok(not has_function_privilege('anon', oid, 'execute'),
          format('anon cannot execute %s (catalog)', signature))
from public_functions order by signature;
select ok(has_function_privilege('authenticated', oid, 'execute') = (fn in ('decide_trade_proposal', 'get_budget_analytics')),
          format('authenticated %s execute %s (catalog)',
                 case when fn in ('decide_trade_proposal', 'get_budget_analytics') then 'can' else 'cannot' end,
                 signature))
from public_functions order by signature;

-- =============================================================================================
-- Section - the calls, written out as a browser would make them
-- =============================================================================================
set local role anon;
select set_config('request.jwt.claims', json_build_object('role', 'anon')::text, true) \g /dev/null
select throws_ok(
  $$select public.decide_trade_proposal('7a000000-0000-4000-8000-000000000001', 'approve')$$,
  '42501', null, 'anon: decide_trade_proposal is refused (42501)');
reset role;

set local role authenticated;
select set_config('request.jwt.claims',
  json_build_object('sub', 'a0000000-0000-4000-8000-000000000001', 'role', 'authenticated')::text, true) \g /dev/null
select throws_ok(
  $$select public.claim_trade_execution('a0000000-0000-4000-8000-000000000001',
      '7a000000-0000-4000-8000-000000000001', 'browser-key', 'live')$$,
  '42501', null, 'a signed-in user: claim_trade_execution on their own proposal is refused (42501)');

-- decide_trade_proposal: the caller's own pending proposal only.
select is(
  public.decide_trade_proposal('7a000000-0000-4000-8000-000000000001', 'approve') ->> 'outcome',
  'decided', 'decide_trade_proposal: the owner approves their own pending proposal');
select is(
  public.decide_trade_proposal('7b000000-0000-4000-8000-000000000001', 'reject') ->> 'outcome',
  'not_found', 'decide_trade_proposal: another user''s proposal is not_found');

-- get_budget_analytics: own figures yes, anyone else's nothing.
select is(
  public.get_budget_analytics('a0000000-0000-4000-8000-000000000001', 7) ->> 'status',
  'ok', 'get_budget_analytics: a signed-in user gets their own figures');
select ok(
  coalesce(public.get_budget_analytics('b0000000-0000-4000-8000-000000000002', 7)::text, '')
    !~ '(0\.02|b0000000)',
  'get_budget_analytics: another user''s figures are not returned to a signed-in user');
reset role;

-- As the superuser: the effects of the calls above.
select is(
  (select status from public.trade_proposals where id = '7a000000-0000-4000-8000-000000000001'),
  'approved', 'decide_trade_proposal: the owner''s decision landed');
select row_eq(
  $$select status, decided_by, decided_at from public.trade_proposals where id = '7b000000-0000-4000-8000-000000000001'$$,
  row('pending'::text, null::text, null::timestamptz),
  'decide_trade_proposal: the other user''s proposal is untouched');
select is(
  (select count(*)::int from public.trade_executions),
  1, 'no refused RPC call created an execution');

set local role service_role;
select set_config('request.jwt.claims', json_build_object('role', 'service_role')::text, true) \g /dev/null
select is(
  public.get_budget_analytics('b0000000-0000-4000-8000-000000000002', 7) ->> 'status',
  'ok', 'get_budget_analytics: service_role gets any user''s figures');
select is(
  (public.check_gpt_budget('a0000000-0000-4000-8000-000000000001') ->> 'spent_day_usd')::numeric,
  0.01, 'check_gpt_budget: service_role can call a service-only RPC (positive control)');
reset role;

select * from finish();
rollback;
