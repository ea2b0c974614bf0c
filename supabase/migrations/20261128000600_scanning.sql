/*
 * Scanning: what scan_scheduler needs from the database besides the scheduler (claim, heartbeat,
 * release) and budget (reserve, settle) RPCs. A tick works set-based, a batch of claimed jobs at
 * a time, one call per step for the whole batch:
 *
 *   claim_due_scan_jobs → get_scan_contexts → market data, once per (market, candle interval)
 *     → the oracle, once per market snapshot (claim_oracle_answer; ORACLE=openai: every user
 *       reserves with reserve_gpt_budgets, one model call, record_oracle_answer)
 *     → create_scan_proposals → release_job_locks; at the tick's end settle_oracle_answers splits
 *       each call's bill among the users who used it, and the dispatch sends the auto-approved
 *       proposals waiting in the queue (the execution migration's lease_auto_approved_proposals)
 *       to trading_execute (Idempotency-Key auto:<proposal_id>)
 *
 *   private.scan_period_proposals  the proposal a job made in its current due period (one row per job)
 *   private.oracle_answers         one oracle answer per market snapshot, under a unique key, so
 *                                  concurrent ticks make one call; proposals and reservations name it
 *                                  (the table is created by the execution migration, before the
 *                                  proposals and reservations that reference it)
 *   get_scan_contexts              before the oracle, per job: does this worker still hold the lease,
 *                                  how big may the user's next order be, did this period already
 *                                  propose, which sides already have an open proposal
 *   create_scan_proposals          the proposals of a batch, each only by the job's lease holder (G2
 *                                  fence), at most once per due period (G1 for auto-execute) and at
 *                                  most one open per (user, market, side) (an unchanged signal does
 *                                  not stack: the execution migration's
 *                                  trade_proposals_one_open_scan_proposal_idx)
 *   get_scan_context, create_scan_proposal   the same rules for one job
 *   claim_oracle_answer            the answer for a key, or the right to make its one call
 *   record_oracle_answer           what that call answered and what it cost
 *   reserve_gpt_budgets            reserve_gpt_budget's rule for each user of a shared answer (G7)
 *   settle_oracle_answers          a call's bill split among its reservations: the rows sum to the
 *                                  bill exactly, no row above its reservation (G7)
 *
 * A due period runs from the job's last success (or its creation) to its next success:
 * `coalesce(last_success_at, created_at)` names it. A run that dies half-way (SIGKILL, lost lease,
 * failed release) leaves last_success_at alone, so every later run of the job until one succeeds is
 * in the same period and finds the proposal already made instead of proposing anew (an
 * auto-approved one waits in the dispatch queue, every request for it under the same
 * Idempotency-Key). With trade_executions' unique (proposal_id) and unique (user_id,
 * idempotency_key), a repeated tick can therefore never execute twice.
 *
 * The fence: a worker whose lease was taken over (it stalled past lock_expires_at and another worker
 * claimed the job) must not write results. create_scan_proposals checks `locked_by = p_worker_id`
 * under the job's row lock, the same rule heartbeat_scan_job and release_job_locks apply, so a late
 * writer is answered `lease_lost` and writes nothing. (A lease that expired but that nobody took over
 * is still the worker's: nobody else can hold the job meanwhile.)
 *
 * Sharing and G7. The oracle sees nothing about a user, so one answer serves every user whose scan
 * read the same snapshot; each user's proposal still follows from their own settings and order room.
 * With ORACLE=openai every user reserves the call's whole worst case under their own lock, as
 * reserve_gpt_budget would for a call of their own (a denied user gets no proposal); the call is
 * made once; its bill is recorded on the answer and then split among the reservations that used
 * it, in units of 10^-max(12, the bill's scale) USD, the remainder one unit each to the first
 * reservations by id — so every share is at most the bill (≤ each reservation, the call's worst
 * case) and the shares sum to the bill exactly.
 *
 * Every RPC here is service-only.
 */

set lock_timeout = '5s';  -- a queued DDL lock fails the push instead of blocking writes

-- =============================================================================================
-- Section - private.scan_period_proposals
-- =============================================================================================
-- One row per job: the latest period that produced a proposal, and that proposal. A new period
-- overwrites it, so the table never holds more rows than scan_jobs.
create table private.scan_period_proposals (
  scan_job_id uuid primary key references public.scan_jobs (id) on delete cascade,
  period_start timestamptz not null,
  proposal_id uuid not null references public.trade_proposals (id) on delete cascade,
  created_at timestamptz not null default now()
);
-- The trade_proposals foreign key's cascade.
create index scan_period_proposals_proposal_idx on private.scan_period_proposals (proposal_id);

alter table private.scan_period_proposals enable row level security;

-- Written and read only by the SECURITY DEFINER functions below; no API role touches it.
revoke all on private.scan_period_proposals from public, anon, authenticated, service_role;

-- =============================================================================================
-- Section - scanning RPCs (service-only)
-- =============================================================================================

-- A JSON number or decimal string as numeric, or null when it is neither (absent, NaN, Infinity,
-- text): batch RPCs take amounts as the RPC port sends them (decimal strings) and check them
-- without risking a cast error.
create or replace function private.json_decimal(p_value jsonb) returns numeric
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_value is null or jsonb_typeof(p_value) not in ('number', 'string')
     or p_value #>> '{}' !~ '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$' then
    return null;
  end if;
  return (p_value #>> '{}')::numeric;
end;
$$;
revoke all on function private.json_decimal(jsonb) from public, anon, authenticated;

-- What each scan job of a batch needs to know before it spends anything (market data calls, GPT
-- budget), in the order of p_job_ids (a JSON array of at most 1000 job ids), as {"contexts": […]}:
--   lease_held       this worker still holds the job's lease (G2)
--   proposal         the proposal this due period already made ({proposal_id, status, decided_by,
--                    side, amount_quote, expires_at}), or null: a job that finds one hands it on
--                    instead of asking the oracle again
--   open_sides       the sides with an open (pending or approved) scanner proposal for the user's
--                    market: a signal on such a side proposes nothing (an unchanged signal does not
--                    stack)
--   sizing           the room for the user's next order, by the same figures claim_trade_execution's
--                    order_limits and daily_limits validators read (p_mode: paper | live):
--                    min_order_quote (the market's), max_order_quote (the smallest cap that is set:
--                    the user's, their allowlist row's, the market's, the system's) and its source,
--                    daily_remaining_quote and trades_left_today (today's UTC counting executions)
--   auto_execute, min_confidence, trading_enabled   the user's switches, for the log and the tick
-- An unknown job is {"found": false, "job_id"}. Reads only.
create or replace function public.get_scan_contexts(
  p_worker_id text,
  p_job_ids jsonb,
  p_mode text default 'paper'
) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_ids uuid[];
  v_controls public.system_controls;
  v_contexts jsonb;
begin
  if p_worker_id is null or btrim(p_worker_id) = '' then
    raise exception 'p_worker_id must be a non-empty text' using errcode = '22023';
  end if;
  if p_mode is null or p_mode not in ('paper', 'live') then
    raise exception 'p_mode must be paper or live, got %', coalesce(p_mode, 'null') using errcode = '22023';
  end if;
  v_ids := private.uuid_array(p_job_ids, 'p_job_ids', 1000);
  select * into v_controls from public.system_controls c limit 1;

  -- The order_limits validator's cap and its source, and the daily_limits validator's figures:
  -- the same helpers claim_trade_execution calls (the execution migration's "order room").
  select coalesce(pg_catalog.jsonb_agg(
           case when j.id is null then pg_catalog.jsonb_build_object('found', false, 'job_id', i.id)
           else pg_catalog.jsonb_build_object(
             'found', true,
             'job_id', j.id,
             'user_id', j.user_id,
             'market', j.market,
             'lease_held', j.locked_by is not distinct from p_worker_id,
             'period_start', coalesce(j.last_success_at, j.created_at),
             'proposal', case when p.id is not null then pg_catalog.jsonb_build_object(
                 'proposal_id', p.id, 'status', p.status, 'decided_by', p.decided_by,
                 'side', p.side, 'amount_quote', p.amount_quote, 'expires_at', p.expires_at) end,
             'open_sides', o.sides,
             'auto_execute', coalesce(s.auto_execute, false),
             'min_confidence', s.min_confidence,
             'trading_enabled', coalesce(s.trading_enabled, false)
                                and coalesce(not v_controls.trading_halted, false),
             'sizing', pg_catalog.jsonb_build_object(
               'mode', p_mode,
               'min_order_quote', m.min_order_quote,
               'max_order_quote', c.max_order_quote,
               'max_order_source', c.max_order_source,
               'daily_remaining_quote', greatest(coalesce(s.max_daily_quote, 0) - d.quote_sum, 0),
               'trades_left_today', greatest(coalesce(s.max_trades_per_day, 0) - d.trades, 0)))
           end order by i.ord), '[]'::jsonb)
    into v_contexts
    from unnest(v_ids) with ordinality as i (id, ord)
    left join public.scan_jobs j on j.id = i.id
    left join public.trading_settings s on s.user_id = j.user_id
    left join public.market_allowlist m on m.market = j.market
    left join public.trading_allowlist a on a.user_id = j.user_id and a.market = j.market
    left join private.scan_period_proposals sp
           on sp.scan_job_id = j.id and sp.period_start = coalesce(j.last_success_at, j.created_at)
    left join public.trade_proposals p on p.id = sp.proposal_id
    left join lateral private.order_cap(j.market, s.max_order_quote, a.max_order_quote,
                                        m.max_order_quote, v_controls.max_order_quote) c on true
    left join lateral private.daily_executions(j.user_id, p_mode, now()) d on j.id is not null
    left join lateral (
      select coalesce(pg_catalog.jsonb_agg(x.side order by x.side), '[]'::jsonb) as sides
        from (select distinct op.side
                from public.trade_proposals op
               where op.user_id = j.user_id and op.market = j.market
                 and op.scan_job_id is not null and op.status in ('pending', 'approved')) x
    ) o on j.id is not null;
  return pg_catalog.jsonb_build_object('contexts', v_contexts);
end;
$$;
revoke execute on function public.get_scan_contexts(text, jsonb, text) from public, anon, authenticated;
grant execute on function public.get_scan_contexts(text, jsonb, text) to service_role;

-- get_scan_contexts for one job (its answer without the list around it).
create or replace function public.get_scan_context(
  p_job_id uuid,
  p_worker_id text,
  p_mode text default 'paper'
) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if p_job_id is null then
    raise exception 'p_job_id is required' using errcode = '22023';
  end if;
  return public.get_scan_contexts(p_worker_id, pg_catalog.jsonb_build_array(p_job_id), p_mode)
           -> 'contexts' -> 0;
end;
$$;
revoke execute on function public.get_scan_context(uuid, text, text) from public, anon, authenticated;
grant execute on function public.get_scan_context(uuid, text, text) to service_role;

-- G2 fence + G1 for auto-execute + no stacking, for a batch: writes each proposal of p_proposals (a
-- JSON array of at most 1000 {"job_id", "side", "amount_quote", "confidence", "rationale",
-- "source", "model", "reference_price", "oracle_answer_id"}, distinct jobs; amounts as numbers or
-- decimal strings) only while p_worker_id holds the job's lease, at most once per due period, and
-- not while the user has an open scanner proposal on that market and side. Arguments are checked
-- as create_trade_proposal checks its own (22023 naming the first bad entry, nothing written);
-- auto-approval is create_trade_proposal's rule (the user's auto_execute, and confidence ≥ their
-- min_confidence). Answers {"results": […]} in input order, each with "job_id" and
--   {"outcome": "created",  "proposal_id", "status", "decided_by", "period_start"}
--   {"outcome": "replayed", "proposal_id", "status", "decided_by", "period_start"}  this period's
--                                                     proposal, as it is now; nothing written
--   {"outcome": "unchanged", "proposal_id", "status", "decided_by", "period_start"}  the open
--                                                     proposal on that side; nothing written
--   {"outcome": "lease_lost"}    the job is not leased to p_worker_id; nothing written
--   {"outcome": "not_found"}     no such job
create or replace function public.create_scan_proposals(
  p_worker_id text,
  p_proposals jsonb,
  p_ttl_seconds integer default 900
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_problem text;
  v_ids uuid[];
  v_results jsonb;
begin
  if p_worker_id is null or btrim(p_worker_id) = '' then
    raise exception 'p_worker_id must be a non-empty text' using errcode = '22023';
  end if;
  if p_ttl_seconds is null or p_ttl_seconds not between 1 and 86400 then
    raise exception 'p_ttl_seconds must be between 1 and 86400, got %', coalesce(p_ttl_seconds::text, 'null')
      using errcode = '22023';
  end if;
  if p_proposals is null or jsonb_typeof(p_proposals) <> 'array' then
    raise exception 'p_proposals must be a JSON array of proposals' using errcode = '22023';
  end if;
  if jsonb_array_length(p_proposals) > 1000 then
    raise exception 'p_proposals holds at most 1000 entries, got %', jsonb_array_length(p_proposals)
      using errcode = '22023';
  end if;

  -- The first malformed entry, by position (CASE evaluates its branches in order).
  select format('p_proposals[%s] %s', e.ord - 1, e.problem) into v_problem
    from (
      select t.ord, case
        when jsonb_typeof(t.e) <> 'object' then 'is not an object'
        when exists (select 1 from jsonb_object_keys(t.e) k
                     where k not in ('job_id', 'side', 'amount_quote', 'confidence', 'rationale',
                                     'source', 'model', 'reference_price', 'oracle_answer_id'))
          then 'has an unknown key'
        when jsonb_typeof(t.e -> 'job_id') is distinct from 'string'
             or t.e ->> 'job_id' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
          then 'job_id is not a uuid'
        when coalesce(t.e ->> 'side', '') not in ('buy', 'sell')
          then format('side must be buy or sell, got %s', coalesce(t.e ->> 'side', 'null'))
        when coalesce(private.json_decimal(t.e -> 'amount_quote') <= 0, true)
          then format('amount_quote must be a positive amount, got %s', coalesce(t.e ->> 'amount_quote', 'null'))
        when coalesce(private.json_decimal(t.e -> 'confidence') not between 0 and 1, true)
          then format('confidence must be between 0 and 1, got %s', coalesce(t.e ->> 'confidence', 'null'))
        when coalesce(t.e ->> 'source', '') not in ('rules', 'openai', 'manual')
          then format('source must be rules, openai or manual, got %s', coalesce(t.e ->> 'source', 'null'))
        when jsonb_typeof(t.e -> 'rationale') not in ('string', 'null')
             or length(coalesce(t.e ->> 'rationale', '')) > 10000
          then 'rationale must be a text of at most 10000 characters'
        when jsonb_typeof(t.e -> 'model') not in ('string', 'null')
             or (t.e ->> 'model' is not null and length(t.e ->> 'model') not between 1 and 100)
          then 'model must be 1..100 characters when given'
        when coalesce(jsonb_typeof(t.e -> 'reference_price'), 'null') <> 'null'
             and coalesce(private.json_decimal(t.e -> 'reference_price') <= 0, true)
          then format('reference_price must be positive when given, got %s', t.e ->> 'reference_price')
        when jsonb_typeof(t.e -> 'oracle_answer_id') not in ('string', 'null')
             or t.e ->> 'oracle_answer_id' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
          then 'oracle_answer_id is not a uuid'
      end as problem
      from jsonb_array_elements(p_proposals) with ordinality as t (e, ord)
    ) e
   where e.problem is not null
   order by e.ord
   limit 1;
  if v_problem is not null then
    raise exception '%', v_problem using errcode = '22023';
  end if;
  v_ids := array(select (t.e ->> 'job_id')::uuid from jsonb_array_elements(p_proposals) t (e));
  if cardinality(v_ids) <> (select count(distinct x) from unnest(v_ids) x) then
    raise exception 'p_proposals names a job more than once' using errcode = '22023';
  end if;

  -- The row locks hold every lease still until we commit: a takeover (claim), a release or a
  -- cleanup of these jobs waits for us, and we see each lease as it is once no one else can change
  -- it. In id order, as every batch writer of scan_jobs locks its rows.
  perform 1 from public.scan_jobs j where j.id = any(v_ids) order by j.id for update;

  with input as (
    select t.ord, (t.e ->> 'job_id')::uuid as job_id, t.e ->> 'side' as side,
           private.json_decimal(t.e -> 'amount_quote') as amount_quote,
           private.json_decimal(t.e -> 'confidence') as confidence,
           coalesce(t.e ->> 'rationale', '') as rationale, t.e ->> 'source' as source,
           t.e ->> 'model' as model, private.json_decimal(t.e -> 'reference_price') as reference_price,
           (t.e ->> 'oracle_answer_id')::uuid as oracle_answer_id
      from jsonb_array_elements(p_proposals) with ordinality as t (e, ord)
  ), decided as (
    select i.*, j.id is not null as found, j.user_id, j.market,
           j.locked_by is not distinct from p_worker_id as held,
           coalesce(j.last_success_at, j.created_at) as period_start,
           sp.proposal_id as period_proposal_id
      from input i
      left join public.scan_jobs j on j.id = i.job_id
      left join private.scan_period_proposals sp
             on sp.scan_job_id = j.id and sp.period_start = coalesce(j.last_success_at, j.created_at)
  ), inserted as (
    insert into public.trade_proposals (user_id, scan_job_id, market, side, amount_quote,
                                        reference_price, confidence, rationale, source, model,
                                        status, expires_at, decided_at, decided_by,
                                        oracle_answer_id)
    select d.user_id, d.job_id, d.market, d.side, d.amount_quote, d.reference_price, d.confidence,
           d.rationale, d.source, d.model,
           case when a.auto then 'approved' else 'pending' end,
           now() + make_interval(secs => p_ttl_seconds),
           case when a.auto then now() end,
           case when a.auto then 'auto' end,
           d.oracle_answer_id
      from decided d
      join public.trading_settings s on s.user_id = d.user_id
      cross join lateral (select coalesce(s.auto_execute, false)
                                 and d.confidence >= s.min_confidence as auto) a
     where d.found and d.held and d.period_proposal_id is null
    on conflict (user_id, market, side)
       where scan_job_id is not null and status in ('pending', 'approved')
       do nothing
    returning *
  ), periods as (
    insert into private.scan_period_proposals (scan_job_id, period_start, proposal_id)
    select n.scan_job_id, d.period_start, n.id
      from inserted n join decided d on d.job_id = n.scan_job_id
    on conflict (scan_job_id) do update
      set period_start = excluded.period_start, proposal_id = excluded.proposal_id,
          created_at = now()
    returning 1
  ), audited as (
    -- create_trade_proposal's audit row, and the answer the proposal came from.
    insert into public.execution_audit_log (user_id, proposal_id, event, detail)
    select n.user_id, n.id, 'proposal.created', pg_catalog.jsonb_build_object(
             'market', n.market, 'side', n.side, 'amount_quote', n.amount_quote,
             'confidence', n.confidence, 'source', n.source, 'model', n.model,
             'scan_job_id', n.scan_job_id, 'status', n.status, 'decided_by', n.decided_by,
             'expires_at', n.expires_at, 'min_confidence', s.min_confidence,
             'auto_execute', s.auto_execute, 'oracle_answer_id', n.oracle_answer_id)
      from inserted n join public.trading_settings s on s.user_id = n.user_id
    returning 1
  )
  select pg_catalog.jsonb_agg(
           case
             when not d.found then pg_catalog.jsonb_build_object('job_id', d.job_id, 'outcome', 'not_found')
             when not d.held then pg_catalog.jsonb_build_object('job_id', d.job_id, 'outcome', 'lease_lost')
             else pg_catalog.jsonb_build_object(
               'job_id', d.job_id,
               'outcome', case when pp.id is not null then 'replayed'
                               when n.id is not null then 'created' else 'unchanged' end,
               'proposal_id', coalesce(pp.id, n.id, op.id),
               'status', coalesce(pp.status, n.status, op.status),
               'decided_by', case when pp.id is not null then pp.decided_by
                                  when n.id is not null then n.decided_by else op.decided_by end,
               'period_start', d.period_start)
           end order by d.ord)
    into v_results
    from decided d
    left join inserted n on n.scan_job_id = d.job_id
    left join public.trade_proposals pp on pp.id = d.period_proposal_id
    left join lateral (
      select o.id, o.status, o.decided_by
        from public.trade_proposals o
       where o.user_id = d.user_id and o.market = d.market and o.side = d.side
         and o.scan_job_id is not null and o.status in ('pending', 'approved')
       limit 1
    ) op on d.found and d.held and pp.id is null and n.id is null;
  return pg_catalog.jsonb_build_object('results', coalesce(v_results, '[]'::jsonb));
end;
$$;
revoke execute on function public.create_scan_proposals(text, jsonb, integer) from public, anon, authenticated;
grant execute on function public.create_scan_proposals(text, jsonb, integer) to service_role;

-- create_scan_proposals for one job (its answer without the list around it).
create or replace function public.create_scan_proposal(
  p_job_id uuid,
  p_worker_id text,
  p_side text,
  p_amount_quote numeric,
  p_confidence numeric,
  p_rationale text,
  p_source text,
  p_model text default null,
  p_reference_price numeric default null,
  p_ttl_seconds integer default 900
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_job_id is null then
    raise exception 'p_job_id is required' using errcode = '22023';
  end if;
  return public.create_scan_proposals(p_worker_id, pg_catalog.jsonb_build_array(
           pg_catalog.jsonb_build_object(
             'job_id', p_job_id, 'side', p_side, 'amount_quote', p_amount_quote,
             'confidence', p_confidence, 'rationale', p_rationale, 'source', p_source,
             'model', p_model, 'reference_price', p_reference_price)),
           p_ttl_seconds) -> 'results' -> 0;
end;
$$;
revoke execute on function public.create_scan_proposal(uuid, text, text, numeric, numeric, text, text, text, numeric, integer) from public, anon, authenticated;
grant execute on function public.create_scan_proposal(uuid, text, text, numeric, numeric, text, text, text, numeric, integer) to service_role;

-- =============================================================================================
-- Section - shared oracle answers (service-only)
-- =============================================================================================

-- One answer per key, one call per answer: inserts the key's answer (the rules oracle: p_answer, a
-- free and deterministic answer, stored `answered`) or the right to make its call (the model:
-- `pending`, claimed by p_worker_id for p_claim_seconds). Answers
--   {"outcome": "answered", "answer_id", "answer"}        the key's answer (ours or another's)
--   {"outcome": "claimed",  "answer_id", "claimed_until"} ours to call, then record_oracle_answer
--   {"outcome": "pending",  "answer_id", "claimed_until"} another worker is calling: its users may
--                                                         reserve for it and wait for the answer
-- A claim that outlived claimed_until without an answer (its worker died) is marked failed and the
-- key claimed anew; a failed attempt never blocks the key.
create or replace function public.claim_oracle_answer(
  p_worker_id text,
  p_market text,
  p_candle_interval text,
  p_input_digest text,
  p_oracle text,
  p_model text,
  p_prompt_version text,
  p_schema_version text,
  p_max_prompt_tokens integer,
  p_max_completion_tokens integer,
  p_claim_seconds integer,
  p_answer jsonb default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row private.oracle_answers;
  v_attempt integer;
begin
  if p_worker_id is null or btrim(p_worker_id) = '' or length(p_worker_id) > 200 then
    raise exception 'p_worker_id must be a non-empty text of at most 200 characters'
      using errcode = '22023';
  end if;
  if p_market is null or p_market !~ '^[A-Z0-9]{1,15}-[A-Z]{2,6}$' then
    raise exception 'p_market must look like BTC-EUR, got %', coalesce(p_market, 'null')
      using errcode = '22023';
  end if;
  if p_candle_interval is null or p_candle_interval !~ '^[0-9]{1,2}[mhdWM]$' then
    raise exception 'p_candle_interval must be a candle interval like 1h, got %',
      coalesce(p_candle_interval, 'null') using errcode = '22023';
  end if;
  if p_input_digest is null or p_input_digest !~ '^[0-9a-f]{64}$' then
    raise exception 'p_input_digest must be a hex SHA-256 digest' using errcode = '22023';
  end if;
  if p_oracle is null or p_oracle not in ('rules', 'openai') then
    raise exception 'p_oracle must be rules or openai, got %', coalesce(p_oracle, 'null')
      using errcode = '22023';
  end if;
  if p_model is null or length(p_model) > 100 or (p_oracle = 'openai' and p_model = '') then
    raise exception 'p_model must be a model name (empty for the rules oracle)' using errcode = '22023';
  end if;
  if coalesce(length(p_prompt_version), 0) not between 1 and 50
     or coalesce(length(p_schema_version), 0) not between 1 and 50 then
    raise exception 'p_prompt_version and p_schema_version must be 1..50 characters' using errcode = '22023';
  end if;
  if p_max_prompt_tokens is null or p_max_prompt_tokens not between 0 and 10000000
     or p_max_completion_tokens is null or p_max_completion_tokens not between 0 and 10000000 then
    raise exception 'p_max_prompt_tokens and p_max_completion_tokens must be between 0 and 10000000'
      using errcode = '22023';
  end if;
  if p_claim_seconds is null or p_claim_seconds not between 1 and 3600 then
    raise exception 'p_claim_seconds must be between 1 and 3600, got %', p_claim_seconds
      using errcode = '22023';
  end if;
  if (p_oracle = 'rules') <> (p_answer is not null) then
    raise exception 'the rules oracle stores its answer (p_answer); a model''s answer is recorded after its call'
      using errcode = '22023';
  end if;
  if p_answer is not null and jsonb_typeof(p_answer) <> 'object' then
    raise exception 'p_answer must be a JSON object' using errcode = '22023';
  end if;

  for v_attempt in 1..2 loop
    insert into private.oracle_answers as a (
      market, candle_interval, input_digest, oracle, model, prompt_version, schema_version,
      max_prompt_tokens, max_completion_tokens, status, claimed_by, claimed_until, answer,
      answered_at, prompt_tokens, cached_prompt_tokens, completion_tokens, cost_usd, shared_by,
      settled_at)
    select p_market, p_candle_interval, p_input_digest, p_oracle, p_model, p_prompt_version,
           p_schema_version, p_max_prompt_tokens, p_max_completion_tokens,
           case when p_answer is null then 'pending' else 'answered' end,
           case when p_answer is null then p_worker_id end,
           case when p_answer is null then now() + make_interval(secs => p_claim_seconds) end,
           p_answer, case when p_answer is not null then now() end,
           -- The rules oracle costs nothing: its bill is zero and settled at once.
           r.zero, r.zero, r.zero, r.zero, r.zero, case when p_answer is not null then now() end
      from (select case when p_answer is not null then 0 end as zero) r
    on conflict (market, candle_interval, input_digest, oracle, model, prompt_version,
                 schema_version, max_completion_tokens)
       where status <> 'failed'
       do nothing
    returning * into v_row;
    if found then
      return case when v_row.status = 'answered'
        then pg_catalog.jsonb_build_object('outcome', 'answered', 'answer_id', v_row.id,
                                           'answer', v_row.answer)
        else pg_catalog.jsonb_build_object('outcome', 'claimed', 'answer_id', v_row.id,
                                           'claimed_until', v_row.claimed_until) end;
    end if;

    select * into v_row
      from private.oracle_answers a
     where a.market = p_market and a.candle_interval = p_candle_interval
       and a.input_digest = p_input_digest and a.oracle = p_oracle and a.model = p_model
       and a.prompt_version = p_prompt_version and a.schema_version = p_schema_version
       and a.max_completion_tokens = p_max_completion_tokens and a.status <> 'failed'
       for update;
    if not found then
      continue;  -- it failed meanwhile: the key is free again
    end if;
    if v_row.status = 'answered' then
      return pg_catalog.jsonb_build_object('outcome', 'answered', 'answer_id', v_row.id,
                                           'answer', v_row.answer);
    end if;
    if v_row.claimed_until > now() then
      return pg_catalog.jsonb_build_object(
        'outcome', case when v_row.claimed_by = p_worker_id then 'claimed' else 'pending' end,
        'answer_id', v_row.id, 'claimed_until', v_row.claimed_until);
    end if;
    -- Its worker never recorded an answer: whether that call was billed is unknown, so its
    -- reservations are left to run_maintenance's release, as for a call that timed out.
    update private.oracle_answers a
       set status = 'failed', failure = 'the claim expired without an answer'
     where a.id = v_row.id;
  end loop;
  raise exception 'could not claim the oracle answer in % attempts', v_attempt using errcode = '40001';
end;
$$;
revoke execute on function public.claim_oracle_answer(text, text, text, text, text, text, text, text, integer, integer, integer, jsonb) from public, anon, authenticated;
grant execute on function public.claim_oracle_answer(text, text, text, text, text, text, text, text, integer, integer, integer, jsonb) to service_role;

-- Records what the claimed call gave: p_status `answered` (p_answer: the model's answer, usable or
-- not) or `failed` (p_failure: no answer), and its bill — the provider's token counts, all three, or
-- all null when it is unknown whether the call was billed (a timeout after sending). The cost is
-- computed here from gpt_model_prices, as settle_gpt_usage computes it. A bill of zero tokens
-- releases every reservation of the answer at once; any other bill is split among them by
-- settle_oracle_answers. Only the claimant records, once:
--   {"recorded": true, "cost_usd", "released"}  |  {"recorded": false, "reason": "not_claimant" | "not_found"}
create or replace function public.record_oracle_answer(
  p_answer_id uuid,
  p_worker_id text,
  p_status text,
  p_answer jsonb,
  p_prompt_tokens integer,
  p_cached_prompt_tokens integer,
  p_completion_tokens integer,
  p_request_id text default null,
  p_failure text default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row private.oracle_answers;
  v_price public.gpt_model_prices;
  v_cost numeric;
  v_released bigint := 0::bigint;
begin
  if p_answer_id is null then
    raise exception 'p_answer_id is required' using errcode = '22023';
  end if;
  if p_worker_id is null or btrim(p_worker_id) = '' then
    raise exception 'p_worker_id must be a non-empty text' using errcode = '22023';
  end if;
  if p_status is null or p_status not in ('answered', 'failed') then
    raise exception 'p_status must be answered or failed, got %', coalesce(p_status, 'null')
      using errcode = '22023';
  end if;
  if p_status = 'answered' and (p_answer is null or jsonb_typeof(p_answer) <> 'object') then
    raise exception 'an answered call needs its answer (a JSON object)' using errcode = '22023';
  end if;
  if num_nulls(p_prompt_tokens, p_cached_prompt_tokens, p_completion_tokens) not in (0, 3) then
    raise exception 'the bill is all three token counts, or none (unknown)' using errcode = '22023';
  end if;
  if p_prompt_tokens < 0 or p_cached_prompt_tokens < 0 or p_completion_tokens < 0 then
    raise exception 'token counts must not be negative' using errcode = '22023';
  end if;
  if p_cached_prompt_tokens > p_prompt_tokens then
    raise exception 'p_cached_prompt_tokens (%) exceeds p_prompt_tokens (%): prompt tokens include cached ones',
      p_cached_prompt_tokens, p_prompt_tokens using errcode = '22023';
  end if;
  if p_request_id is not null and length(p_request_id) > 200 then
    raise exception 'p_request_id is longer than 200 characters' using errcode = '22023';
  end if;
  perform private.require_read_committed('record_oracle_answer');

  select * into v_row from private.oracle_answers a where a.id = p_answer_id for update;
  if not found then
    return pg_catalog.jsonb_build_object('recorded', false, 'reason', 'not_found');
  end if;
  if v_row.status <> 'pending' or v_row.claimed_by is distinct from p_worker_id then
    return pg_catalog.jsonb_build_object('recorded', false, 'reason', 'not_claimant');
  end if;

  if p_prompt_tokens is not null then
    select * into v_price from public.gpt_model_prices m where m.model = v_row.model;
    -- Multiplying by 0.000001 (not dividing by a million) keeps numeric arithmetic exact.
    v_cost := ((p_prompt_tokens - p_cached_prompt_tokens) * coalesce(v_price.input_usd_per_mtok, 0)
               + p_cached_prompt_tokens * coalesce(v_price.cached_input_usd_per_mtok, 0)
               + p_completion_tokens * coalesce(v_price.output_usd_per_mtok, 0)) * 0.000001;
  end if;

  update private.oracle_answers a
     set status = p_status,
         answer = p_answer,
         failure = left(p_failure, 500),
         answered_at = now(),
         prompt_tokens = p_prompt_tokens,
         cached_prompt_tokens = p_cached_prompt_tokens,
         completion_tokens = p_completion_tokens,
         cost_usd = v_cost,
         request_id = p_request_id
   where a.id = p_answer_id;

  if p_prompt_tokens = 0 and p_completion_tokens = 0 then
    -- Nothing was billed (an error answer, a request that never left): every reservation for this
    -- answer is released now, as settle_gpt_usage releases one that used no tokens.
    with released as (
      update public.gpt_usage_log l
         set status = 'released', released_at = now(), release_reason = 'no_tokens_used',
             prompt_tokens = 0, cached_prompt_tokens = 0, completion_tokens = 0, cost_usd = 0,
             request_id = p_request_id
       where l.id = any(array(select r.id from public.gpt_usage_log r
                               where r.oracle_answer_id = p_answer_id and r.status = 'reserved'
                               order by r.id
                                 for update))
      returning l.id, l.user_id, l.reserved_usd, l.created_at
    ), audited as (
      insert into public.execution_audit_log (user_id, event, detail)
      select r.user_id, 'gpt_budget.reservation_released',
             pg_catalog.jsonb_build_object('reservation_id', r.id, 'reserved_usd', r.reserved_usd,
                                           'reserved_at', r.created_at, 'reason', 'no_tokens_used',
                                           'request_id', p_request_id,
                                           'oracle_answer_id', p_answer_id)
        from released r
      returning 1
    )
    select count(*) into v_released from audited;
    update private.oracle_answers a
       set settled_at = now(), shared_by = v_released::integer
     where a.id = p_answer_id;
  end if;
  return pg_catalog.jsonb_build_object('recorded', true, 'cost_usd', v_cost, 'released', v_released);
end;
$$;
revoke execute on function public.record_oracle_answer(uuid, text, text, jsonb, integer, integer, integer, text, text) from public, anon, authenticated;
grant execute on function public.record_oracle_answer(uuid, text, text, jsonb, integer, integer, integer, text, text) to service_role;

-- G7 for every user of a shared answer, set-based: reserve_gpt_budget's rule for each request of
-- p_requests — a JSON array of at most 1000 {"user_id", "scan_job_id"} with distinct users — for
-- the answer's whole call (its model, prompt bound and completion cap: one user alone would pay
-- all of it). The same rule, step by step: each user's per-user lock (private.lock_gpt_budget,
-- taken in user-id order, so two batches never wait on each other in opposite orders; a single
-- reserve_gpt_budget waits like any other holder), then — in one statement, whose snapshot sees
-- every reservation committed before the locks were granted — the spend (private.gpt_spends),
-- the worst case (private.gpt_worst_case_usd), the decision (private.gpt_budget_denial), the
-- granted rows and the audit rows (gpt_budget.reserved / gpt_budget.denied). A user granted after
-- the answer's bill was split pays nothing for it: the reservation is released at once
-- (`answer_already_settled`). A failed answer takes no reservation. Answers {"answer_status",
-- "results": [reserve_gpt_budget's answer + "user_id", "scan_job_id"], in input order}.
create or replace function public.reserve_gpt_budgets(
  p_oracle_answer_id uuid,
  p_requests jsonb
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_answer private.oracle_answers;
  v_problem text;
  v_user uuid;
  v_cost numeric;
  v_results jsonb;
begin
  if p_oracle_answer_id is null then
    raise exception 'p_oracle_answer_id is required' using errcode = '22023';
  end if;
  if p_requests is null or jsonb_typeof(p_requests) <> 'array' then
    raise exception 'p_requests must be a JSON array of {"user_id", "scan_job_id"}' using errcode = '22023';
  end if;
  if jsonb_array_length(p_requests) > 1000 then
    raise exception 'p_requests holds at most 1000 entries, got %', jsonb_array_length(p_requests)
      using errcode = '22023';
  end if;
  select format('p_requests[%s] %s', e.ord - 1, e.problem) into v_problem
    from (
      select t.ord, case
        when jsonb_typeof(t.e) <> 'object' then 'is not an object'
        when exists (select 1 from jsonb_object_keys(t.e) k where k not in ('user_id', 'scan_job_id'))
          then 'has a key other than "user_id", "scan_job_id"'
        when jsonb_typeof(t.e -> 'user_id') is distinct from 'string'
             or t.e ->> 'user_id' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
          then 'user_id is not a uuid'
        when jsonb_typeof(t.e -> 'scan_job_id') not in ('string', 'null')
             or t.e ->> 'scan_job_id' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
          then 'scan_job_id is not a uuid'
      end as problem
      from jsonb_array_elements(p_requests) with ordinality as t (e, ord)
    ) e
   where e.problem is not null
   order by e.ord
   limit 1;
  if v_problem is not null then
    raise exception '%', v_problem using errcode = '22023';
  end if;
  if (select count(*) <> count(distinct (t.e ->> 'user_id')::uuid)
        from jsonb_array_elements(p_requests) t (e)) then
    raise exception 'p_requests names a user more than once' using errcode = '22023';
  end if;
  -- Another user's job is a caller bug (reserve_gpt_budget's check); a job the user deleted while
  -- it was being scanned is not, and the reservation is then recorded without it.
  if exists (select 1 from jsonb_array_elements(p_requests) t (e)
               join public.scan_jobs j on j.id = (t.e ->> 'scan_job_id')::uuid
              where j.user_id <> (t.e ->> 'user_id')::uuid) then
    raise exception 'a scan_job_id of p_requests belongs to another user' using errcode = '22023';
  end if;
  perform private.require_read_committed('reserve_gpt_budgets');

  -- FOR SHARE: concurrent batches for one answer proceed together; settle_oracle_answers' FOR
  -- UPDATE waits for them, so a reservation is either split or sees the answer settled.
  select * into v_answer from private.oracle_answers a where a.id = p_oracle_answer_id for share;
  if not found or v_answer.oracle <> 'openai' then
    raise exception 'p_oracle_answer_id is not a model answer' using errcode = '22023';
  end if;
  if v_answer.status = 'failed' then
    return pg_catalog.jsonb_build_object('answer_status', 'failed', 'results', '[]'::jsonb);
  end if;

  for v_user in
    select (t.e ->> 'user_id')::uuid from jsonb_array_elements(p_requests) t (e) order by 1
  loop
    perform private.lock_gpt_budget(v_user);
  end loop;
  v_cost := private.gpt_worst_case_usd(v_answer.model, v_answer.max_prompt_tokens,
                                       v_answer.max_completion_tokens);

  with request as (
    select t.ord, (t.e ->> 'user_id')::uuid as user_id, j.id as scan_job_id
      from jsonb_array_elements(p_requests) with ordinality as t (e, ord)
      left join public.scan_jobs j on j.id = (t.e ->> 'scan_job_id')::uuid
  ), decided as (
    select r.*, s.user_id is not null as found, s.gpt_hourly_budget_usd as hourly,
           s.gpt_daily_budget_usd as daily, g.spent_hour_usd as hour, g.spent_day_usd as day,
           private.gpt_budget_denial(v_cost, g.spent_hour_usd, g.spent_day_usd,
                                     s.gpt_hourly_budget_usd, s.gpt_daily_budget_usd) as reason
      from request r
      left join public.trading_settings s on s.user_id = r.user_id
      left join private.gpt_spends(array(select q.user_id from request q)) g
             on g.user_id = r.user_id
  ), reserved as (
    insert into public.gpt_usage_log as l (user_id, scan_job_id, model, status, reserved_usd,
                                           max_prompt_tokens, max_completion_tokens,
                                           oracle_answer_id, released_at, release_reason,
                                           prompt_tokens, cached_prompt_tokens,
                                           completion_tokens, cost_usd)
    select d.user_id, d.scan_job_id, v_answer.model, s.status, v_cost,
           v_answer.max_prompt_tokens, v_answer.max_completion_tokens, p_oracle_answer_id,
           s.released_at, s.reason, s.zero, s.zero, s.zero, s.zero
      from decided d
     cross join (select case when v_answer.settled_at is null then 'reserved' else 'released' end
                          as status,
                        case when v_answer.settled_at is not null then now() end as released_at,
                        case when v_answer.settled_at is not null then 'answer_already_settled' end
                          as reason,
                        case when v_answer.settled_at is not null then 0 end as zero) s
     where d.found and d.reason is null
    returning l.id, l.user_id, l.status, l.created_at + private.gpt_reservation_lifetime() as expires_at
  ), audited as (
    insert into public.execution_audit_log (user_id, event, detail)
    select d.user_id, e.event, case e.event
      when 'gpt_budget.denied' then pg_catalog.jsonb_build_object(
        'reason', d.reason, 'model', v_answer.model, 'worst_case_usd', v_cost,
        'spent_hour_usd', d.hour, 'spent_day_usd', d.day, 'hourly_limit_usd', d.hourly,
        'daily_limit_usd', d.daily, 'scan_job_id', d.scan_job_id,
        'oracle_answer_id', p_oracle_answer_id)
      when 'gpt_budget.reserved' then pg_catalog.jsonb_build_object(
        'reservation_id', n.id, 'model', v_answer.model, 'reserved_usd', v_cost,
        'max_prompt_tokens', v_answer.max_prompt_tokens,
        'max_completion_tokens', v_answer.max_completion_tokens,
        'spent_hour_usd', d.hour + v_cost, 'spent_day_usd', d.day + v_cost,
        'hourly_limit_usd', d.hourly, 'daily_limit_usd', d.daily, 'scan_job_id', d.scan_job_id,
        'expires_at', n.expires_at, 'oracle_answer_id', p_oracle_answer_id)
      else pg_catalog.jsonb_build_object(
        'reservation_id', n.id, 'reserved_usd', v_cost, 'reason', 'answer_already_settled',
        'oracle_answer_id', p_oracle_answer_id) end
      from decided d
      left join reserved n on n.user_id = d.user_id
     cross join lateral (values ('gpt_budget.denied'), ('gpt_budget.reserved'),
                                ('gpt_budget.reservation_released')) e (event)
     where d.found
       and ((e.event = 'gpt_budget.denied' and d.reason is not null)
            or (e.event = 'gpt_budget.reserved' and n.id is not null)
            or (e.event = 'gpt_budget.reservation_released' and n.status = 'released'))
    returning 1
  )
  select pg_catalog.jsonb_agg(
           case
             when not d.found then pg_catalog.jsonb_build_object(
               'allowed', false, 'reservation_id', null, 'reserved_usd', null,
               'reason', 'not_found', 'spent_hour_usd', null, 'spent_day_usd', null,
               'hourly_limit_usd', null, 'daily_limit_usd', null)
             when d.reason is not null then pg_catalog.jsonb_build_object(
               'allowed', false, 'reservation_id', null, 'reserved_usd', 0,
               'worst_case_usd', v_cost, 'reason', d.reason, 'spent_hour_usd', d.hour,
               'spent_day_usd', d.day, 'hourly_limit_usd', d.hourly, 'daily_limit_usd', d.daily,
               'expires_at', null)
             else pg_catalog.jsonb_build_object(
               'allowed', true, 'reservation_id', n.id, 'reserved_usd', v_cost,
               'worst_case_usd', v_cost, 'reason', null, 'spent_hour_usd', d.hour + v_cost,
               'spent_day_usd', d.day + v_cost, 'hourly_limit_usd', d.hourly,
               'daily_limit_usd', d.daily, 'expires_at', n.expires_at)
           end || pg_catalog.jsonb_build_object('user_id', d.user_id, 'scan_job_id', d.scan_job_id)
           order by d.ord)
    into v_results
    from decided d
    left join reserved n on n.user_id = d.user_id;
  return pg_catalog.jsonb_build_object('answer_status', v_answer.status,
                                       'results', coalesce(v_results, '[]'::jsonb));
end;
$$;
revoke execute on function public.reserve_gpt_budgets(uuid, jsonb) from public, anon, authenticated;
grant execute on function public.reserve_gpt_budgets(uuid, jsonb) to service_role;

-- G7, the split: settles a recorded, unsettled bill over every reservation that used the answer
-- (reserved ones, and ones run_maintenance released as stale before the bill was known: a late
-- settlement, audited as such). With N reservations and the bill B = K units of u = 10^-s USD
-- (s = max(12, scale of B)), each gets floor(K / N) units and the first K mod N by id one more:
-- the shares sum to B exactly and none exceeds B (nor, therefore, a reservation of the call's
-- worst case, unless the bill itself overshot it — audited as for settle_gpt_usage). Each row
-- keeps the call's token counts and request id, and its share as cost_usd; shared_by says N.
-- Idempotent: a settled answer is answered as it was.
create or replace function private.settle_oracle_answer(p_answer_id uuid) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_answer private.oracle_answers;
  v_ids uuid[];
  v_n integer;
  v_scale integer;
  v_unit numeric;
  v_units numeric;
  v_base numeric;
  v_rest numeric;
begin
  select * into v_answer from private.oracle_answers a where a.id = p_answer_id for update;
  if not found then
    return pg_catalog.jsonb_build_object('answer_id', p_answer_id, 'status', 'not_found');
  end if;
  if v_answer.settled_at is not null then
    return pg_catalog.jsonb_build_object('answer_id', p_answer_id, 'status', 'settled',
                                         'replayed', true, 'cost_usd', v_answer.cost_usd,
                                         'shared_by', v_answer.shared_by);
  end if;
  if v_answer.cost_usd is null then
    return pg_catalog.jsonb_build_object('answer_id', p_answer_id, 'status', 'no_bill');
  end if;

  v_ids := array(select l.id from public.gpt_usage_log l
                  where l.oracle_answer_id = p_answer_id
                    and (l.status = 'reserved' or (l.status = 'released' and l.prompt_tokens is null))
                  order by l.id
                    for update);
  v_n := cardinality(v_ids);
  v_scale := greatest(pg_catalog.scale(v_answer.cost_usd), 12);
  v_unit := ('1e-' || v_scale)::numeric;
  v_units := v_answer.cost_usd * (10::numeric ^ v_scale);
  if v_n > 0 then
    v_base := div(v_units, v_n::numeric);
    v_rest := mod(v_units, v_n::numeric);
  end if;

  with shares as (
    select t.id, t.ord, (v_base + case when t.ord <= v_rest then 1 else 0 end) * v_unit as share
      from unnest(v_ids) with ordinality as t (id, ord)
  ), before as (
    select l.id, l.status, l.released_at, l.release_reason from public.gpt_usage_log l
     where l.id = any(v_ids)
  ), settled as (
    update public.gpt_usage_log l
       set status = 'settled', settled_at = now(), cost_usd = s.share,
           prompt_tokens = v_answer.prompt_tokens,
           cached_prompt_tokens = v_answer.cached_prompt_tokens,
           completion_tokens = v_answer.completion_tokens,
           request_id = v_answer.request_id, shared_by = v_n
      from shares s
     where l.id = s.id
    returning l.id, l.user_id, l.model, l.reserved_usd, l.cost_usd, l.created_at,
              l.max_prompt_tokens, l.max_completion_tokens
  ), events as (
    select s.*, b.status = 'released' as late, b.released_at, b.release_reason, e.event
      from settled s join before b on b.id = s.id
     cross join lateral (values ('gpt_budget.settled'), ('gpt_budget.overshoot'),
                                ('gpt_budget.late_settlement')) e (event)
     where e.event = 'gpt_budget.settled'
        or (e.event = 'gpt_budget.overshoot' and s.cost_usd > s.reserved_usd)
        or (e.event = 'gpt_budget.late_settlement' and b.status = 'released')
  )
  insert into public.execution_audit_log (user_id, event, detail)
  select v.user_id, v.event, pg_catalog.jsonb_build_object(
           'reservation_id', v.id, 'model', v.model, 'reserved_usd', v.reserved_usd,
           'cost_usd', v.cost_usd, 'overshoot_usd', greatest(v.cost_usd - v.reserved_usd, 0),
           'call_cost_usd', v_answer.cost_usd, 'shared_by', v_n, 'oracle_answer_id', p_answer_id,
           'prompt_tokens', v_answer.prompt_tokens,
           'cached_prompt_tokens', v_answer.cached_prompt_tokens,
           'completion_tokens', v_answer.completion_tokens,
           'max_prompt_tokens', v.max_prompt_tokens, 'max_completion_tokens', v.max_completion_tokens,
           'request_id', v_answer.request_id, 'reserved_at', v.created_at, 'late', v.late)
         || case when v.late then pg_catalog.jsonb_build_object(
                    'released_at', v.released_at, 'release_reason', v.release_reason)
                 else '{}'::jsonb end
    from events v
   order by v.id, v.event;

  update private.oracle_answers a set settled_at = now(), shared_by = v_n where a.id = p_answer_id;
  return pg_catalog.jsonb_build_object('answer_id', p_answer_id, 'status', 'settled',
                                       'replayed', false, 'cost_usd', v_answer.cost_usd,
                                       'shared_by', v_n);
end;
$$;
revoke all on function private.settle_oracle_answer(uuid) from public, anon, authenticated;

-- G7: splits the recorded bills of the answers in p_answer_ids (a JSON array of at most 1000 ids)
-- among their reservations (the rule: private.settle_oracle_answer), in id order. The tick that
-- made the calls settles them when it ends, so every batch of the tick shares the bill;
-- run_maintenance settles any a dead tick left. Answers {"results": [{"answer_id", "status",
-- "cost_usd", "shared_by", "replayed"}]}.
create or replace function public.settle_oracle_answers(p_answer_ids jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_id uuid;
  v_results jsonb := '[]'::jsonb;
begin
  perform private.require_read_committed('settle_oracle_answers');
  for v_id in select x.id from unnest(private.uuid_array(p_answer_ids, 'p_answer_ids', 1000)) x (id)
              order by x.id
  loop
    v_results := v_results || pg_catalog.jsonb_build_array(private.settle_oracle_answer(v_id));
  end loop;
  return pg_catalog.jsonb_build_object('results', v_results);
end;
$$;
revoke execute on function public.settle_oracle_answers(jsonb) from public, anon, authenticated;
grant execute on function public.settle_oracle_answers(jsonb) to service_role;
