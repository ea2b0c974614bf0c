/*
 * Scanning: what scan_scheduler needs from the database besides the scheduler (claim, heartbeat,
 * release) and budget (reserve, settle) RPCs. A scan job's run is
 *
 *   claim_due_scan_jobs → get_scan_context → market data → oracle → create_scan_proposal
 *     → (auto-approved) POST trading_execute, Idempotency-Key auto:<proposal_id> → release_job_locks
 *
 *   private.scan_period_proposals  the proposal a job made in its current due period (one row per job)
 *   get_scan_context               before the oracle: does this worker still hold the lease, how big
 *                                  may the user's next order be, and did this period already propose
 *   create_scan_proposal           create_trade_proposal for a job, only by the job's lease holder
 *                                  (G2 fence) and at most once per due period (G1 for auto-execute)
 *
 * A due period runs from the job's last success (or its creation) to its next success:
 * `coalesce(last_success_at, created_at)` names it. A run that dies half-way (SIGKILL, lost lease,
 * failed release, failed execute request) leaves last_success_at alone, so every later run of the
 * job until one succeeds is in the same period and finds the proposal already made: it hands the
 * same proposal (same Idempotency-Key) to trading_execute again instead of proposing anew. With
 * trade_executions' unique (proposal_id) and unique (user_id, idempotency_key), a repeated tick can
 * therefore never execute twice.
 *
 * The fence: a worker whose lease was taken over (it stalled past lock_expires_at and another worker
 * claimed the job) must not write results. create_scan_proposal checks `locked_by = p_worker_id`
 * under the job's row lock, the same rule heartbeat_scan_job and release_job_locks apply, so a late
 * writer is answered `lease_lost` and writes nothing. (A lease that expired but that nobody took over
 * is still the worker's: nobody else can hold the job meanwhile.)
 *
 * Both RPCs are service-only.
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

-- What a scan job needs to know before it spends anything (market data calls, GPT budget):
--   lease_held       this worker still holds the job's lease (G2)
--   proposal         the proposal this due period already made ({proposal_id, status, decided_by}),
--                    or null: a job that finds one hands it on instead of asking the oracle again
--   sizing           the room for the user's next order, by the same figures claim_trade_execution's
--                    order_limits and daily_limits validators read (p_mode: paper | live):
--                    min_order_quote (the market's), max_order_quote (the smallest cap that is set:
--                    the user's, their allowlist row's, the market's, the system's) and its source,
--                    daily_remaining_quote and trades_left_today (today's UTC counting executions)
--   auto_execute, min_confidence, trading_enabled   the user's switches, for the log and the tick
-- An unknown job is {"found": false}. Reads only.
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
declare
  v_job public.scan_jobs;
  v_settings public.trading_settings;
  v_controls public.system_controls;
  v_market public.market_allowlist;
  v_user_market public.trading_allowlist;
  v_period timestamptz;
  v_proposal jsonb;
  v_max numeric;
  v_max_source text;
  v_count bigint;
  v_sum numeric;
begin
  if p_job_id is null then
    raise exception 'p_job_id is required' using errcode = '22023';
  end if;
  if p_worker_id is null or btrim(p_worker_id) = '' then
    raise exception 'p_worker_id must be a non-empty text' using errcode = '22023';
  end if;
  if p_mode is null or p_mode not in ('paper', 'live') then
    raise exception 'p_mode must be paper or live, got %', coalesce(p_mode, 'null') using errcode = '22023';
  end if;

  select * into v_job from public.scan_jobs j where j.id = p_job_id;
  if not found then
    return pg_catalog.jsonb_build_object('found', false, 'job_id', p_job_id);
  end if;
  v_period := coalesce(v_job.last_success_at, v_job.created_at);

  select pg_catalog.jsonb_build_object('proposal_id', p.id, 'status', p.status,
                                       'decided_by', p.decided_by, 'side', p.side,
                                       'amount_quote', p.amount_quote, 'expires_at', p.expires_at)
    into v_proposal
    from private.scan_period_proposals sp
    join public.trade_proposals p on p.id = sp.proposal_id
   where sp.scan_job_id = p_job_id and sp.period_start = v_period;

  select * into v_settings from public.trading_settings s where s.user_id = v_job.user_id;
  select * into v_controls from public.system_controls c limit 1;
  select * into v_market from public.market_allowlist m where m.market = v_job.market;
  select * into v_user_market
    from public.trading_allowlist a where a.user_id = v_job.user_id and a.market = v_job.market;

  -- The order_limits validator's cap and its source, and the daily_limits validator's figures:
  -- the same helpers claim_trade_execution calls (the execution migration's "order room").
  select c.max_order_quote, c.max_order_source into v_max, v_max_source
    from private.order_cap(v_job.market, v_settings.max_order_quote, v_user_market.max_order_quote,
                           v_market.max_order_quote, v_controls.max_order_quote) c;
  select d.trades, d.quote_sum into v_count, v_sum
    from private.daily_executions(v_job.user_id, p_mode, now()) d;

  return pg_catalog.jsonb_build_object(
    'found', true,
    'job_id', v_job.id,
    'user_id', v_job.user_id,
    'market', v_job.market,
    'lease_held', v_job.locked_by is not distinct from p_worker_id,
    'period_start', v_period,
    'proposal', v_proposal,
    'auto_execute', coalesce(v_settings.auto_execute, false),
    'min_confidence', v_settings.min_confidence,
    'trading_enabled', coalesce(v_settings.trading_enabled, false)
                       and coalesce(not v_controls.trading_halted, false),
    'sizing', pg_catalog.jsonb_build_object(
      'mode', p_mode,
      'min_order_quote', v_market.min_order_quote,
      'max_order_quote', v_max,
      'max_order_source', v_max_source,
      'daily_remaining_quote', greatest(coalesce(v_settings.max_daily_quote, 0) - v_sum, 0),
      'trades_left_today', greatest(coalesce(v_settings.max_trades_per_day, 0) - v_count, 0)));
end;
$$;
revoke execute on function public.get_scan_context(uuid, text, text) from public, anon, authenticated;
grant execute on function public.get_scan_context(uuid, text, text) to service_role;

-- G2 fence + G1 for auto-execute: writes a scan job's proposal through create_trade_proposal (which
-- validates the arguments and decides auto-approval) only while p_worker_id holds the job's lease,
-- and at most once per due period. Answers
--   {"outcome": "created",  "proposal_id", "status", "decided_by", "period_start"}
--   {"outcome": "replayed", "proposal_id", "status", "decided_by", "period_start"}  this period's
--                                                     proposal, as it is now; nothing written
--   {"outcome": "lease_lost"}    the job is not leased to p_worker_id; nothing written
--   {"outcome": "not_found"}     no such job
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
declare
  v_job public.scan_jobs;
  v_period timestamptz;
  v_existing private.scan_period_proposals;
  v_proposal public.trade_proposals;
  v_created jsonb;
begin
  if p_job_id is null then
    raise exception 'p_job_id is required' using errcode = '22023';
  end if;
  if p_worker_id is null or btrim(p_worker_id) = '' then
    raise exception 'p_worker_id must be a non-empty text' using errcode = '22023';
  end if;

  -- The row lock holds the lease still until we commit: a takeover (claim), a release or a cleanup
  -- of this job waits for us, and we see the lease as it is once no one else can change it.
  select * into v_job from public.scan_jobs j where j.id = p_job_id for update;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'not_found', 'job_id', p_job_id);
  end if;
  if v_job.locked_by is distinct from p_worker_id then
    return pg_catalog.jsonb_build_object('outcome', 'lease_lost', 'job_id', p_job_id);
  end if;
  v_period := coalesce(v_job.last_success_at, v_job.created_at);

  select * into v_existing from private.scan_period_proposals sp where sp.scan_job_id = p_job_id;
  if found and v_existing.period_start = v_period then
    select * into v_proposal from public.trade_proposals p where p.id = v_existing.proposal_id;
    return pg_catalog.jsonb_build_object('outcome', 'replayed', 'job_id', p_job_id,
      'proposal_id', v_proposal.id, 'status', v_proposal.status,
      'decided_by', v_proposal.decided_by, 'period_start', v_period);
  end if;

  v_created := public.create_trade_proposal(
    p_user_id => v_job.user_id, p_market => v_job.market, p_side => p_side,
    p_amount_quote => p_amount_quote, p_confidence => p_confidence, p_rationale => p_rationale,
    p_source => p_source, p_model => p_model, p_reference_price => p_reference_price,
    p_scan_job_id => p_job_id, p_ttl_seconds => p_ttl_seconds);

  insert into private.scan_period_proposals (scan_job_id, period_start, proposal_id)
  values (p_job_id, v_period, (v_created ->> 'proposal_id')::uuid)
  on conflict (scan_job_id) do update
    set period_start = excluded.period_start, proposal_id = excluded.proposal_id,
        created_at = now();

  select * into v_proposal from public.trade_proposals p where p.id = (v_created ->> 'proposal_id')::uuid;
  return pg_catalog.jsonb_build_object('outcome', 'created', 'job_id', p_job_id,
    'proposal_id', v_proposal.id, 'status', v_proposal.status,
    'decided_by', v_proposal.decided_by, 'period_start', v_period);
end;
$$;
revoke execute on function public.create_scan_proposal(uuid, text, text, numeric, numeric, text, text, text, numeric, integer) from public, anon, authenticated;
grant execute on function public.create_scan_proposal(uuid, text, text, numeric, numeric, text, text, text, numeric, integer) to service_role;
