/*
 * G8 tenant isolation, table-driven: for EVERY table × select/insert/update/delete × (anon, another
 * signed-in user) nothing of the victim's is visible and nothing changes; TRUNCATE is refused on
 * every table in public for both roles.
 *
 * Set-up (as the superuser, inside this transaction): the victim A and the attacker B each own rows
 * in every per-user table; C is a user without a trading_settings row (the target of a forged
 * settings insert). Then each attempt runs as PostgREST runs a request — role `anon` or
 * `authenticated` + request.jwt.claims, transaction-local (tap.attempt). An attempt passes when it is
 * denied (42501) or touches 0 rows; any other error fails, so a test cannot pass on bad test data.
 * Controls keep the matrix honest: the targeted rows exist, every forged insert is valid SQL that
 * the superuser could run, and the attacker does see their own rows (RLS is not simply deny-all).
 * Afterwards, as the superuser, every table's fingerprint (all rows) equals the one taken before.
 */
begin;
\ir _lib/helpers.psql

-- =============================================================================================
-- Section - seed: users A (victim), B (attacker), C (no settings row)
-- =============================================================================================
do $$
begin
  perform tap.create_user('a0000000-0000-4000-8000-000000000001', 'victim@example.test');
  perform tap.create_user('b0000000-0000-4000-8000-000000000002', 'attacker@example.test');
  perform tap.create_user('c0000000-0000-4000-8000-000000000003', 'nosettings@example.test');
end
$$;
delete from public.trading_settings where user_id = 'c0000000-0000-4000-8000-000000000003';

insert into public.market_allowlist (market, enabled, min_order_quote, max_order_quote)
values ('TAPA-EUR', true, 5, 500), ('TAPB-EUR', true, 5, 500), ('TAPX-EUR', true, 5, 500);

insert into public.trading_allowlist (user_id, market)
values ('a0000000-0000-4000-8000-000000000001', 'TAPA-EUR'),
       ('a0000000-0000-4000-8000-000000000001', 'TAPB-EUR'),
       ('b0000000-0000-4000-8000-000000000002', 'TAPA-EUR'),
       ('b0000000-0000-4000-8000-000000000002', 'TAPB-EUR');

insert into public.scan_jobs (id, user_id, market, interval_seconds)
values ('5a000000-0000-4000-8000-00000000000a', 'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR', 300),
       ('5b000000-0000-4000-8000-00000000000b', 'b0000000-0000-4000-8000-000000000002', 'TAPA-EUR', 300);

-- A: p1 executed (e1 filled, ledger row), p2 executing (e2 claimed), p3 pending. B: p1 executed.
insert into public.trade_proposals (id, user_id, scan_job_id, market, side, amount_quote, confidence,
                                    rationale, source, status, expires_at, decided_at, decided_by)
values
  ('7a000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
   '5a000000-0000-4000-8000-00000000000a', 'TAPA-EUR', 'buy', 10, 0.9, 'seed', 'rules', 'executed',
   now() + interval '1 hour', now(), 'auto'),
  ('7a000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001',
   null, 'TAPA-EUR', 'sell', 10, 0.9, 'seed', 'rules', 'executing',
   now() + interval '1 hour', now(), 'user'),
  ('7a000000-0000-4000-8000-000000000003', 'a0000000-0000-4000-8000-000000000001',
   null, 'TAPB-EUR', 'buy', 10, 0.5, 'seed', 'manual', 'pending',
   now() + interval '1 hour', null, null),
  ('7b000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000002',
   '5b000000-0000-4000-8000-00000000000b', 'TAPA-EUR', 'buy', 10, 0.9, 'seed', 'rules', 'executed',
   now() + interval '1 hour', now(), 'auto');

insert into public.trade_executions (id, proposal_id, user_id, idempotency_key, mode, market, side,
                                     amount_quote, status, exchange_order_id, filled_amount,
                                     filled_amount_quote, fee_paid, fee_currency, submitted_at,
                                     completed_at)
values
  ('ea000000-0000-4000-8000-000000000001', '7a000000-0000-4000-8000-000000000001',
   'a0000000-0000-4000-8000-000000000001', 'key-a1', 'paper', 'TAPA-EUR', 'buy', 10, 'filled',
   'order-a1', 0.0002, 10, 0.025, 'EUR', now(), now()),
  ('ea000000-0000-4000-8000-000000000002', '7a000000-0000-4000-8000-000000000002',
   'a0000000-0000-4000-8000-000000000001', 'key-a2', 'paper', 'TAPA-EUR', 'sell', 10, 'claimed',
   null, null, null, null, null, null, null),
  ('eb000000-0000-4000-8000-000000000001', '7b000000-0000-4000-8000-000000000001',
   'b0000000-0000-4000-8000-000000000002', 'key-b1', 'paper', 'TAPA-EUR', 'buy', 10, 'filled',
   'order-b1', 0.0002, 10, 0.025, 'EUR', now(), now());

insert into public.trade_history (execution_id, proposal_id, user_id, market, side, amount,
                                  amount_quote, price, fee_paid, fee_currency, mode)
values
  ('ea000000-0000-4000-8000-000000000001', '7a000000-0000-4000-8000-000000000001',
   'a0000000-0000-4000-8000-000000000001', 'TAPA-EUR', 'buy', 0.0002, 10, 50000, 0.025, 'EUR', 'paper'),
  ('eb000000-0000-4000-8000-000000000001', '7b000000-0000-4000-8000-000000000001',
   'b0000000-0000-4000-8000-000000000002', 'TAPA-EUR', 'buy', 0.0002, 10, 50000, 0.025, 'EUR', 'paper');

insert into public.gpt_usage_log (id, user_id, scan_job_id, model, status, reserved_usd)
values ('6a000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
        '5a000000-0000-4000-8000-00000000000a', 'gpt-4o-mini', 'reserved', 0.001),
       ('6b000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000002',
        '5b000000-0000-4000-8000-00000000000b', 'gpt-4o-mini', 'reserved', 0.001);

insert into public.execution_audit_log (user_id, proposal_id, execution_id, event, detail)
values ('a0000000-0000-4000-8000-000000000001', '7a000000-0000-4000-8000-000000000001',
        'ea000000-0000-4000-8000-000000000001', 'tap.seed', '{"who": "victim"}'),
       ('b0000000-0000-4000-8000-000000000002', '7b000000-0000-4000-8000-000000000001',
        'eb000000-0000-4000-8000-000000000001', 'tap.seed', '{"who": "attacker"}');

-- =============================================================================================
-- Section - the cases: one row per table
--   owner        the column naming the row's user (null: a global table, every row is a target)
--   forged       an INSERT of a row for the victim (%1$s = A, %2$s = C), valid for the superuser
--   change       the SET list of an UPDATE that would matter (escalate limits, approve, hide...)
--   users_read   authenticated may read every row (SPEC: the market allowlist, the price list)
-- =============================================================================================
create temp table cases (tbl text primary key, owner text, forged text, change text, users_read boolean);
insert into cases values
  ('system_controls', null,
   $$insert into public.system_controls (id, trading_halted, live_trading_allowed) values (true, false, true)
     on conflict (id) do update set live_trading_allowed = true, max_order_quote = 1000000$$,
   $$trading_halted = false, live_trading_allowed = true, max_order_quote = 1000000$$, false),
  ('market_allowlist', null,
   $$insert into public.market_allowlist (market, enabled, max_order_quote) values ('EVIL-EUR', true, 1000000)$$,
   $$enabled = true, min_order_quote = 0.01, max_order_quote = 1000000$$, true),
  ('gpt_model_prices', null,
   $$insert into public.gpt_model_prices (model, input_usd_per_mtok, cached_input_usd_per_mtok, output_usd_per_mtok)
     values ('tap-free-model', 0, 0, 0)$$,
   $$input_usd_per_mtok = 0, cached_input_usd_per_mtok = 0, output_usd_per_mtok = 0$$, true),
  ('trading_settings', 'user_id',
   $$insert into public.trading_settings (user_id, trading_enabled, live_trading_enabled, auto_execute)
     values (%2$L, true, true, true)$$,
   $$trading_enabled = true, auto_execute = true, max_order_quote = 1000000, cooldown_seconds = 0$$, false),
  ('trading_allowlist', 'user_id',
   $$insert into public.trading_allowlist (user_id, market, enabled) values (%1$L, 'TAPX-EUR', true)$$,
   $$enabled = false, max_order_quote = 1$$, false),
  ('scan_jobs', 'user_id',
   $$insert into public.scan_jobs (user_id, market, interval_seconds) values (%1$L, 'TAPB-EUR', 60)$$,
   $$enabled = false, interval_seconds = 604800$$, false),
  ('trade_proposals', 'user_id',
   $$insert into public.trade_proposals (user_id, market, side, amount_quote, confidence, rationale, source,
                                         status, expires_at, decided_at, decided_by)
     values (%1$L, 'TAPA-EUR', 'sell', 400, 1, 'forged', 'manual', 'approved', now() + interval '1 hour',
             now(), 'user')$$,
   $$status = 'approved', decided_at = now(), decided_by = 'user'$$, false),
  ('trade_executions', 'user_id',
   $$insert into public.trade_executions (proposal_id, user_id, idempotency_key, mode, market, side, amount_quote)
     values ('7a000000-0000-4000-8000-000000000003', %1$L, 'forged-key', 'paper', 'TAPB-EUR', 'buy', 10)$$,
   $$status = 'failed', error_code = 'forged', completed_at = now()$$, false),
  ('trade_history', 'user_id',
   $$insert into public.trade_history (execution_id, proposal_id, user_id, market, side, amount, amount_quote,
                                       price, mode)
     values ('ea000000-0000-4000-8000-000000000002', '7a000000-0000-4000-8000-000000000002', %1$L,
             'TAPA-EUR', 'sell', 1, 10, 10, 'paper')$$,
   $$amount_quote = 1000000, price = 1$$, false),
  ('gpt_usage_log', 'user_id',
   $$insert into public.gpt_usage_log (user_id, model, status, reserved_usd) values (%1$L, 'gpt-4o-mini', 'reserved', 5)$$,
   $$status = 'released', released_at = now(), release_reason = 'forged'$$, false),
  ('execution_audit_log', 'user_id',
   $$insert into public.execution_audit_log (user_id, event, detail) values (%1$L, 'tap.forged', '{}')$$,
   $$event = 'tap.tampered', detail = '{}'$$, false);

create temp table actors (actor text primary key, role text, sub uuid);
insert into actors values
  ('anon', 'anon', null),
  ('another user', 'authenticated', 'b0000000-0000-4000-8000-000000000002');

-- The rows an attack targets: the victim's, or every row of a global table.
create temp view targets as
select c.*,
       case when c.owner is null then 'true'
            else format('%I = %L', c.owner, 'a0000000-0000-4000-8000-000000000001') end as victim_rows
from cases c;

-- =============================================================================================
-- Section - before: fingerprints and controls (as the superuser)
-- =============================================================================================
create temp table before as select tbl, tap.fingerprint(tbl) as fp from cases;

create temp table controls (ord serial, pass boolean, description text, detail text);
insert into controls (pass, description, detail)
select n > 0, format('control: public.%s has victim rows to attack (%s)', tbl, victim_rows), n::text
from (select t.*, tap.visible('postgres', null,
        format('select count(*) from public.%I where %s', t.tbl, t.victim_rows))::bigint as n
      from targets t) x;
insert into controls (pass, description, detail)
select r = 'ok:1', format('control: the forged %s insert is valid for the superuser', tbl), r
from (select tbl, tap.as_superuser_rolled_back(
        format(forged, 'a0000000-0000-4000-8000-000000000001', 'c0000000-0000-4000-8000-000000000003')) as r
      from cases) x;
-- RLS is not deny-all: the attacker sees their own rows (or, for readable tables, the rows).
insert into controls (pass, description, detail)
select r ~ '^[1-9]', format('control: a signed-in user sees %s in public.%s',
                            case when owner is null then 'the rows' else 'their own rows' end, tbl), r
from (select c.*, tap.visible('authenticated', 'b0000000-0000-4000-8000-000000000002',
        format('select count(*) from public.%I where %s', c.tbl,
               case when c.owner is null then 'true'
                    else format('%I = %L', c.owner, 'b0000000-0000-4000-8000-000000000002') end)) as r
      from cases c where c.owner is not null or c.users_read) x;

-- =============================================================================================
-- Section - the attacks (run now, asserted below)
-- =============================================================================================
create temp table outcomes (ord serial, tbl text, actor text, op text, sql text, outcome text);

insert into outcomes (tbl, actor, op, sql, outcome)
select t.tbl, a.actor, 'select', s.sql, tap.visible(a.role, a.sub, s.sql)
from targets t cross join actors a
cross join lateral (select format('select count(*) from public.%I where %s', t.tbl, t.victim_rows) as sql) s
where not (a.role = 'authenticated' and t.users_read)
order by t.tbl, a.actor;

insert into outcomes (tbl, actor, op, sql, outcome)
select t.tbl, a.actor, o.op, s.sql, tap.attempt(a.role, a.sub, s.sql)
from targets t cross join actors a
cross join (values (1, 'insert'), (2, 'update'), (3, 'delete')) as o(n, op)
cross join lateral (select case o.op
    when 'insert' then format(t.forged, 'a0000000-0000-4000-8000-000000000001',
                              'c0000000-0000-4000-8000-000000000003')
    when 'update' then format('update public.%I set %s where %s', t.tbl, t.change, t.victim_rows)
    else format('delete from public.%I where %s', t.tbl, t.victim_rows)
  end as sql) s
order by t.tbl, o.n, a.actor;

-- TRUNCATE bypasses RLS, so it must be refused outright, on every table in public.
insert into outcomes (tbl, actor, op, sql, outcome)
select c.relname, a.actor, 'truncate', s.sql, tap.attempt(a.role, a.sub, s.sql)
from pg_class c
join pg_namespace n on n.oid = c.relnamespace and n.nspname = 'public'
cross join actors a
cross join lateral (select format('truncate public.%I', c.relname) as sql) s
where c.relkind in ('r', 'p')
order by c.relname, a.actor;

-- =============================================================================================
-- Section - assertions
-- =============================================================================================
select plan(
    1
  + (select count(*)::int from controls)
  + (select count(*)::int from outcomes)
  + (select count(*)::int from cases)
);

-- Every table in public has a row in the matrix: a new table cannot slip past it.
select is(
  (select coalesce(array_agg(c.relname::text order by c.relname), '{}')
   from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'public' and c.relkind in ('r', 'p')
     and c.relname not in (select tbl from cases)),
  '{}'::text[],
  'every table in public is covered by the isolation matrix'
);

select case when pass then ok(true, description)
            else ok(false, description) || E'\n' || diag('got: ' || coalesce(detail, 'null')) end
from controls order by ord;

select case when pass then ok(true, d) else ok(false, d) || E'\n' || diag('got: ' || outcome || E'\nsql: ' || sql) end
from (
  select o.*,
         case when op = 'select' then outcome in ('0', 'denied')
              when op = 'truncate' then outcome = 'denied'
              else outcome in ('ok:0', 'denied') end as pass,
         case op
           when 'select' then format('public.%s: %s sees none of the victim''s rows', tbl, actor)
           when 'insert' then format('public.%s: %s cannot insert a row for the victim', tbl, actor)
           when 'update' then format('public.%s: %s cannot update the victim''s rows', tbl, actor)
           when 'delete' then format('public.%s: %s cannot delete the victim''s rows', tbl, actor)
           else format('public.%s: %s cannot truncate the table', tbl, actor)
         end as d
  from outcomes o
) x
order by ord;

-- Whatever the attempts did or did not report, the data is what it was (checked as the superuser).
select is(tap.fingerprint(b.tbl), b.fp, format('public.%s: every row is unchanged after the attacks', b.tbl))
from before b order by b.tbl;

select * from finish();
rollback;
