/*
 * GPT budget (G7): a user's GPT spend — settled cost plus outstanding reservations — never exceeds
 * their hourly or daily limit (trading_settings.gpt_hourly_budget_usd / gpt_daily_budget_usd), even
 * when many scans of the same user run at once; the spend recorded is computed here, in SQL, from
 * the token counts the provider reported and the prices in gpt_model_prices.
 *
 *   gpt_model_prices        USD per million tokens (input, cached input, output) per model
 *   gpt_usage_log           one row per GPT call: reserved → settled | released
 *   reserve_gpt_budget      worst-case cost reserved before the call, under a per-user lock
 *   settle_gpt_usage        the real cost from the reported usage, after the call (idempotent)
 *   check_gpt_budget        the same figures, reserving nothing
 *   get_budget_analytics    per-day and per-model spend, tokens and calls
 *   clear_todays_budget     operator/test aid: releases today's rows, audited
 *
 * Windows: the hour is the last 60 minutes (created_at > now() − 1 h); the day is the current UTC
 * calendar day. A row counts in the window of its created_at (the reservation time), with its
 * cost_usd when settled, its reserved_usd while reserved, and nothing once released.
 *
 * Reservation lifetime: 15 minutes (SPEC §3; private.gpt_reservation_lifetime). run_maintenance
 * releases a reservation that old — its call crashed or never settled — so it stops blocking the
 * budget. The scanner's whole GPT call (request timeout × attempts + backoff) must stay well below
 * that: it already has to fit the scan job's lease (300 s by default, a third of the lifetime), so
 * a reservation normally outlives its call. (The OpenAI SDK's defaults, 600 s × 3 attempts, do not:
 * the scanner sets its own.) A settle that still arrives later is the provider's bill and is
 * recorded all the same (released → settled, audited as gpt_budget.late_settlement): spend is
 * never dropped.
 *
 * Every budget RPC that reads the spend refuses to run outside READ COMMITTED
 * (private.require_read_committed), and every granted reservation, settlement, release, overshoot
 * and late settlement leaves an audit row (G9).
 */

set lock_timeout = '5s';  -- a queued DDL lock fails the push instead of blocking writes

-- =============================================================================================
-- Section - gpt_model_prices
-- =============================================================================================
create table public.gpt_model_prices (
  model text primary key check (model ~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}$'),
  -- `< 'Infinity'` also excludes NaN (a NaN price would make every cost NaN).
  input_usd_per_mtok numeric not null check (input_usd_per_mtok >= 0 and input_usd_per_mtok < 'Infinity'),
  cached_input_usd_per_mtok numeric not null
    check (cached_input_usd_per_mtok >= 0 and cached_input_usd_per_mtok < 'Infinity'),
  output_usd_per_mtok numeric not null check (output_usd_per_mtok >= 0 and output_usd_per_mtok < 'Infinity'),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

alter table public.gpt_model_prices enable row level security;

revoke all on public.gpt_model_prices from public, anon, authenticated, service_role;
grant select on public.gpt_model_prices to authenticated;
grant select, insert, update, delete on public.gpt_model_prices to service_role;

create trigger gpt_model_prices_touch before update on public.gpt_model_prices
  for each row execute function private.touch_updated_at();
-- G9: the prices every reservation and settlement is computed from, audited when they change.
create trigger gpt_model_prices_audit after insert or update or delete on public.gpt_model_prices
  for each row execute function private.audit_row_change();

create policy "authenticated users can read gpt model prices"
  on public.gpt_model_prices for select to authenticated
  using (true);

-- OpenAI list prices (USD per 1M tokens) when this was written; the operator keeps them current.
-- A model missing here cannot be reserved for (reserve_gpt_budget answers `unknown_model`).
insert into public.gpt_model_prices (model, input_usd_per_mtok, cached_input_usd_per_mtok, output_usd_per_mtok)
values
  ('gpt-4o-mini',  0.15,  0.075, 0.60),
  ('gpt-4o',       2.50,  1.25, 10.00),
  ('gpt-4.1-nano', 0.10,  0.025, 0.40),
  ('gpt-4.1-mini', 0.40,  0.10,  1.60),
  ('gpt-4.1',      2.00,  0.50,  8.00)
on conflict (model) do nothing;

-- =============================================================================================
-- Section - gpt_usage_log
-- =============================================================================================
create table public.gpt_usage_log (
  id uuid primary key default extensions.gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  scan_job_id uuid references public.scan_jobs (id) on delete set null,
  -- No price, no reservation; a price in use can be neither deleted nor renamed.
  model text not null references public.gpt_model_prices (model),
  status text not null default 'reserved' check (status in ('reserved', 'settled', 'released')),
  reserved_usd numeric not null check (reserved_usd >= 0 and reserved_usd < 'Infinity'),
  max_prompt_tokens integer check (max_prompt_tokens >= 0),
  max_completion_tokens integer check (max_completion_tokens >= 0),
  prompt_tokens integer check (prompt_tokens >= 0),
  cached_prompt_tokens integer check (cached_prompt_tokens >= 0),
  completion_tokens integer check (completion_tokens >= 0),
  cost_usd numeric check (cost_usd >= 0 and cost_usd < 'Infinity'),
  request_id text check (request_id is null or length(request_id) <= 200),
  created_at timestamptz not null default now(),
  settled_at timestamptz,
  released_at timestamptz,
  release_reason text,
  -- A reservation for a shared oracle answer (one model call for every user whose scan read the
  -- same market snapshot) and, once settled, how many reservations the call's bill was split
  -- among: the row's cost is its share, its token counts are the call's.
  oracle_answer_id uuid references private.oracle_answers (id),
  shared_by integer check (shared_by >= 1),
  -- OpenAI reports cached tokens as part of the prompt tokens.
  constraint gpt_usage_log_cached_within_prompt check (cached_prompt_tokens <= prompt_tokens),
  -- A settled row carries its usage and cost; a reserved row has neither yet.
  constraint gpt_usage_log_settled_complete check (
    status <> 'settled'
    or (cost_usd is not null and settled_at is not null and prompt_tokens is not null
        and cached_prompt_tokens is not null and completion_tokens is not null)
  ),
  constraint gpt_usage_log_reserved_unsettled check (
    status <> 'reserved' or (cost_usd is null and settled_at is null and released_at is null)
  ),
  constraint gpt_usage_log_released_dated check (status <> 'released' or released_at is not null)
);

-- The spend sums of reserve/check_gpt_budget and the analytics: one user's recent rows.
create index gpt_usage_log_user_created_idx on public.gpt_usage_log (user_id, created_at desc);
-- run_maintenance: outstanding reservations by age.
create index gpt_usage_log_reserved_created_idx on public.gpt_usage_log (created_at) where status = 'reserved';
-- The scan_jobs foreign key's `on delete set null`.
create index gpt_usage_log_scan_job_idx on public.gpt_usage_log (scan_job_id) where scan_job_id is not null;
-- The gpt_model_prices foreign key: deleting or renaming a price checks the usage log by model.
create index gpt_usage_log_model_idx on public.gpt_usage_log (model);
-- The reservations that paid into an answer (the oracle_answers foreign key).
create index gpt_usage_log_oracle_answer_idx on public.gpt_usage_log (oracle_answer_id)
  where oracle_answer_id is not null;

alter table public.gpt_usage_log enable row level security;

-- Written only by the RPCs below (and service_role); users read their own rows.
revoke all on public.gpt_usage_log from public, anon, authenticated, service_role;
grant select on public.gpt_usage_log to authenticated;
grant select, insert, update on public.gpt_usage_log to service_role;

-- The row's life is reserved → settled | released, settled → released (clear_todays_budget), and
-- released → settled for a late bill (settle_gpt_usage on a row whose usage was never recorded).
-- A settled row's figures never change. Whatever the status, the row may lose its scan job when
-- the job is deleted (the foreign key's ON DELETE SET NULL, e.g. a user deleting their job or the
-- operator retiring a market) — that and nothing else.
create or replace function private.gpt_usage_log_transition() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if new.id <> old.id or new.user_id <> old.user_id or new.model <> old.model
     or new.created_at <> old.created_at or new.reserved_usd <> old.reserved_usd then
    raise exception 'gpt_usage_log: identity, model, reservation and creation time never change'
      using errcode = '42501';
  end if;
  if old.scan_job_id is not null and new.scan_job_id is null
     and pg_catalog.to_jsonb(new) - 'scan_job_id' = pg_catalog.to_jsonb(old) - 'scan_job_id' then
    return new;
  end if;
  if old.status = new.status then
    if old.status = 'reserved' then
      return new;
    end if;
    raise exception 'gpt_usage_log: a % row is final', old.status using errcode = '42501';
  end if;
  if not ((old.status = 'reserved' and new.status in ('settled', 'released'))
          or (old.status = 'settled' and new.status = 'released')
          or (old.status = 'released' and new.status = 'settled' and old.prompt_tokens is null)) then
    raise exception 'gpt_usage_log: % → % is not allowed', old.status, new.status
      using errcode = '42501';
  end if;
  if old.status = 'settled' and (new.cost_usd is distinct from old.cost_usd
      or new.prompt_tokens is distinct from old.prompt_tokens
      or new.cached_prompt_tokens is distinct from old.cached_prompt_tokens
      or new.completion_tokens is distinct from old.completion_tokens) then
    raise exception 'gpt_usage_log: a settled row''s usage and cost never change'
      using errcode = '42501';
  end if;
  return new;
end;
$$;

create trigger gpt_usage_log_transition before update on public.gpt_usage_log
  for each row execute function private.gpt_usage_log_transition();

create policy "users can read their own gpt usage"
  on public.gpt_usage_log for select to authenticated
  using (user_id = (select auth.uid()));

-- =============================================================================================
-- Section - budget helpers (private)
-- =============================================================================================
-- PL/pgSQL, also the one-statement helpers: they pin search_path (the advisor's rule), so a SQL
-- function would not be inlined and would be parsed and planned again in every transaction —
-- every reservation is one (the same reasoning as the execution helpers').

-- Each user's spend (settled cost + outstanding reservations) in the last hour and this UTC day:
-- the figures every budget decision reads, for many users at once (reserve_gpt_budgets).
create or replace function private.gpt_spends(p_user_ids uuid[])
returns table (user_id uuid, spent_hour_usd numeric, spent_day_usd numeric)
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
  select u.id,
    coalesce(sum(case l.status when 'settled' then l.cost_usd when 'reserved' then l.reserved_usd else 0 end)
               filter (where l.created_at > now() - interval '1 hour'), 0),
    coalesce(sum(case l.status when 'settled' then l.cost_usd when 'reserved' then l.reserved_usd else 0 end)
               filter (where l.created_at >= (date_trunc('day', now() at time zone 'utc') at time zone 'utc')), 0)
  from unnest(p_user_ids) as u (id)
  left join public.gpt_usage_log l
    on l.user_id = u.id
   and l.status <> 'released'
   and l.created_at >= least(now() - interval '1 hour',
                             date_trunc('day', now() at time zone 'utc') at time zone 'utc')
  group by u.id;
end;
$$;
revoke all on function private.gpt_spends(uuid[]) from public, anon, authenticated;

-- The user's spend in the last hour and this UTC day (private.gpt_spends for one user).
create or replace function private.gpt_spend(p_user_id uuid, out spent_hour_usd numeric, out spent_day_usd numeric)
language plpgsql
stable
set search_path = ''
as $$
begin
  select s.spent_hour_usd, s.spent_day_usd into spent_hour_usd, spent_day_usd
    from private.gpt_spends(array[p_user_id]) s;
end;
$$;
revoke all on function private.gpt_spend(uuid) from public, anon, authenticated;

-- A call's worst case in USD from gpt_model_prices (every prompt token uncached, the whole
-- completion cap), or null for a model without a price. Multiplying by 0.000001 (not dividing
-- by a million) keeps numeric arithmetic exact.
create or replace function private.gpt_worst_case_usd(p_model text, p_max_prompt_tokens integer,
                                                      p_max_completion_tokens integer)
returns numeric
language plpgsql
stable
set search_path = ''
as $$
begin
  return (select (p_max_prompt_tokens * m.input_usd_per_mtok
                  + p_max_completion_tokens * m.output_usd_per_mtok) * 0.000001
            from public.gpt_model_prices m where m.model = p_model);
end;
$$;
revoke all on function private.gpt_worst_case_usd(text, integer, integer) from public, anon, authenticated;

-- G7's decision, given the spend read under the user's lock: why a reservation of p_cost is
-- denied (an unknown model's cost is null), or null when it fits both limits. The daily limit
-- is named first when both are exceeded. reserve_gpt_budget and reserve_gpt_budgets both decide
-- with it.
create or replace function private.gpt_budget_denial(p_cost numeric, p_spent_hour_usd numeric,
                                                     p_spent_day_usd numeric,
                                                     p_hourly_limit_usd numeric,
                                                     p_daily_limit_usd numeric)
returns text
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_cost is null then
    return 'unknown_model';
  elsif p_spent_day_usd + p_cost > p_daily_limit_usd then
    return 'daily_budget_exceeded';
  elsif p_spent_hour_usd + p_cost > p_hourly_limit_usd then
    return 'hourly_budget_exceeded';
  end if;
  return null;
end;
$$;
revoke all on function private.gpt_budget_denial(numeric, numeric, numeric, numeric, numeric) from public, anon, authenticated;

-- The per-user lock every budget decision of one user queues on (G7); namespaced so it cannot
-- collide with another feature's advisory locks.
create or replace function private.lock_gpt_budget(p_user_id uuid) returns void
language plpgsql
set search_path = ''
as $$
begin
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('gpt_budget:' || p_user_id::text, 0));
end;
$$;
revoke all on function private.lock_gpt_budget(uuid) from public, anon, authenticated;

-- How long a reservation blocks budget before run_maintenance releases it as stale: 15 minutes,
-- well above the scanner's whole GPT call (see the header), so a live call's reservation is not
-- released under it.
create or replace function private.gpt_reservation_lifetime() returns interval
language plpgsql
immutable
set search_path = ''
as $$
begin
  return interval '15 minutes';
end;
$$;
revoke all on function private.gpt_reservation_lifetime() from public, anon, authenticated;

-- =============================================================================================
-- Section - budget RPCs
-- =============================================================================================

-- G7: reserves the worst-case cost of one call only if the hourly and daily spend, this call
-- included, stay within the user's limits; decisions of one user are serialised by an advisory lock.
--
-- The reservation is the caller's upper bound on the bill: p_max_prompt_tokens is the prompt the
-- caller is about to send, counted before the call with the model's tokenizer (every message plus
-- the per-message and reply-priming overhead), and p_max_completion_tokens is what it passes to the
-- API as the completion cap (`max_completion_tokens`), so the provider cannot bill more output than
-- reserved. If the bill still exceeds the reservation (a tokenizer that under-counts),
-- settle_gpt_usage records the real cost and audits the overshoot. The answer's `expires_at` is
-- when run_maintenance would release the reservation; the call must end well before it.
create or replace function public.reserve_gpt_budget(
  p_user_id uuid,
  p_model text,
  p_max_prompt_tokens integer,
  p_max_completion_tokens integer,
  p_scan_job_id uuid default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_settings public.trading_settings;
  v_cost numeric;
  v_hour numeric;
  v_day numeric;
  v_reason text;
  v_id uuid;
  v_job_owner uuid;
  v_scan_job_id uuid;
  v_expires_at timestamptz;
begin
  if p_user_id is null then
    raise exception 'p_user_id is required' using errcode = '22023';
  end if;
  if p_model is null or btrim(p_model) = '' then
    raise exception 'p_model is required' using errcode = '22023';
  end if;
  if p_max_prompt_tokens is null or p_max_prompt_tokens not between 0 and 10000000 then
    raise exception 'p_max_prompt_tokens must be between 0 and 10000000, got %', p_max_prompt_tokens
      using errcode = '22023';
  end if;
  if p_max_completion_tokens is null or p_max_completion_tokens not between 0 and 10000000 then
    raise exception 'p_max_completion_tokens must be between 0 and 10000000, got %', p_max_completion_tokens
      using errcode = '22023';
  end if;
  if p_max_prompt_tokens + p_max_completion_tokens = 0 then
    raise exception 'a reservation needs at least one token' using errcode = '22023';
  end if;
  perform private.require_read_committed('reserve_gpt_budget');

  select * into v_settings from public.trading_settings s where s.user_id = p_user_id;
  if not found then
    return jsonb_build_object('allowed', false, 'reservation_id', null, 'reserved_usd', null,
                              'reason', 'not_found', 'spent_hour_usd', null, 'spent_day_usd', null,
                              'hourly_limit_usd', null, 'daily_limit_usd', null);
  end if;
  -- Another user's job is a caller bug; a job the user deleted while it was being scanned is not,
  -- and the reservation is then recorded without it.
  if p_scan_job_id is not null then
    select j.user_id into v_job_owner from public.scan_jobs j where j.id = p_scan_job_id;
    if found and v_job_owner <> p_user_id then
      raise exception 'p_scan_job_id belongs to another user' using errcode = '22023';
    end if;
    v_scan_job_id := case when found then p_scan_job_id end;
  end if;

  -- Everything from here to the insert is one critical section per user: the spend read below
  -- sees every reservation committed before we got the lock (READ COMMITTED takes a new snapshot
  -- per statement), and ours is committed before the next one of this user can read.
  perform private.lock_gpt_budget(p_user_id);
  select s.spent_hour_usd, s.spent_day_usd into v_hour, v_day from private.gpt_spend(p_user_id) s;

  v_cost := private.gpt_worst_case_usd(p_model, p_max_prompt_tokens, p_max_completion_tokens);
  v_reason := private.gpt_budget_denial(v_cost, v_hour, v_day, v_settings.gpt_hourly_budget_usd,
                                        v_settings.gpt_daily_budget_usd);

  if v_reason is not null then
    perform private.audit('gpt_budget.denied', p_user_id, null, null,
      jsonb_build_object('reason', v_reason, 'model', p_model, 'worst_case_usd', v_cost,
                         'spent_hour_usd', v_hour, 'spent_day_usd', v_day,
                         'hourly_limit_usd', v_settings.gpt_hourly_budget_usd,
                         'daily_limit_usd', v_settings.gpt_daily_budget_usd,
                         'scan_job_id', v_scan_job_id));
    return jsonb_build_object('allowed', false, 'reservation_id', null, 'reserved_usd', 0,
                              'worst_case_usd', v_cost, 'reason', v_reason, 'spent_hour_usd', v_hour, 'spent_day_usd', v_day,
                              'hourly_limit_usd', v_settings.gpt_hourly_budget_usd,
                              'daily_limit_usd', v_settings.gpt_daily_budget_usd,
                              'expires_at', null);
  end if;

  insert into public.gpt_usage_log (user_id, scan_job_id, model, status, reserved_usd,
                                    max_prompt_tokens, max_completion_tokens)
  values (p_user_id, v_scan_job_id, p_model, 'reserved', v_cost,
          p_max_prompt_tokens, p_max_completion_tokens)
  returning id, created_at + private.gpt_reservation_lifetime() into v_id, v_expires_at;

  perform private.audit('gpt_budget.reserved', p_user_id, null, null,
    jsonb_build_object('reservation_id', v_id, 'model', p_model, 'reserved_usd', v_cost,
                       'max_prompt_tokens', p_max_prompt_tokens,
                       'max_completion_tokens', p_max_completion_tokens,
                       'spent_hour_usd', v_hour + v_cost, 'spent_day_usd', v_day + v_cost,
                       'hourly_limit_usd', v_settings.gpt_hourly_budget_usd,
                       'daily_limit_usd', v_settings.gpt_daily_budget_usd,
                       'scan_job_id', v_scan_job_id, 'expires_at', v_expires_at));

  -- The figures after the decision: the spend includes this reservation.
  return jsonb_build_object('allowed', true, 'reservation_id', v_id, 'reserved_usd', v_cost,
                            'worst_case_usd', v_cost, 'reason', null, 'spent_hour_usd', v_hour + v_cost,
                            'spent_day_usd', v_day + v_cost,
                            'hourly_limit_usd', v_settings.gpt_hourly_budget_usd,
                            'daily_limit_usd', v_settings.gpt_daily_budget_usd,
                            'expires_at', v_expires_at);
end;
$$;
revoke execute on function public.reserve_gpt_budget(uuid, text, integer, integer, uuid) from public, anon, authenticated;
grant execute on function public.reserve_gpt_budget(uuid, text, integer, integer, uuid) to service_role;

-- G7: records the real cost of a call from the reported token counts and the model's prices — the
-- provider's bill, also when it exceeds the reservation (audited as an overshoot) and also when the
-- reservation was already released as stale (a late settle, audited); settling twice returns the
-- first result; a call that used no tokens frees its reservation.
create or replace function public.settle_gpt_usage(
  p_reservation_id uuid,
  p_prompt_tokens integer,
  p_cached_prompt_tokens integer,
  p_completion_tokens integer,
  p_request_id text default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.gpt_usage_log;
  v_price public.gpt_model_prices;
  v_cost numeric;
  v_late boolean;
  v_overshoot numeric;
  v_detail jsonb;
begin
  if p_reservation_id is null then
    raise exception 'p_reservation_id is required' using errcode = '22023';
  end if;
  if p_prompt_tokens is null or p_cached_prompt_tokens is null or p_completion_tokens is null
     or p_prompt_tokens < 0 or p_cached_prompt_tokens < 0 or p_completion_tokens < 0 then
    raise exception 'token counts are required and must not be negative' using errcode = '22023';
  end if;
  if p_cached_prompt_tokens > p_prompt_tokens then
    raise exception 'p_cached_prompt_tokens (%) exceeds p_prompt_tokens (%): prompt tokens include cached ones',
      p_cached_prompt_tokens, p_prompt_tokens using errcode = '22023';
  end if;
  if p_request_id is not null and length(p_request_id) > 200 then
    raise exception 'p_request_id is longer than 200 characters' using errcode = '22023';
  end if;
  perform private.require_read_committed('settle_gpt_usage');

  select * into v_row from public.gpt_usage_log l where l.id = p_reservation_id for update;
  if not found then
    return jsonb_build_object('cost_usd', null, 'status', 'not_found');
  end if;
  if v_row.status = 'settled' then
    return jsonb_build_object('cost_usd', v_row.cost_usd, 'status', 'settled', 'replayed', true);
  end if;
  -- A released row whose usage was recorded (no tokens used, or settled and then cleared) is
  -- final; one released without usage (stale, or cleared while reserved) takes a late bill below.
  if v_row.status = 'released' and (v_row.prompt_tokens is not null
                                    or (p_prompt_tokens = 0 and p_completion_tokens = 0)) then
    return jsonb_build_object('cost_usd', coalesce(v_row.cost_usd, 0), 'status', 'released',
                              'replayed', v_row.prompt_tokens is not null);
  end if;
  v_late := v_row.status = 'released';

  if p_prompt_tokens = 0 and p_completion_tokens = 0 then
    update public.gpt_usage_log l
       set status = 'released', released_at = now(), release_reason = 'no_tokens_used',
           prompt_tokens = 0, cached_prompt_tokens = 0, completion_tokens = 0, cost_usd = 0,
           request_id = p_request_id
     where l.id = p_reservation_id;
    perform private.audit('gpt_budget.reservation_released', v_row.user_id, null, null,
      jsonb_build_object('reservation_id', v_row.id, 'reserved_usd', v_row.reserved_usd,
                         'reserved_at', v_row.created_at, 'reason', 'no_tokens_used',
                         'request_id', p_request_id));
    return jsonb_build_object('cost_usd', 0, 'status', 'released', 'replayed', false);
  end if;

  select * into v_price from public.gpt_model_prices m where m.model = v_row.model;
  -- The foreign key guarantees the price row exists.
  v_cost := ((p_prompt_tokens - p_cached_prompt_tokens) * v_price.input_usd_per_mtok
             + p_cached_prompt_tokens * v_price.cached_input_usd_per_mtok
             + p_completion_tokens * v_price.output_usd_per_mtok) * 0.000001;
  v_overshoot := greatest(v_cost - v_row.reserved_usd, 0);

  -- The recorded cost is the truth even when it exceeds the reservation or arrives after it was
  -- released; the next reservation then sees it and is denied sooner.
  update public.gpt_usage_log l
     set status = 'settled', settled_at = now(), cost_usd = v_cost,
         prompt_tokens = p_prompt_tokens, cached_prompt_tokens = p_cached_prompt_tokens,
         completion_tokens = p_completion_tokens, request_id = p_request_id
   where l.id = p_reservation_id;

  v_detail := jsonb_build_object('reservation_id', v_row.id, 'model', v_row.model,
    'reserved_usd', v_row.reserved_usd, 'cost_usd', v_cost, 'overshoot_usd', v_overshoot,
    'prompt_tokens', p_prompt_tokens, 'cached_prompt_tokens', p_cached_prompt_tokens,
    'completion_tokens', p_completion_tokens, 'max_prompt_tokens', v_row.max_prompt_tokens,
    'max_completion_tokens', v_row.max_completion_tokens, 'request_id', p_request_id,
    'reserved_at', v_row.created_at, 'late', v_late);
  perform private.audit('gpt_budget.settled', v_row.user_id, null, null, v_detail);
  if v_overshoot > 0 then
    perform private.audit('gpt_budget.overshoot', v_row.user_id, null, null, v_detail);
  end if;
  if v_late then
    perform private.audit('gpt_budget.late_settlement', v_row.user_id, null, null,
      v_detail || jsonb_build_object('released_at', v_row.released_at,
                                     'release_reason', v_row.release_reason));
  end if;

  return jsonb_build_object('cost_usd', v_cost, 'status', 'settled', 'replayed', false,
                            'exceeded_reservation', v_overshoot > 0, 'overshoot_usd', v_overshoot,
                            'late', v_late);
end;
$$;
revoke execute on function public.settle_gpt_usage(uuid, integer, integer, integer, text) from public, anon, authenticated;
grant execute on function public.settle_gpt_usage(uuid, integer, integer, integer, text) to service_role;

-- Reports the user's spend and limits as reserve_gpt_budget sees them, without reserving or locking.
create or replace function public.check_gpt_budget(p_user_id uuid) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_settings public.trading_settings;
  v_hour numeric;
  v_day numeric;
  v_reason text;
begin
  if p_user_id is null then
    raise exception 'p_user_id is required' using errcode = '22023';
  end if;
  perform private.require_read_committed('check_gpt_budget');
  select * into v_settings from public.trading_settings s where s.user_id = p_user_id;
  if not found then
    return jsonb_build_object('allowed', false, 'reservation_id', null, 'reserved_usd', null,
                              'reason', 'not_found', 'spent_hour_usd', null, 'spent_day_usd', null,
                              'hourly_limit_usd', null, 'daily_limit_usd', null);
  end if;
  select s.spent_hour_usd, s.spent_day_usd into v_hour, v_day from private.gpt_spend(p_user_id) s;
  if v_day >= v_settings.gpt_daily_budget_usd then
    v_reason := 'daily_budget_exceeded';
  elsif v_hour >= v_settings.gpt_hourly_budget_usd then
    v_reason := 'hourly_budget_exceeded';
  end if;
  return jsonb_build_object(
    'allowed', v_reason is null,
    'reservation_id', null,
    'reserved_usd', 0,
    'reason', v_reason,
    'spent_hour_usd', v_hour,
    'spent_day_usd', v_day,
    'hourly_limit_usd', v_settings.gpt_hourly_budget_usd,
    'daily_limit_usd', v_settings.gpt_daily_budget_usd,
    'remaining_hour_usd', greatest(v_settings.gpt_hourly_budget_usd - v_hour, 0),
    'remaining_day_usd', greatest(v_settings.gpt_daily_budget_usd - v_day, 0)
  );
end;
$$;
revoke execute on function public.check_gpt_budget(uuid) from public, anon, authenticated;
grant execute on function public.check_gpt_budget(uuid) to service_role;

-- Per-day (UTC) and per-model spend, tokens and call counts of the last p_days days. A signed-in
-- user gets only their own figures: asking for anyone else answers {"status": "not_found"} — the
-- same answer as for a user that does not exist, so it reveals nothing (SPEC §3). It runs as the
-- caller (SECURITY INVOKER), so RLS on gpt_usage_log is a second wall behind that check.
create or replace function public.get_budget_analytics(p_user_id uuid, p_days integer default 7)
returns jsonb
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  v_operator boolean;
  v_settings public.trading_settings;
  v_from date;
  v_to date;
  v_hour numeric;
  v_day numeric;
  v_by_day jsonb;
  v_by_model jsonb;
  v_totals jsonb;
begin
  if p_user_id is null then
    raise exception 'p_user_id is required' using errcode = '22023';
  end if;
  if p_days is null or p_days not between 1 and 366 then
    raise exception 'p_days must be between 1 and 366, got %', p_days using errcode = '22023';
  end if;

  -- Operators (service_role, superusers) bypass RLS and may ask about anyone.
  select r.rolbypassrls or r.rolsuper into v_operator
  from pg_catalog.pg_roles r where r.rolname = current_user;
  if not coalesce(v_operator, false) and p_user_id is distinct from auth.uid() then
    return jsonb_build_object('status', 'not_found');
  end if;

  select * into v_settings from public.trading_settings s where s.user_id = p_user_id;
  if not found then
    return jsonb_build_object('status', 'not_found');
  end if;

  v_to := (now() at time zone 'utc')::date;
  v_from := v_to - (p_days - 1);

  -- Settled rows are calls (spend, tokens); reserved rows are outstanding; released ones count
  -- only as reservations. Days without rows are listed with zeros.
  with rows as (
    select l.*, (l.created_at at time zone 'utc')::date as day
    from public.gpt_usage_log l
    where l.user_id = p_user_id
      and l.created_at >= (v_from::timestamp at time zone 'utc')
  ),
  per_day as (
    select d::date as day,
           coalesce(sum(r.cost_usd) filter (where r.status = 'settled'), 0) as spend_usd,
           coalesce(sum(r.reserved_usd) filter (where r.status = 'reserved'), 0) as reserved_usd,
           count(r.id) filter (where r.status = 'settled') as calls,
           count(r.id) as reservations,
           count(r.id) filter (where r.status = 'released') as released,
           coalesce(sum(r.prompt_tokens) filter (where r.status = 'settled'), 0) as prompt_tokens,
           coalesce(sum(r.cached_prompt_tokens) filter (where r.status = 'settled'), 0) as cached_prompt_tokens,
           coalesce(sum(r.completion_tokens) filter (where r.status = 'settled'), 0) as completion_tokens
    from pg_catalog.generate_series(v_from, v_to, interval '1 day') d
    left join rows r on r.day = d::date
    group by d::date
  ),
  per_model as (
    select r.model,
           coalesce(sum(r.cost_usd) filter (where r.status = 'settled'), 0) as spend_usd,
           coalesce(sum(r.reserved_usd) filter (where r.status = 'reserved'), 0) as reserved_usd,
           count(*) filter (where r.status = 'settled') as calls,
           count(*) as reservations,
           count(*) filter (where r.status = 'released') as released,
           coalesce(sum(r.prompt_tokens) filter (where r.status = 'settled'), 0) as prompt_tokens,
           coalesce(sum(r.cached_prompt_tokens) filter (where r.status = 'settled'), 0) as cached_prompt_tokens,
           coalesce(sum(r.completion_tokens) filter (where r.status = 'settled'), 0) as completion_tokens
    from rows r
    group by r.model
  )
  select (select coalesce(jsonb_agg(to_jsonb(pd) order by pd.day), '[]'::jsonb) from per_day pd),
         (select coalesce(jsonb_agg(to_jsonb(pm) order by pm.spend_usd desc, pm.model), '[]'::jsonb)
            from per_model pm),
         (select jsonb_build_object(
                   'spend_usd', coalesce(sum(pd.spend_usd), 0),
                   'reserved_usd', coalesce(sum(pd.reserved_usd), 0),
                   'calls', coalesce(sum(pd.calls), 0),
                   'reservations', coalesce(sum(pd.reservations), 0),
                   'released', coalesce(sum(pd.released), 0),
                   'prompt_tokens', coalesce(sum(pd.prompt_tokens), 0),
                   'cached_prompt_tokens', coalesce(sum(pd.cached_prompt_tokens), 0),
                   'completion_tokens', coalesce(sum(pd.completion_tokens), 0))
            from per_day pd)
    into v_by_day, v_by_model, v_totals;

  -- The same windows as private.gpt_spend (not callable from here: this runs as the caller).
  select
    coalesce(sum(case l.status when 'settled' then l.cost_usd when 'reserved' then l.reserved_usd end)
               filter (where l.created_at > now() - interval '1 hour'), 0),
    coalesce(sum(case l.status when 'settled' then l.cost_usd when 'reserved' then l.reserved_usd end)
               filter (where l.created_at >= (date_trunc('day', now() at time zone 'utc') at time zone 'utc')), 0)
    into v_hour, v_day
  from public.gpt_usage_log l
  where l.user_id = p_user_id
    and l.status <> 'released';

  return jsonb_build_object(
    'status', 'ok',
    'user_id', p_user_id,
    'days', p_days,
    'from', v_from,
    'to', v_to,
    'hourly_limit_usd', v_settings.gpt_hourly_budget_usd,
    'daily_limit_usd', v_settings.gpt_daily_budget_usd,
    'spent_hour_usd', v_hour,
    'spent_day_usd', v_day,
    'totals', v_totals,
    'by_day', v_by_day,
    'by_model', v_by_model
  );
end;
$$;
revoke execute on function public.get_budget_analytics(uuid, integer) from public, anon;
grant execute on function public.get_budget_analytics(uuid, integer) to authenticated, service_role;

-- Test/operator aid: releases every reserved or settled row of the user's current UTC day, so
-- they stop counting against the limits (rows are kept, marked released), and audits it.
create or replace function public.clear_todays_budget(p_user_id uuid) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_count integer;
  v_day_start timestamptz := date_trunc('day', now() at time zone 'utc') at time zone 'utc';
begin
  if p_user_id is null then
    raise exception 'p_user_id is required' using errcode = '22023';
  end if;
  perform private.require_read_committed('clear_todays_budget');
  perform private.lock_gpt_budget(p_user_id);
  update public.gpt_usage_log l
     set status = 'released', released_at = now(), release_reason = 'cleared_by_operator'
   where l.user_id = p_user_id
     and l.status in ('reserved', 'settled')
     and l.created_at >= v_day_start;
  get diagnostics v_count = row_count;
  perform private.audit('gpt_budget.cleared', p_user_id, null, null,
    jsonb_build_object('rows_released', v_count, 'day_start', v_day_start,
                       'by', coalesce(auth.role(), current_user)));
  return v_count;
end;
$$;
revoke execute on function public.clear_todays_budget(uuid) from public, anon, authenticated;
grant execute on function public.clear_todays_budget(uuid) to service_role;
