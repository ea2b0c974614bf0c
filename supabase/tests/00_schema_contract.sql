/*
 * The schema contract of SPEC §3 as the migrations leave it:
 *   - every table SPEC §3 names exists, with every required column (a missing one fails here);
 *   - RLS is enabled on EVERY table in `public`, derived from pg_class (a table added later that
 *     forgets `enable row level security` fails here, whoever wrote it);
 *   - views in `public` run with the caller's rights (security_invoker), or RLS would be bypassed;
 *   - every SECURITY DEFINER function in `public` / `private` pins `search_path = ''`;
 *   - the uniqueness that G1 rests on: one execution per proposal, per (user, idempotency key),
 *     per client order id; one trade_history row per execution.
 */
begin;
\ir _lib/helpers.psql

create temp table expected_columns (tbl text, col text, ord int generated always as identity);
insert into expected_columns (tbl, col)
select t, unnest(cols) from (values
  ('system_controls', array['trading_halted', 'live_trading_allowed', 'max_order_quote']),
  ('market_allowlist', array['market', 'enabled', 'min_order_quote', 'max_order_quote']),
  ('trading_settings', array['user_id', 'trading_enabled', 'live_trading_enabled', 'auto_execute',
     'min_confidence', 'max_order_quote', 'max_daily_quote', 'max_trades_per_day',
     'cooldown_seconds', 'anti_flip_seconds', 'gpt_daily_budget_usd', 'gpt_hourly_budget_usd']),
  ('trading_allowlist', array['user_id', 'market', 'enabled', 'max_order_quote']),
  ('scan_jobs', array['id', 'user_id', 'market', 'interval_seconds', 'enabled', 'next_run_at',
     'locked_by', 'locked_at', 'lock_expires_at', 'attempts', 'consecutive_failures',
     'last_run_at', 'last_success_at', 'last_error']),
  ('trade_proposals', array['id', 'user_id', 'scan_job_id', 'market', 'side', 'amount_quote',
     'reference_price', 'confidence', 'rationale', 'source', 'model', 'status', 'expires_at',
     'decided_at', 'decided_by', 'created_at']),
  ('trade_executions', array['id', 'proposal_id', 'user_id', 'idempotency_key', 'client_order_id',
     'mode', 'market', 'side', 'amount_quote', 'status', 'exchange_order_id', 'filled_amount',
     'filled_amount_quote', 'fee_paid', 'fee_currency', 'error_code', 'error_message',
     'claimed_at', 'submitted_at', 'completed_at']),
  ('trade_history', array['execution_id', 'user_id', 'market', 'side', 'amount', 'amount_quote',
     'price', 'fee_paid', 'fee_currency', 'mode', 'executed_at']),
  ('gpt_model_prices', array['model', 'input_usd_per_mtok', 'cached_input_usd_per_mtok',
     'output_usd_per_mtok']),
  ('gpt_usage_log', array['id', 'user_id', 'scan_job_id', 'model', 'status', 'reserved_usd',
     'prompt_tokens', 'cached_prompt_tokens', 'completion_tokens', 'cost_usd', 'request_id',
     'created_at', 'settled_at']),
  ('execution_audit_log', array['id', 'user_id', 'proposal_id', 'execution_id', 'event', 'detail',
     'created_at'])
) as spec(t, cols);

create temp table expected_tables as
select tbl, min(ord) as ord from expected_columns group by tbl;

-- Tables in public as the catalog sees them (ordinary and partitioned).
create temp table public_tables as
select c.relname::text as tbl, c.relrowsecurity as rls
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind in ('r', 'p');

create temp table public_views as
select c.relname::text as view_name,
       coalesce(c.reloptions::text[] && array['security_invoker=true', 'security_invoker=on',
                                               'security_invoker=1'], false) as invoker
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind in ('v', 'm');

create temp table definer_functions as
select n.nspname::text as schema_name, p.oid::regprocedure::text as signature,
       coalesce('search_path=""' = any(p.proconfig), false) as pinned
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
where n.nspname in ('public', 'private') and p.prosecdef;

-- (table, columns) whose uniqueness the execution path relies on.
create temp table expected_unique (tbl text, cols text[], why text);
insert into expected_unique values
  ('trade_executions', array['proposal_id'], 'G1: one execution per proposal'),
  ('trade_executions', array['idempotency_key', 'user_id'], 'G1: one execution per (user, Idempotency-Key)'),
  ('trade_executions', array['client_order_id'], 'G10: client order ids are unique'),
  ('trade_history', array['execution_id'], 'one trade_history row per execution');

select plan(
    1                                                        -- RLS-on-every-table summary
  + (select count(*)::int from expected_tables)              -- has_table
  + (select count(*)::int from expected_columns)             -- has_column
  + (select count(*)::int from expected_tables)              -- RLS on each expected table
  + (select count(*)::int from public_tables)                -- RLS on each catalog table
  + (select count(*)::int from public_views)                 -- security_invoker views
  + 1 + (select count(*)::int from definer_functions)        -- search_path pinned
  + (select count(*)::int from expected_unique)              -- unique keys
);

-- The expected list: a missing table fails here even though the catalog loop cannot see it.
select has_table('public', tbl::name, format('SPEC §3 table public.%s exists', tbl))
from expected_tables order by ord;

select has_column('public', tbl::name, col::name, format('public.%s has column %s', tbl, col))
from expected_columns order by ord;

select ok(coalesce((select rls from public_tables p where p.tbl = e.tbl), false),
          format('RLS is enabled on SPEC §3 table public.%s', e.tbl))
from expected_tables e order by ord;

-- The catalog: every table in public, whoever added it.
select ok(rls, format('RLS is enabled on public.%s (catalog)', tbl))
from public_tables order by tbl;

select is(
  (select coalesce(array_agg(tbl order by tbl), '{}') from public_tables where not rls),
  '{}'::text[],
  'no table in public has RLS disabled'
);

select ok(invoker, format('view public.%s runs with security_invoker', view_name))
from public_views order by view_name;

select ok(pinned, format('SECURITY DEFINER %s sets search_path = ''''', signature))
from definer_functions order by signature;

select isnt_empty(
  'select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace '
  'where n.nspname = ''public'' and p.prosecdef',
  'public has SECURITY DEFINER RPCs (the search_path check above is not vacuous)'
);

select ok(
  exists (
    select 1
    from pg_index i
    join pg_class c on c.oid = i.indrelid
    join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'public' and c.relname = u.tbl
      and i.indisunique and i.indpred is null
      and (select array_agg(a.attname::text order by a.attname::text)
           from pg_attribute a
           -- key columns only: INCLUDE columns (indkey's tail) do not take part in uniqueness
           where a.attrelid = c.oid
             and a.attnum = any((i.indkey::int2[])[0:i.indnkeyatts - 1])) = u.cols
      and i.indnkeyatts = cardinality(u.cols)
  ),
  format('%s: unique (%s) on public.%s', u.why, array_to_string(u.cols, ', '), u.tbl)
)
from expected_unique u order by u.tbl, u.cols;

select * from finish();
rollback;
