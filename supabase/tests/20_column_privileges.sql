/*
 * What a signed-in user may change on their OWN rows, column by column (SPEC §3):
 *   - trading_settings: the risk columns yes (positive control), the operator's columns
 *     (live_trading_enabled, gpt_daily_budget_usd, gpt_hourly_budget_usd) and user_id never;
 *     a new auth user gets the safe defaults; the row cannot be deleted or forged;
 *   - scan_jobs: `enabled` / `interval_seconds` yes; the lease and bookkeeping columns (locked_by,
 *     locked_at, lock_expires_at, attempts, consecutive_failures, last_*, next_run_at), user_id and
 *     market never, neither on update nor on insert; new jobs only for the user's own allowlisted,
 *     globally enabled markets (G4 at the door);
 *   - trading_allowlist: `enabled` / `max_order_quote` yes, the key never;
 *   - the server-written tables (proposals, executions, ledger, GPT usage, audit): read only, even
 *     one's own rows — a user cannot approve, settle, release budget or rewrite history directly.
 * Attempts run as PostgREST runs them (tap.attempt: role authenticated + the user's claims).
 */
begin;
\ir _lib/helpers.psql

do $$
begin
  perform tap.create_user('a0000000-0000-4000-8000-000000000001', 'owner@example.test');
  perform tap.create_user('b0000000-0000-4000-8000-000000000002', 'other@example.test');
end
$$;

insert into public.market_allowlist (market, enabled) values
  ('TAPA-EUR', true), ('TAPB-EUR', true), ('TAPN-EUR', true), ('TAPOFF-EUR', false);
insert into public.trading_allowlist (user_id, market) values
  ('a0000000-0000-4000-8000-000000000001', 'TAPA-EUR'),
  ('a0000000-0000-4000-8000-000000000001', 'TAPB-EUR'),
  ('a0000000-0000-4000-8000-000000000001', 'TAPOFF-EUR');
insert into public.scan_jobs (id, user_id, market, interval_seconds, next_run_at)
values ('5a000000-0000-4000-8000-00000000000a', 'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR',
        300, '2030-01-01T00:00:00Z');
insert into public.trade_proposals (id, user_id, market, side, amount_quote, confidence, source,
                                    status, expires_at)
values ('7a000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR',
        'buy', 10, 0.5, 'manual', 'pending', now() + interval '1 hour'),
       ('7a000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR',
        'buy', 10, 0.9, 'rules', 'executing', now() + interval '1 hour');
insert into public.trade_executions (id, proposal_id, user_id, idempotency_key, mode, market, side,
                                     amount_quote, status)
values ('ea000000-0000-4000-8000-000000000002', '7a000000-0000-4000-8000-000000000002',
        'a0000000-0000-4000-8000-000000000001', 'key-a2', 'paper', 'TAPA-EUR', 'buy', 10, 'submitted');
insert into public.trade_history (execution_id, proposal_id, user_id, market, side, amount,
                                  amount_quote, price, mode)
values ('ea000000-0000-4000-8000-000000000002', '7a000000-0000-4000-8000-000000000002',
        'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR', 'buy', 0.0002, 10, 50000, 'paper');
insert into public.gpt_usage_log (id, user_id, model, status, reserved_usd)
values ('6a000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
        'gpt-4o-mini', 'reserved', 0.2);
insert into public.execution_audit_log (user_id, event) values
  ('a0000000-0000-4000-8000-000000000001', 'tap.seed');

-- =============================================================================================
-- Section - the cases: (what, statement run as user A, expected)
--   expected 'changed'  : exactly one row changed (positive control)
--   expected 'blocked'  : denied (42501) or 0 rows
--   expected 'rejected' : refused by a CHECK constraint (23514) — the value, not the privilege
-- =============================================================================================
create temp table cases (ord serial, what text, sql text, expected text);

-- trading_settings: the user's risk columns (SPEC §3 list) — allowed on their own row.
insert into cases (what, sql, expected)
select format('trading_settings: the user can update their own %s', col),
       format('update public.trading_settings set %I = %s where user_id = %L', col, val,
              'a0000000-0000-4000-8000-000000000001'),
       'changed'
from (values ('trading_enabled', 'true'), ('auto_execute', 'true'), ('min_confidence', '0.85'),
             ('max_order_quote', '25'), ('max_daily_quote', '100'), ('max_trades_per_day', '5'),
             ('cooldown_seconds', '7200'), ('anti_flip_seconds', '3600')) as risk(col, val);

-- trading_settings: the operator's columns and the key — never, even on their own row.
insert into cases (what, sql, expected)
select format('trading_settings: the user cannot set their own %s', col),
       format('update public.trading_settings set %I = %s where user_id = %L', col, val,
              'a0000000-0000-4000-8000-000000000001'),
       'blocked'
from (values ('live_trading_enabled', 'true'), ('gpt_daily_budget_usd', '1000'),
             ('gpt_hourly_budget_usd', '1000'),
             ('user_id', quote_literal('b0000000-0000-4000-8000-000000000002'))) as op(col, val);
insert into cases (what, sql, expected) values
  ('trading_settings: the user cannot delete their own settings row',
   $$delete from public.trading_settings where user_id = 'a0000000-0000-4000-8000-000000000001'$$, 'blocked'),
  ('trading_settings: the user cannot upsert their own row with operator values',
   $$insert into public.trading_settings (user_id, live_trading_enabled, gpt_daily_budget_usd)
     values ('a0000000-0000-4000-8000-000000000001', true, 1000)
     on conflict (user_id) do update set live_trading_enabled = true, gpt_daily_budget_usd = 1000$$, 'blocked');

-- scan_jobs: the lease and bookkeeping columns, the owner and the market — never.
insert into cases (what, sql, expected)
select format('scan_jobs: the user cannot set %s on their own job', col),
       format('update public.scan_jobs set %I = %s where id = %L', col, val,
              '5a000000-0000-4000-8000-00000000000a'),
       'blocked'
from (values ('locked_by', quote_literal('user-worker')), ('locked_at', 'now()'),
             ('lock_expires_at', 'now() + interval ''1 day'''), ('attempts', '0'),
             ('consecutive_failures', '0'), ('last_run_at', 'now()'), ('last_success_at', 'now()'),
             ('last_error', 'null'), ('next_run_at', 'now() - interval ''1 day'''),
             ('user_id', quote_literal('b0000000-0000-4000-8000-000000000002')),
             ('market', quote_literal('TAPB-EUR'))) as lock_cols(col, val);
insert into cases (what, sql, expected) values
  ('scan_jobs: the user cannot take the lease of their own job (all three lease columns at once)',
   $$update public.scan_jobs set locked_by = 'user-worker', locked_at = now(),
       lock_expires_at = now() + interval '1 day' where id = '5a000000-0000-4000-8000-00000000000a'$$, 'blocked'),
  ('scan_jobs: the user cannot create a job with a lease',
   $$insert into public.scan_jobs (user_id, market, interval_seconds, locked_by, locked_at, lock_expires_at)
     values ('a0000000-0000-4000-8000-000000000001', 'TAPB-EUR', 60, 'user-worker', now(),
             now() + interval '1 day')$$, 'blocked'),
  ('scan_jobs: the user cannot create a job with its bookkeeping (attempts, next_run_at)',
   $$insert into public.scan_jobs (user_id, market, interval_seconds, attempts, next_run_at)
     values ('a0000000-0000-4000-8000-000000000001', 'TAPB-EUR', 60, 0, now() - interval '1 day')$$, 'blocked'),
  ('scan_jobs: the user cannot create a job for a market missing from their own allowlist',
   $$insert into public.scan_jobs (user_id, market, interval_seconds)
     values ('a0000000-0000-4000-8000-000000000001', 'TAPN-EUR', 60)$$, 'blocked'),
  ('scan_jobs: the user cannot create a job for a market the operator disabled',
   $$insert into public.scan_jobs (user_id, market, interval_seconds)
     values ('a0000000-0000-4000-8000-000000000001', 'TAPOFF-EUR', 60)$$, 'blocked'),
  ('scan_jobs: an interval under 60 s is rejected',
   $$update public.scan_jobs set interval_seconds = 30 where id = '5a000000-0000-4000-8000-00000000000a'$$, 'rejected'),
  ('scan_jobs: the user can switch their own job off',
   $$update public.scan_jobs set enabled = false where id = '5a000000-0000-4000-8000-00000000000a'$$, 'changed'),
  ('scan_jobs: the user can change their own job''s interval',
   $$update public.scan_jobs set interval_seconds = 120 where id = '5a000000-0000-4000-8000-00000000000a'$$, 'changed'),
  ('scan_jobs: the user can create a job for their own allowlisted market',
   $$insert into public.scan_jobs (user_id, market, interval_seconds)
     values ('a0000000-0000-4000-8000-000000000001', 'TAPB-EUR', 60)$$, 'changed'),
  ('scan_jobs: the user can delete their own job',
   $$delete from public.scan_jobs where user_id = 'a0000000-0000-4000-8000-000000000001' and market = 'TAPB-EUR'$$,
   'changed');

-- trading_allowlist: the user manages their own rows, but cannot move a row to another user.
insert into cases (what, sql, expected) values
  ('trading_allowlist: the user can disable a market on their own allowlist',
   $$update public.trading_allowlist set enabled = false, max_order_quote = 20
     where user_id = 'a0000000-0000-4000-8000-000000000001' and market = 'TAPB-EUR'$$, 'changed'),
  ('trading_allowlist: the user can add a market to their own allowlist',
   $$insert into public.trading_allowlist (user_id, market) values ('a0000000-0000-4000-8000-000000000001', 'TAPN-EUR')$$,
   'changed'),
  ('trading_allowlist: the user cannot hand their row to another user',
   $$update public.trading_allowlist set user_id = 'b0000000-0000-4000-8000-000000000002'
     where user_id = 'a0000000-0000-4000-8000-000000000001' and market = 'TAPA-EUR'$$, 'blocked'),
  ('trading_allowlist: the user cannot rename the market of their row',
   $$update public.trading_allowlist set market = 'TAPN-EUR'
     where user_id = 'a0000000-0000-4000-8000-000000000001' and market = 'TAPA-EUR'$$, 'blocked');

-- The server-written tables: read only for users, their own rows included.
insert into cases (what, sql, expected) values
  ('trade_proposals: the user cannot approve their own proposal directly (only decide_trade_proposal)',
   $$update public.trade_proposals set status = 'approved', decided_by = 'user', decided_at = now()
     where id = '7a000000-0000-4000-8000-000000000001'$$, 'blocked'),
  ('trade_proposals: the user cannot raise the amount of their own proposal',
   $$update public.trade_proposals set amount_quote = 10000 where id = '7a000000-0000-4000-8000-000000000001'$$, 'blocked'),
  ('trade_proposals: the user cannot insert an approved proposal for themselves',
   $$insert into public.trade_proposals (user_id, market, side, amount_quote, confidence, source, status,
                                         expires_at, decided_at, decided_by)
     values ('a0000000-0000-4000-8000-000000000001', 'TAPA-EUR', 'buy', 10, 1, 'manual', 'approved',
             now() + interval '1 hour', now(), 'user')$$, 'blocked'),
  ('trade_proposals: the user cannot delete their own proposal',
   $$delete from public.trade_proposals where id = '7a000000-0000-4000-8000-000000000001'$$, 'blocked'),
  ('trade_executions: the user cannot change the status of their own execution',
   $$update public.trade_executions set status = 'failed', completed_at = now()
     where id = 'ea000000-0000-4000-8000-000000000002'$$, 'blocked'),
  ('trade_executions: the user cannot insert an execution for themselves',
   $$insert into public.trade_executions (proposal_id, user_id, idempotency_key, mode, market, side, amount_quote)
     values ('7a000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'own-key',
             'paper', 'TAPA-EUR', 'buy', 10)$$, 'blocked'),
  ('trade_executions: the user cannot delete their own execution',
   $$delete from public.trade_executions where id = 'ea000000-0000-4000-8000-000000000002'$$, 'blocked'),
  ('trade_history: the user cannot rewrite their own ledger row',
   $$update public.trade_history set amount_quote = 1, price = 1
     where execution_id = 'ea000000-0000-4000-8000-000000000002'$$, 'blocked'),
  ('trade_history: the user cannot insert a ledger row for themselves',
   $$insert into public.trade_history (execution_id, proposal_id, user_id, market, side, amount, amount_quote,
                                       price, mode)
     values ('ea000000-0000-4000-8000-000000000002', '7a000000-0000-4000-8000-000000000002',
             'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR', 'buy', 1, 1, 1, 'paper')$$, 'blocked'),
  ('trade_history: the user cannot delete their own ledger row',
   $$delete from public.trade_history where execution_id = 'ea000000-0000-4000-8000-000000000002'$$, 'blocked'),
  ('gpt_usage_log: the user cannot release their own reservation (G7)',
   $$update public.gpt_usage_log set status = 'released', released_at = now()
     where id = '6a000000-0000-4000-8000-000000000001'$$, 'blocked'),
  ('gpt_usage_log: the user cannot settle their own reservation at zero cost (G7)',
   $$update public.gpt_usage_log set status = 'settled', settled_at = now(), cost_usd = 0, prompt_tokens = 0,
       cached_prompt_tokens = 0, completion_tokens = 0 where id = '6a000000-0000-4000-8000-000000000001'$$, 'blocked'),
  ('gpt_usage_log: the user cannot insert usage rows for themselves',
   $$insert into public.gpt_usage_log (user_id, model, status, reserved_usd)
     values ('a0000000-0000-4000-8000-000000000001', 'gpt-4o-mini', 'reserved', 0)$$, 'blocked'),
  ('gpt_usage_log: the user cannot delete their own usage rows (G7)',
   $$delete from public.gpt_usage_log where user_id = 'a0000000-0000-4000-8000-000000000001'$$, 'blocked'),
  ('execution_audit_log: the user cannot append to their own audit trail',
   $$insert into public.execution_audit_log (user_id, event) values ('a0000000-0000-4000-8000-000000000001', 'tap.forged')$$,
   'blocked'),
  ('execution_audit_log: the user cannot rewrite their own audit rows',
   $$update public.execution_audit_log set event = 'tap.rewritten' where user_id = 'a0000000-0000-4000-8000-000000000001'$$,
   'blocked'),
  ('execution_audit_log: the user cannot delete their own audit rows',
   $$delete from public.execution_audit_log where user_id = 'a0000000-0000-4000-8000-000000000001'$$, 'blocked');

-- Run every case as user A, in order (the positive controls build on each other).
alter table cases add column outcome text;
do $$
declare
  r record;
begin
  for r in select * from cases order by ord loop
    update cases set outcome = tap.attempt('authenticated', 'a0000000-0000-4000-8000-000000000001', r.sql)
     where ord = r.ord;
  end loop;
end
$$;

-- The safe defaults of SPEC §3, for a user created now.
do $$ begin perform tap.create_user('d0000000-0000-4000-8000-000000000004', 'new@example.test'); end $$;
create temp table defaults (ord serial, col text, expected text);
insert into defaults (col, expected) values
  ('trading_enabled', 'false'), ('live_trading_enabled', 'false'), ('auto_execute', 'false'),
  ('min_confidence', '0.70'), ('max_order_quote', '50'), ('max_daily_quote', '200'),
  ('max_trades_per_day', '10'), ('cooldown_seconds', '3600'), ('anti_flip_seconds', '86400'),
  ('gpt_daily_budget_usd', '1.00'), ('gpt_hourly_budget_usd', '0.25');

select plan(
    (select count(*)::int from cases)
  + 4                                           -- risk values landed, operator columns untouched,
                                                -- the lease untouched, the row still exists
  + 1 + (select count(*)::int from defaults)    -- the new user's settings row and its defaults
);

select case when pass then ok(true, what)
            else ok(false, what) || E'\n' || diag('expected ' || expected || ', got: ' || outcome || E'\nsql: ' || sql) end
from (
  select c.*,
         case expected
           when 'changed' then outcome = 'ok:1'
           when 'blocked' then outcome in ('denied', 'ok:0')
           when 'rejected' then outcome like 'error:23514:%'
         end as pass
  from cases c
) x
order by ord;

-- As the superuser: the positive controls really changed the risk columns …
select row_eq(
  $$select trading_enabled, auto_execute, min_confidence, max_order_quote, max_daily_quote,
           max_trades_per_day, cooldown_seconds, anti_flip_seconds
    from public.trading_settings where user_id = 'a0000000-0000-4000-8000-000000000001'$$,
  row(true, true, 0.85::numeric, 25::numeric, 100::numeric, 5, 7200, 3600),
  'trading_settings: the user''s own risk column updates landed'
);
-- … and nothing else.
select row_eq(
  $$select live_trading_enabled, gpt_daily_budget_usd, gpt_hourly_budget_usd
    from public.trading_settings where user_id = 'a0000000-0000-4000-8000-000000000001'$$,
  row(false, 1.00::numeric, 0.25::numeric),
  'trading_settings: the operator''s columns still hold the defaults'
);
select row_eq(
  $$select locked_by, locked_at, lock_expires_at, attempts, consecutive_failures, last_run_at,
           last_success_at, last_error, next_run_at, user_id, market, enabled, interval_seconds
    from public.scan_jobs where id = '5a000000-0000-4000-8000-00000000000a'$$,
  row(null::text, null::timestamptz, null::timestamptz, 0, 0, null::timestamptz, null::timestamptz,
      null::text, '2030-01-01T00:00:00Z'::timestamptz, 'a0000000-0000-4000-8000-000000000001'::uuid,
      'TAPA-EUR'::text, false, 120),
  'scan_jobs: only enabled and interval_seconds changed on the user''s job'
);
select is(
  (select count(*)::int from public.trade_proposals where user_id = 'a0000000-0000-4000-8000-000000000001'),
  2, 'trade_proposals: the user''s proposals are all still there'
);

select isnt_empty(
  $$select 1 from public.trading_settings where user_id = 'd0000000-0000-4000-8000-000000000004'$$,
  'trading_settings: a new auth user gets a settings row (trigger)'
);
select is(
  tap.scalar_text(
    format('select %I::text from public.trading_settings where user_id = %L', col,
           'd0000000-0000-4000-8000-000000000004')),
  expected,
  format('trading_settings: a new user''s %s defaults to %s', col, expected)
)
from defaults order by ord;

select * from finish();
rollback;
