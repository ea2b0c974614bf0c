/*
 * Foundation: what every other migration builds on.
 *
 *   private                  helper functions, never exposed through PostgREST
 *   execution_audit_log      G9 — append-only for every role, postgres included
 *   system_controls          the operator's global switches (one row); every change audited
 *   market_allowlist         G4 — the global half of the deny-by-default allowlist
 *   trading_settings         per-user risk settings, created for every new auth user; every
 *                            change audited (who, which columns, from → to)
 *   trading_allowlist        G4 — the user's half of the allowlist
 *
 * Supabase grants ALL on new tables and functions in `public` to anon/authenticated by default;
 * every table here revokes that first and grants back only what the policies below allow.
 *
 * Closed by default: functions and sequences created from here on by the migration role (postgres)
 * are not executable / usable by PUBLIC, anon or authenticated until a migration grants them (see
 * "default privileges" below). Tables keep Supabase's default grants: RLS, enabled on every table
 * (tests/test_advisor.py), is what guards them.
 */

-- Every migration starts so: a DDL lock that has to queue behind a long transaction (a trigger
-- or a foreign key on auth.users takes SHARE ROW EXCLUSIVE) fails the push after 5 s instead of
-- holding up sign-ups and every write to that table while it waits. Session-level, so it also
-- holds under plain psql (no transaction); it ends with the migration's session.
set lock_timeout = '5s';

-- =============================================================================================
-- Section - default privileges: new functions and sequences are closed
-- =============================================================================================
-- PostgreSQL lets PUBLIC execute every new function, and Supabase's default privileges in `public`
-- add ALL on new functions and sequences for anon and authenticated. A function whose migration
-- forgets its `revoke` would be callable from a browser; a sequence's UPDATE is setval, and
-- setval(<an audited table's id sequence>, <max>) would make every audited RPC fail.
--
-- Per-schema default privileges can only add to the global ones, never take away from them, so
-- PUBLIC's EXECUTE is revoked globally for functions the migration role creates (any schema,
-- extensions created by it included: their functions must then be granted explicitly), and
-- anon/authenticated lose Supabase's per-schema grants in `public`. service_role keeps its grants.
alter default privileges for role postgres revoke execute on functions from public;
alter default privileges for role postgres in schema public revoke execute on functions from anon, authenticated;
alter default privileges for role postgres in schema public revoke all on sequences from anon, authenticated;

-- =============================================================================================
-- Section - private helpers schema
-- =============================================================================================
create schema if not exists private;
revoke all on schema private from public, anon, authenticated;
grant usage on schema private to service_role;

-- Keeps updated_at honest without trusting clients.
create or replace function private.touch_updated_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end;
$$;

-- Refuses to run a check-then-write RPC under a transaction snapshot. The RPCs that decide on
-- counts or sums (claims, budget reservations) serialise per user on an advisory lock and then
-- read; under READ COMMITTED each statement sees everything committed before the lock was granted,
-- under REPEATABLE READ / SERIALIZABLE the snapshot taken earlier would hide it (two interleaved
-- reservations could both pass a limit only one fits). PostgREST runs every request READ COMMITTED.
create or replace function private.require_read_committed(p_function text) returns void
language plpgsql
stable
set search_path = ''
as $$
begin
  if pg_catalog.current_setting('transaction_isolation') <> 'read committed' then
    raise exception '% must run in a READ COMMITTED transaction, not %', p_function,
      pg_catalog.current_setting('transaction_isolation')
      using errcode = '25000', hint = 'a snapshot taken before the per-user lock would hide earlier decisions';
  end if;
end;
$$;
revoke all on function private.require_read_committed(text) from public, anon, authenticated;

-- =============================================================================================
-- Section - execution_audit_log (G9)
-- =============================================================================================
create table public.execution_audit_log (
  id bigint generated always as identity primary key,
  user_id uuid,
  proposal_id uuid,
  execution_id uuid,
  event text not null check (event ~ '^[a-z][a-z0-9_.]{0,63}$'),
  detail jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now()
);
-- No foreign keys on purpose: audit rows must outlive whatever they describe, and a cascading
-- delete would be an UPDATE/DELETE on this table.

create index execution_audit_log_user_created_idx
  on public.execution_audit_log (user_id, created_at desc);
create index execution_audit_log_proposal_idx
  on public.execution_audit_log (proposal_id) where proposal_id is not null;
create index execution_audit_log_execution_idx
  on public.execution_audit_log (execution_id) where execution_id is not null;

alter table public.execution_audit_log enable row level security;

revoke all on public.execution_audit_log from public, anon, authenticated, service_role;
grant select on public.execution_audit_log to authenticated;
grant select, insert on public.execution_audit_log to service_role;
-- The id sequence: nobody but the table's writers moves it (setval to its maximum would stop every
-- audited RPC). Closed by the default privileges above already; said here where a reader looks.
revoke all on sequence public.execution_audit_log_id_seq from public, anon, authenticated;

-- Rejects every UPDATE, DELETE and TRUNCATE, whoever asks (G9).
create or replace function private.reject_audit_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'execution_audit_log is append-only: % is not allowed', tg_op
    using errcode = '42501', hint = 'audit rows can only be inserted';
end;
$$;

create trigger execution_audit_log_append_only
  before update or delete on public.execution_audit_log
  for each row execute function private.reject_audit_change();
create trigger execution_audit_log_no_truncate
  before truncate on public.execution_audit_log
  for each statement execute function private.reject_audit_change();
-- ALWAYS: the triggers fire even with session_replication_role = replica.
alter table public.execution_audit_log enable always trigger execution_audit_log_append_only;
alter table public.execution_audit_log enable always trigger execution_audit_log_no_truncate;

create policy "users can read their own audit rows"
  on public.execution_audit_log for select to authenticated
  using (user_id = (select auth.uid()));

-- Appends one audit row; the only writer of execution_audit_log besides service_role inserts.
create or replace function private.audit(
  p_event text,
  p_user_id uuid,
  p_proposal_id uuid default null,
  p_execution_id uuid default null,
  p_detail jsonb default '{}'::jsonb
) returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id bigint;
begin
  insert into public.execution_audit_log (user_id, proposal_id, execution_id, event, detail)
  values (p_user_id, p_proposal_id, p_execution_id, p_event, coalesce(p_detail, '{}'::jsonb))
  returning id into v_id;
  return v_id;
end;
$$;
revoke all on function private.audit(text, uuid, uuid, uuid, jsonb) from public, anon, authenticated;
grant execute on function private.audit(text, uuid, uuid, uuid, jsonb) to service_role;

-- G9 for settings, switches and allowlists: an AFTER trigger that audits `<table>.changed` with
-- every column that changed (from → to, updated_at aside), `<table>.added` / `<table>.removed` with
-- the whole row, which row (its primary key), who asked (the JWT role and user when the change came
-- through the API, the database login always), and the row's user_id if it has one. Updates that change nothing leave
-- no row. SECURITY DEFINER because a user changing their own settings may not write the audit log
-- themselves.
create or replace function private.audit_row_change() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_old jsonb := pg_catalog.to_jsonb(old) - 'updated_at';
  v_new jsonb := pg_catalog.to_jsonb(new) - 'updated_at';
  v_changes jsonb;
  v_who jsonb := pg_catalog.jsonb_build_object('role', auth.role(), 'actor_user_id', auth.uid(),
                                               'db_user', session_user);
begin
  select v_who || pg_catalog.jsonb_build_object('key', pg_catalog.jsonb_object_agg(
           a.attname, coalesce(v_new, v_old) -> a.attname::text))
    into v_who
    from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
   where i.indrelid = tg_relid and i.indisprimary;
  if tg_op = 'INSERT' then
    perform private.audit(tg_table_name || '.added', (v_new ->> 'user_id')::uuid, null, null,
      v_who || pg_catalog.jsonb_build_object('row', v_new));
    return null;
  elsif tg_op = 'DELETE' then
    perform private.audit(tg_table_name || '.removed', (v_old ->> 'user_id')::uuid, null, null,
      v_who || pg_catalog.jsonb_build_object('row', v_old));
    return null;
  end if;
  select pg_catalog.jsonb_object_agg(n.key, pg_catalog.jsonb_build_object('from', o.value, 'to', n.value))
    into v_changes
    from pg_catalog.jsonb_each(v_new) n
    join pg_catalog.jsonb_each(v_old) o using (key)
   where n.value is distinct from o.value;
  if v_changes is not null then
    perform private.audit(tg_table_name || '.changed', (v_new ->> 'user_id')::uuid, null, null,
      v_who || pg_catalog.jsonb_build_object('changes', v_changes));
  end if;
  return null;
end;
$$;
revoke all on function private.audit_row_change() from public, anon, authenticated;

-- =============================================================================================
-- Section - system_controls (one row; operator only)
-- =============================================================================================
create table public.system_controls (
  id boolean primary key default true check (id),
  trading_halted boolean not null default false,
  live_trading_allowed boolean not null default false,
  -- `< 'Infinity'` also excludes NaN, which sorts above every number (and so passes `> 0`): a NaN
  -- or infinite limit would silently switch off the check that reads it. Every numeric column in
  -- this schema carries the same guard.
  max_order_quote numeric not null default 100 check (max_order_quote > 0 and max_order_quote < 'Infinity'),
  updated_at timestamptz not null default now()
);

alter table public.system_controls enable row level security;

revoke all on public.system_controls from public, anon, authenticated, service_role;
grant select, update on public.system_controls to service_role;

create trigger system_controls_touch before update on public.system_controls
  for each row execute function private.touch_updated_at();
create trigger system_controls_audit after update on public.system_controls
  for each row execute function private.audit_row_change();

insert into public.system_controls (id) values (true) on conflict do nothing;
-- No policies, on purpose: anon and authenticated see nothing; service_role bypasses RLS. The
-- advisor's rls_enabled_no_policy note on this table is intended (allow-listed, with this reason,
-- in tests/test_advisor.py).

-- =============================================================================================
-- Section - market_allowlist (G4, global half)
-- =============================================================================================
create table public.market_allowlist (
  market text primary key check (market ~ '^[A-Z0-9]{1,15}-[A-Z]{2,6}$'),
  enabled boolean not null default false,
  min_order_quote numeric not null default 5 check (min_order_quote > 0 and min_order_quote < 'Infinity'),
  max_order_quote numeric check (max_order_quote > 0 and max_order_quote < 'Infinity'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint market_allowlist_bounds check (max_order_quote is null or max_order_quote >= min_order_quote)
);

alter table public.market_allowlist enable row level security;

revoke all on public.market_allowlist from public, anon, authenticated, service_role;
grant select on public.market_allowlist to authenticated;
grant select, insert, update, delete on public.market_allowlist to service_role;

create trigger market_allowlist_touch before update on public.market_allowlist
  for each row execute function private.touch_updated_at();
-- G9: which markets the operator opens or closes, and their limits, audited.
create trigger market_allowlist_audit after insert or update or delete on public.market_allowlist
  for each row execute function private.audit_row_change();

create policy "authenticated users can read the market allowlist"
  on public.market_allowlist for select to authenticated
  using (true);

-- =============================================================================================
-- Section - trading_settings (one row per auth user, safe defaults)
-- =============================================================================================
create table public.trading_settings (
  user_id uuid primary key references auth.users (id) on delete cascade,
  trading_enabled boolean not null default false,
  live_trading_enabled boolean not null default false,
  auto_execute boolean not null default false,
  min_confidence numeric not null default 0.70 check (min_confidence between 0 and 1),
  max_order_quote numeric not null default 50 check (max_order_quote > 0 and max_order_quote < 'Infinity'),
  max_daily_quote numeric not null default 200 check (max_daily_quote > 0 and max_daily_quote < 'Infinity'),
  max_trades_per_day integer not null default 10 check (max_trades_per_day between 0 and 1000),
  cooldown_seconds integer not null default 3600 check (cooldown_seconds between 0 and 31536000),
  anti_flip_seconds integer not null default 86400 check (anti_flip_seconds between 0 and 31536000),
  gpt_daily_budget_usd numeric not null default 1.00
    check (gpt_daily_budget_usd >= 0 and gpt_daily_budget_usd < 'Infinity'),
  gpt_hourly_budget_usd numeric not null default 0.25
    check (gpt_hourly_budget_usd >= 0 and gpt_hourly_budget_usd < 'Infinity'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

alter table public.trading_settings enable row level security;

-- Column grants are the tool that keeps the operator's columns (live_trading_enabled, budgets)
-- out of users' reach: a user may update only the risk columns, and only on their own row.
revoke all on public.trading_settings from public, anon, authenticated, service_role;
grant select on public.trading_settings to authenticated;
grant update (trading_enabled, auto_execute, min_confidence, max_order_quote, max_daily_quote,
              max_trades_per_day, cooldown_seconds, anti_flip_seconds)
  on public.trading_settings to authenticated;
grant select, insert, update, delete on public.trading_settings to service_role;

create trigger trading_settings_touch before update on public.trading_settings
  for each row execute function private.touch_updated_at();
-- G9: a user's risk changes and the operator's budget/live changes, each audited.
create trigger trading_settings_audit after update on public.trading_settings
  for each row execute function private.audit_row_change();

create policy "users can read their own trading settings"
  on public.trading_settings for select to authenticated
  using (user_id = (select auth.uid()));
create policy "users can update their own trading settings"
  on public.trading_settings for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));

-- Every new auth user gets a settings row with the safe defaults (trading off, paper only).
create or replace function private.create_trading_settings_for_new_user() returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.trading_settings (user_id) values (new.id) on conflict (user_id) do nothing;
  return new;
end;
$$;
revoke all on function private.create_trading_settings_for_new_user() from public, anon, authenticated;

create trigger on_auth_user_created_trading_settings
  after insert on auth.users
  for each row execute function private.create_trading_settings_for_new_user();

-- Users who signed up before this migration (a live project) get the same safe defaults. After the
-- trigger: from then on the trigger covers new users (under `supabase db push` its lock on
-- auth.users holds sign-ups until this file commits), so nobody falls between the two. Idempotent.
insert into public.trading_settings (user_id)
select u.id from auth.users u
on conflict (user_id) do nothing;

-- =============================================================================================
-- Section - trading_allowlist (G4, the user's half)
-- =============================================================================================
create table public.trading_allowlist (
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  market text not null references public.market_allowlist (market) on delete cascade,
  enabled boolean not null default true,
  max_order_quote numeric check (max_order_quote > 0 and max_order_quote < 'Infinity'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (user_id, market)
);
create index trading_allowlist_market_idx on public.trading_allowlist (market);

alter table public.trading_allowlist enable row level security;

revoke all on public.trading_allowlist from public, anon, authenticated, service_role;
grant select, insert, delete on public.trading_allowlist to authenticated;
grant update (enabled, max_order_quote) on public.trading_allowlist to authenticated;
grant select, insert, update, delete on public.trading_allowlist to service_role;

create trigger trading_allowlist_touch before update on public.trading_allowlist
  for each row execute function private.touch_updated_at();
-- G9: which markets a user opens or closes, and their limits, audited.
create trigger trading_allowlist_audit after insert or update or delete on public.trading_allowlist
  for each row execute function private.audit_row_change();

create policy "users can read their own allowlist"
  on public.trading_allowlist for select to authenticated
  using (user_id = (select auth.uid()));
create policy "users can add markets to their own allowlist"
  on public.trading_allowlist for insert to authenticated
  with check (user_id = (select auth.uid()));
create policy "users can change their own allowlist"
  on public.trading_allowlist for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));
create policy "users can remove markets from their own allowlist"
  on public.trading_allowlist for delete to authenticated
  using (user_id = (select auth.uid()));
