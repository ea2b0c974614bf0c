/*
 * Execution: proposals, the atomic pre-flight claim, the order state machine and the ledger.
 *
 *   trade_proposals            what the oracle suggests; users decide through decide_trade_proposal
 *   trade_executions           at most one per proposal (G1); one exchange order and its state machine
 *   trade_history              the ledger: one row per (partially) filled execution
 *   create_trade_proposal      service-only; auto-approves per the user's settings
 *   decide_trade_proposal      authenticated; approve or reject an own pending proposal
 *   claim_trade_execution      service-only; the seven validators and the claim in one transaction
 *                              (G1 idempotency, G4 allowlist, G5 cooldown, G6 anti-flip); for the
 *                              service caller, auto-approved proposals only (SPEC §4); within the
 *                              trade key's order budget when given one
 *   record_execution_result    service-only; the state machine, the ledger write, the proposal outcome
 *   list_unsettled_executions  service-only; the reconciler's work list (G10)
 *   private.exchange_discrepancies   what the exchange did that the executions did not say: an order
 *                              with no execution, or one whose execution says otherwise (G9, G10)
 *   list_sweep_markets         service-only; the markets and the window the reconciler's sweep reads
 *   record_exchange_orders     service-only; the sweep: every order of the account matched to its
 *                              execution by clientOrderId, each discrepancy recorded and audited
 *   acknowledge_exchange_discrepancy  service-only; the operator closes a discrepancy they handled
 *   lease_auto_approved_proposals  service-only; the scanner's auto-execute queue, oldest first,
 *                              leased briefly to one dispatcher at a time
 *   release_auto_execution_leases  service-only; a dispatcher gives back what it did not send
 *   private.order_budget_seconds, private.take_order_budget
 *                              the trade key's order budget, shared by every trading_execute instance
 *   private.oracle_answers     one oracle answer per market snapshot (the scanning migration's
 *                              functions write it; proposals and GPT reservations name it)
 *   private.uuid_v7            the time-ordered ids of these tables, so they grow cheaply
 *   private.order_cap,         the order room: the smallest order cap and its source, today's
 *   private.daily_executions   (UTC) counting executions — read by the claim's order_limits and
 *                              daily_limits validators and by get_scan_context (the scanner's sizing)
 *
 * G1 in one sentence: every claim of one user queues on one advisory lock taken before anything is
 * read, so the idempotency lookups and the validators see every earlier claim of that user, and the
 * unique constraints on trade_executions (proposal_id; user_id + idempotency_key; client_order_id)
 * are the backstop if anything ever bypasses the lock.
 *
 * The order state machine (private.execution_transition_allowed, enforced by the RPC and again by a
 * trigger on the table):
 *
 *   claimed   → submitted | unknown | filled | partially_filled | canceled | rejected | failed
 *   submitted → unknown | filled | partially_filled | canceled | rejected | failed
 *   unknown   → submitted | filled | partially_filled | canceled | rejected | failed
 *   filled, partially_filled, canceled, rejected, failed: final, never change — with one exception:
 *   failed | rejected | canceled without a fill → submitted | filled | partially_filled | canceled,
 *     once, by record_exchange_orders only, when the exchange has the order (corrected_at set)
 *
 * `unknown` means "the last exchange call's outcome is not known" (timeout, 5xx, 101/107/109, crash);
 * it may follow `submitted` (a status poll timed out) and may become `submitted` again (the
 * reconciler found the order open by clientOrderId). Neither re-sends anything (G10). `failed` means
 * certainly not placed. Repeating a final result is a no-op (`unchanged`); repeating an open status
 * records the facts it adds (exchange order id, a growing fill, error details). Anything else on a
 * final execution is the outcome `illegal_transition`, never an exception.
 *
 * `failed` is a belief, however careful: the reconciler records it only after GET /order by
 * clientOrderId, the market's orders and fills (GET /orders, GET /trades) around the send time all
 * came back empty and the request's access window plus a margin has long passed (shared/execution/
 * reconcile.py). If the exchange executes the order all the same, the sweep finds it, records what
 * happened against the execution (the one exception above; the ledger gets the fill once, the
 * proposal follows) and records the contradiction in private.exchange_discrepancies, which `oracle
 * verify` fails on until an operator acknowledges it. An order with no execution at all is recorded
 * there too; no ledger row is invented for it (it belongs to no user).
 *
 * A fill is never erased: once a report carried filled_amount > 0, money moved. A later `failed` or
 * `rejected`, or a smaller filled_amount, contradicts that fact and is refused (`illegal_transition`,
 * reason `fill_recorded` / `fill_decreased`); the execution stays open with its fill — counted by
 * the validators (G5, G6, daily limits), listed by list_unsettled_executions — until the reconciler
 * records the exchange's own final answer. The table carries the same rule as a constraint
 * (trade_executions_no_fill_unless_placed) and a trigger (a recorded fill never shrinks).
 *
 * The proposal follows its execution: approved → executing (claim) → executed (any fill, including a
 * cancel after a partial fill) | failed (rejected, failed, or canceled without a fill).
 *
 * Supabase grants ALL on new tables and functions in `public` to anon/authenticated by default;
 * every table here revokes that first. No role has write grants on these tables: every write goes
 * through the SECURITY DEFINER functions below.
 */

set lock_timeout = '5s';  -- a queued DDL lock fails the push instead of blocking writes

-- =============================================================================================
-- Section - ids
-- =============================================================================================
-- Proposals, executions and ledger rows only ever accumulate. Their ids are time-ordered UUIDs
-- (version 7, RFC 9562: 48 bits of Unix milliseconds, then 74 random bits), so a new row's id —
-- and every id index entry pointing at it (primary keys, the foreign keys' unique indexes, the
-- audit log's proposal and execution indexes) — lands at the right-hand end of its index, where
-- the pages are already in memory, instead of on a random page of an index that outgrew the
-- cache long ago; lookups of the rows a request just made stay there too. The random bits keep
-- ids unguessable (access is decided by RLS and the RPCs anyway). client_order_id is not one of
-- them: it is what the exchange sees and stays a random (version 4) UUID.
-- (Measured by bench/claim_path.py at 1,000,000 earlier executions with 128 MB of shared
-- buffers: about 13 → 5 buffer reads per execution.)
create or replace function private.uuid_v7() returns uuid
language plpgsql
volatile
set search_path = ''
as $$
begin
  -- A random (version 4) UUID with its first 48 bits replaced by the time and its version nibble
  -- turned from 4 (0100) into 7 (0111); the variant bits stay those of the random one.
  return pg_catalog.encode(
    pg_catalog.set_bit(pg_catalog.set_bit(
      overlay(pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
              placing substring(pg_catalog.int8send(
                (extract(epoch from pg_catalog.clock_timestamp()) * 1000)::bigint) from 3)
              from 1 for 6),
      52, 1), 53, 1),
    'hex')::uuid;
end;
$$;
revoke all on function private.uuid_v7() from public, anon, authenticated;

-- =============================================================================================
-- Section - private.oracle_answers
-- =============================================================================================
-- One row per oracle answer (the scanning migration's claim_oracle_answer, record_oracle_answer and
-- settle_oracle_answers write it; it lives here because each scanner proposal, and each GPT
-- reservation of the gpt_budget migration, names the answer it came from). The key is everything the answer depends on: the market and candle
-- interval, a SHA-256 digest of exactly what the oracle sees (the prompt's messages and response
-- schema, or the rules' candles and parameters), the oracle and model, the prompt and schema
-- versions, the completion cap. Life: `pending` (claimed_by is making the call, until
-- claimed_until) → `answered` (the answer; its bill once known) | `failed` (no answer). The bill
-- (tokens and cost) is null while unknown (a call that timed out may or may not be billed);
-- settled_at is set once it was split among the reservations (shared_by of them).
create table private.oracle_answers (
  id uuid primary key default private.uuid_v7(),
  market text not null check (market ~ '^[A-Z0-9]{1,15}-[A-Z]{2,6}$'),
  candle_interval text not null check (candle_interval ~ '^[0-9]{1,2}[mhdWM]$'),
  input_digest text not null check (input_digest ~ '^[0-9a-f]{64}$'),
  oracle text not null check (oracle in ('rules', 'openai')),
  model text not null default '' check (length(model) <= 100),
  prompt_version text not null check (length(prompt_version) between 1 and 50),
  schema_version text not null check (length(schema_version) between 1 and 50),
  max_prompt_tokens integer not null default 0 check (max_prompt_tokens between 0 and 10000000),
  max_completion_tokens integer not null default 0 check (max_completion_tokens between 0 and 10000000),
  status text not null check (status in ('pending', 'answered', 'failed')),
  claimed_by text check (claimed_by is null or length(claimed_by) between 1 and 200),
  claimed_until timestamptz,
  answer jsonb check (answer is null or jsonb_typeof(answer) = 'object'),
  failure text check (failure is null or length(failure) <= 500),
  prompt_tokens integer check (prompt_tokens >= 0),
  cached_prompt_tokens integer check (cached_prompt_tokens >= 0),
  completion_tokens integer check (completion_tokens >= 0),
  cost_usd numeric check (cost_usd >= 0 and cost_usd < 'Infinity'),
  request_id text check (request_id is null or length(request_id) <= 200),
  shared_by integer check (shared_by >= 0),
  created_at timestamptz not null default now(),
  answered_at timestamptz,
  settled_at timestamptz,
  constraint oracle_answers_bill_complete check (
    num_nulls(prompt_tokens, cached_prompt_tokens, completion_tokens, cost_usd) in (0, 4)),
  constraint oracle_answers_cached_within_prompt check (cached_prompt_tokens <= prompt_tokens),
  constraint oracle_answers_pending_claimed check (
    status <> 'pending' or (claimed_by is not null and claimed_until is not null)),
  constraint oracle_answers_answered_complete check (
    status <> 'answered' or (answer is not null and answered_at is not null)),
  constraint oracle_answers_settled_billed check (
    settled_at is null or (prompt_tokens is not null and shared_by is not null))
);
-- The key: one live answer per snapshot, whatever the number of instances asking; a failed attempt
-- leaves the key free for the next.
create unique index oracle_answers_key_idx on private.oracle_answers
  (market, candle_interval, input_digest, oracle, model, prompt_version, schema_version,
   max_completion_tokens)
  where status <> 'failed';
-- run_maintenance: bills recorded but never split (the tick that made the call died before).
create index oracle_answers_unsettled_idx on private.oracle_answers (answered_at)
  where settled_at is null and prompt_tokens is not null;

alter table private.oracle_answers enable row level security;

-- Written and read only by the SECURITY DEFINER functions below; no API role touches it.
revoke all on private.oracle_answers from public, anon, authenticated, service_role;

-- =============================================================================================
-- Section - trade_proposals
-- =============================================================================================
create table public.trade_proposals (
  id uuid primary key default private.uuid_v7(),
  user_id uuid not null references auth.users (id) on delete cascade,
  scan_job_id uuid references public.scan_jobs (id) on delete set null,
  market text not null,
  side text not null,
  amount_quote numeric not null,
  reference_price numeric,
  confidence numeric not null,
  rationale text not null default '',
  source text not null,
  model text,
  status text not null default 'pending',
  expires_at timestamptz not null,
  decided_at timestamptz,
  decided_by text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- A scanner's proposal names the oracle answer it came from.
  oracle_answer_id uuid references private.oracle_answers (id),
  constraint trade_proposals_market_format check (market ~ '^[A-Z0-9]{1,15}-[A-Z]{2,6}$'),
  constraint trade_proposals_side check (side in ('buy', 'sell')),
  -- `< 'Infinity'` also excludes NaN, which sorts above every number in PostgreSQL.
  constraint trade_proposals_amount_positive check (amount_quote > 0 and amount_quote < 'Infinity'),
  constraint trade_proposals_reference_price_positive
    check (reference_price is null or (reference_price > 0 and reference_price < 'Infinity')),
  constraint trade_proposals_confidence_range check (confidence between 0 and 1),
  constraint trade_proposals_rationale_length check (length(rationale) <= 10000),
  constraint trade_proposals_source check (source in ('rules', 'openai', 'manual')),
  constraint trade_proposals_model_length check (model is null or length(model) between 1 and 100),
  constraint trade_proposals_status check (
    status in ('pending', 'approved', 'rejected', 'executing', 'executed', 'failed', 'expired')
  ),
  constraint trade_proposals_decided_by check (decided_by in ('user', 'auto')),
  -- A decision has an author and a time, or neither.
  constraint trade_proposals_decision_complete check ((decided_by is null) = (decided_at is null)),
  -- The target of trade_executions' (proposal_id, user_id) foreign key: an execution belongs to the
  -- proposal's owner, by construction.
  constraint trade_proposals_id_user_key unique (id, user_id)
);

-- Users' own list, newest first.
create index trade_proposals_user_created_idx on public.trade_proposals (user_id, created_at desc);
-- run_maintenance expires stale pending/approved proposals.
create index trade_proposals_open_expiry_idx
  on public.trade_proposals (expires_at) where status in ('pending', 'approved');
-- The scan_jobs foreign key's ON DELETE SET NULL.
create index trade_proposals_scan_job_idx
  on public.trade_proposals (scan_job_id) where scan_job_id is not null;
-- The oracle_answers foreign key.
create index trade_proposals_oracle_answer_idx on public.trade_proposals (oracle_answer_id)
  where oracle_answer_id is not null;
-- An unchanged signal does not stack: a user has at most one open (pending or approved) scan
-- proposal per (market, side). create_trade_proposal and create_scan_proposals answer the open one
-- instead of a second (ON CONFLICT DO NOTHING); it also serves get_scan_contexts' open sides.
create unique index trade_proposals_one_open_scan_proposal_idx
  on public.trade_proposals (user_id, market, side)
  where scan_job_id is not null and status in ('pending', 'approved');
-- lease_auto_approved_proposals: the auto-execute queue, oldest first.
create index trade_proposals_auto_approved_idx
  on public.trade_proposals (created_at, id) where status = 'approved' and decided_by = 'auto';

alter table public.trade_proposals enable row level security;

-- Users read their own proposals and change them only through decide_trade_proposal.
revoke all on public.trade_proposals from public, anon, authenticated, service_role;
grant select on public.trade_proposals to authenticated;
grant select on public.trade_proposals to service_role;

-- The proposal's life: pending → approved | rejected | expired; approved → executing | expired;
-- executing → executed | failed. What was proposed (user, market, side, amount, confidence, source,
-- creation time) never changes.
create or replace function private.guard_trade_proposal_update() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if (new.id, new.user_id, new.market, new.side, new.amount_quote, new.confidence, new.source,
      new.created_at)
     is distinct from
     (old.id, old.user_id, old.market, old.side, old.amount_quote, old.confidence, old.source,
      old.created_at) then
    raise exception 'trade_proposals: what was proposed never changes (proposal %)', old.id
      using errcode = '42501';
  end if;
  if new.status is distinct from old.status and not (
       (old.status = 'pending' and new.status in ('approved', 'rejected', 'expired'))
    or (old.status = 'approved' and new.status in ('executing', 'expired'))
    or (old.status = 'executing' and new.status in ('executed', 'failed'))
    -- The exchange placed the order of an execution recorded as never placed (record_exchange_orders).
    or (old.status = 'failed' and new.status in ('executing', 'executed')
        and exists (select from public.trade_executions e
                     where e.proposal_id = old.id and e.corrected_at is not null))
  ) then
    raise exception 'trade_proposals: % → % is not allowed (proposal %)', old.status, new.status, old.id
      using errcode = '42501';
  end if;
  return new;
end;
$$;
revoke all on function private.guard_trade_proposal_update() from public, anon, authenticated;

create trigger trade_proposals_guard before update on public.trade_proposals
  for each row execute function private.guard_trade_proposal_update();
create trigger trade_proposals_touch before update on public.trade_proposals
  for each row execute function private.touch_updated_at();

create policy "users can read their own trade proposals"
  on public.trade_proposals for select to authenticated
  using (user_id = (select auth.uid()));

-- =============================================================================================
-- Section - trade_executions (G1: at most one per proposal)
-- =============================================================================================
create table public.trade_executions (
  id uuid primary key default private.uuid_v7(),
  proposal_id uuid not null,
  user_id uuid not null references auth.users (id) on delete restrict,
  idempotency_key text not null,
  client_order_id uuid not null default extensions.gen_random_uuid(),
  mode text not null,
  market text not null,
  side text not null,
  amount_quote numeric not null,
  status text not null default 'claimed',
  exchange_order_id text,
  filled_amount numeric,
  filled_amount_quote numeric,
  price numeric,
  fee_paid numeric,
  fee_currency text,
  error_code text,
  error_message text,
  claimed_at timestamptz not null default now(),
  submitted_at timestamptz,
  completed_at timestamptz,
  updated_at timestamptz not null default now(),
  -- When record_exchange_orders recorded what the exchange did against a final result that said
  -- no order was ever filled (failed, rejected, canceled without a fill); null otherwise.
  corrected_at timestamptz,
  -- What cooldown, anti-flip and daily limits count (G5, G6): every execution that may have moved
  -- money — in flight, filled, or canceled after a partial fill. One definition, used by the
  -- validators and by the partial indexes below.
  counts_toward_limits boolean generated always as (
    status not in ('rejected', 'failed') and not (status = 'canceled' and coalesce(filled_amount, 0) = 0)
  ) stored,
  -- G1: one execution per proposal, one proposal per (user, Idempotency-Key), one order id each.
  -- The proposal key carries user_id as an INCLUDE column, so the one unique index also covers the
  -- (proposal_id, user_id) foreign key below (the check when a proposal is deleted).
  constraint trade_executions_proposal_key unique (proposal_id) include (user_id),
  constraint trade_executions_user_idempotency_key unique (user_id, idempotency_key),
  constraint trade_executions_client_order_key unique (client_order_id),
  -- The target of trade_history's (execution_id, user_id) foreign key.
  constraint trade_executions_id_user_key unique (id, user_id),
  -- The execution belongs to the proposal's owner; financial records are never cascaded away.
  constraint trade_executions_proposal_fkey foreign key (proposal_id, user_id)
    references public.trade_proposals (id, user_id) on delete restrict,
  -- An HTTP Idempotency-Key: 1..255 printable ASCII characters, no leading or trailing space.
  constraint trade_executions_idempotency_key_format check (
    length(idempotency_key) between 1 and 255
    and idempotency_key ~ '^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$'
  ),
  constraint trade_executions_mode check (mode in ('paper', 'live')),
  constraint trade_executions_market_format check (market ~ '^[A-Z0-9]{1,15}-[A-Z]{2,6}$'),
  constraint trade_executions_side check (side in ('buy', 'sell')),
  constraint trade_executions_amount_positive check (amount_quote > 0 and amount_quote < 'Infinity'),
  constraint trade_executions_status check (
    status in ('claimed', 'submitted', 'filled', 'partially_filled', 'canceled', 'rejected', 'failed',
               'unknown')
  ),
  constraint trade_executions_fill_figures check (
    (filled_amount is null or (filled_amount >= 0 and filled_amount < 'Infinity'))
    and (filled_amount_quote is null or (filled_amount_quote >= 0 and filled_amount_quote < 'Infinity'))
    and (price is null or (price > 0 and price < 'Infinity'))
    and (fee_paid is null or (fee_paid >= 0 and fee_paid < 'Infinity'))
  ),
  constraint trade_executions_text_lengths check (
    (exchange_order_id is null or length(exchange_order_id) between 1 and 128)
    and (fee_currency is null or length(fee_currency) between 1 and 16)
    and (error_code is null or length(error_code) between 1 and 64)
    and (error_message is null or length(error_message) <= 2000)
  ),
  -- A final execution has a completion time.
  constraint trade_executions_completed_when_final check (
    completed_at is not null or status in ('claimed', 'submitted', 'unknown')
  ),
  -- `failed` is certainly not placed and `rejected` never reached the book: neither has a fill.
  -- record_execution_result refuses the report that would make it so; this is the backstop.
  constraint trade_executions_no_fill_unless_placed check (
    status not in ('rejected', 'failed') or coalesce(filled_amount, 0) = 0
  ),
  -- A correction records the exchange's order: never `failed`/`rejected` again.
  constraint trade_executions_corrected_placed check (
    corrected_at is null or status not in ('rejected', 'failed')
  )
);

-- G5 cooldown and G6 anti-flip: the newest counting execution of (user, market, mode) inside the
-- window — a backward index scan that stops at the first row (side is in the index for anti-flip).
create index trade_executions_recent_idx
  on public.trade_executions (user_id, market, mode, claimed_at desc) include (side)
  where counts_toward_limits;
-- Daily limits: count and sum of today's counting executions of (user, mode), from the index alone.
create index trade_executions_daily_idx
  on public.trade_executions (user_id, mode, claimed_at) include (amount_quote)
  where counts_toward_limits;
-- list_unsettled_executions: the reconciler's open orders, oldest first.
create index trade_executions_unsettled_idx
  on public.trade_executions (claimed_at) where status in ('claimed', 'submitted', 'unknown');
-- No separate (user_id, claimed_at) index: a user's own list is small and found through the
-- (user_id, idempotency_key) unique index; another user_id-leading index would compete with the two
-- partial indexes above for the validator lookups.

alter table public.trade_executions enable row level security;

revoke all on public.trade_executions from public, anon, authenticated, service_role;
grant select on public.trade_executions to authenticated;
grant select on public.trade_executions to service_role;

-- The final execution statuses, defined once: an execution that reached one never changes again
-- (but for the one correction below), and every other status is still open. The state machine,
-- the table's guard and record_execution_result all ask it.
create or replace function private.execution_status_is_final(p_status text) returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
  return p_status in ('filled', 'partially_filled', 'canceled', 'rejected', 'failed');
end;
$$;
revoke all on function private.execution_status_is_final(text) from public, anon, authenticated;

-- The order state machine in one place; record_execution_result and the trigger below both ask it.
-- PL/pgSQL like every helper on the claim and result paths (see "execution helpers" below).
create or replace function private.execution_transition_allowed(p_from text, p_to text) returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
  return case p_from
    when 'claimed' then p_to in ('submitted', 'unknown') or private.execution_status_is_final(p_to)
    when 'submitted' then p_to = 'unknown' or private.execution_status_is_final(p_to)
    when 'unknown' then p_to = 'submitted' or private.execution_status_is_final(p_to)
    else false
  end;
end;
$$;
revoke all on function private.execution_transition_allowed(text, text) from public, anon, authenticated;

-- The one way out of a final state: a result that said no order ever filled (failed, rejected,
-- canceled without a fill) becomes what the exchange's order shows (record_exchange_orders).
create or replace function private.execution_correction_allowed(p_from text, p_from_filled numeric,
                                                                p_to text) returns boolean
language plpgsql
immutable
set search_path = ''
as $$
begin
  return (p_from in ('failed', 'rejected') or (p_from = 'canceled' and coalesce(p_from_filled, 0) = 0))
     and p_to in ('submitted', 'filled', 'partially_filled', 'canceled');
end;
$$;
revoke all on function private.execution_correction_allowed(text, numeric, text) from public, anon, authenticated;

-- Backstop for the state machine, whoever writes: identity columns never change, status moves only
-- along private.execution_transition_allowed, a final execution's result never changes, a recorded
-- fill never shrinks and a known exchange order id never changes.
create or replace function private.guard_trade_execution_update() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_correction boolean := old.corrected_at is null and new.corrected_at is not null
    and private.execution_correction_allowed(old.status, old.filled_amount, new.status);
begin
  if (new.id, new.proposal_id, new.user_id, new.idempotency_key, new.client_order_id, new.mode,
      new.market, new.side, new.amount_quote)
     is distinct from
     (old.id, old.proposal_id, old.user_id, old.idempotency_key, old.client_order_id, old.mode,
      old.market, old.side, old.amount_quote) then
    raise exception 'trade_executions: what was claimed never changes (execution %)', old.id
      using errcode = '42501';
  end if;
  if old.corrected_at is not null and new.corrected_at is distinct from old.corrected_at
     or old.corrected_at is null and new.corrected_at is not null and not v_correction then
    raise exception 'trade_executions: % → % is not a correction the exchange''s order allows (execution %)',
      old.status, new.status, old.id using errcode = '42501';
  end if;
  if private.execution_status_is_final(old.status) and not v_correction
     and (new.status, new.exchange_order_id, new.filled_amount, new.filled_amount_quote, new.price,
          new.fee_paid, new.fee_currency, new.error_code, new.error_message, new.completed_at)
         is distinct from
         (old.status, old.exchange_order_id, old.filled_amount, old.filled_amount_quote, old.price,
          old.fee_paid, old.fee_currency, old.error_code, old.error_message, old.completed_at) then
    raise exception 'trade_executions: a % execution is final (execution %)', old.status, old.id
      using errcode = '42501';
  end if;
  if new.status <> old.status and not v_correction
     and not private.execution_transition_allowed(old.status, new.status) then
    raise exception 'trade_executions: % → % is not allowed (execution %)', old.status, new.status, old.id
      using errcode = '42501';
  end if;
  -- Money that moved stays on the books, and an execution is one exchange order.
  if old.filled_amount is not null and coalesce(new.filled_amount < old.filled_amount, true) then
    raise exception 'trade_executions: a recorded fill is never reduced or erased (execution %)', old.id
      using errcode = '42501';
  end if;
  if old.exchange_order_id is not null and new.exchange_order_id is distinct from old.exchange_order_id then
    raise exception 'trade_executions: the exchange order id never changes once known (execution %)', old.id
      using errcode = '42501';
  end if;
  return new;
end;
$$;
revoke all on function private.guard_trade_execution_update() from public, anon, authenticated;

create trigger trade_executions_guard before update on public.trade_executions
  for each row execute function private.guard_trade_execution_update();
create trigger trade_executions_touch before update on public.trade_executions
  for each row execute function private.touch_updated_at();

create policy "users can read their own trade executions"
  on public.trade_executions for select to authenticated
  using (user_id = (select auth.uid()));

-- =============================================================================================
-- Section - trade_history (the ledger: one row per (partially) filled execution)
-- =============================================================================================
create table public.trade_history (
  id uuid primary key default private.uuid_v7(),
  execution_id uuid not null,
  proposal_id uuid not null,
  user_id uuid not null references auth.users (id) on delete restrict,
  market text not null,
  side text not null,
  amount numeric not null,
  amount_quote numeric not null,
  price numeric not null,
  fee_paid numeric not null default 0,
  fee_currency text,
  mode text not null,
  executed_at timestamptz not null default now(),
  created_at timestamptz not null default now(),
  -- Exactly one ledger row per execution, however often the fill is reported; user_id is included so
  -- the same index covers the (execution_id, user_id) foreign key below.
  constraint trade_history_execution_key unique (execution_id) include (user_id),
  constraint trade_history_execution_fkey foreign key (execution_id, user_id)
    references public.trade_executions (id, user_id) on delete restrict,
  constraint trade_history_market_format check (market ~ '^[A-Z0-9]{1,15}-[A-Z]{2,6}$'),
  constraint trade_history_side check (side in ('buy', 'sell')),
  constraint trade_history_mode check (mode in ('paper', 'live')),
  constraint trade_history_figures check (
    amount > 0 and amount < 'Infinity'
    and amount_quote > 0 and amount_quote < 'Infinity'
    and price > 0 and price < 'Infinity'
    and fee_paid >= 0 and fee_paid < 'Infinity'
  ),
  constraint trade_history_fee_currency_length check (fee_currency is null or length(fee_currency) between 1 and 16)
);

-- Users' own ledger, newest first.
create index trade_history_user_executed_idx on public.trade_history (user_id, executed_at desc);

alter table public.trade_history enable row level security;

-- Written only by record_execution_result; nobody updates or deletes ledger rows through the API.
revoke all on public.trade_history from public, anon, authenticated, service_role;
grant select on public.trade_history to authenticated;
grant select on public.trade_history to service_role;

create policy "users can read their own trade history"
  on public.trade_history for select to authenticated
  using (user_id = (select auth.uid()));

-- =============================================================================================
-- Section - private.exchange_discrepancies (what the exchange did that no execution says)
-- =============================================================================================
-- One row per (exchange order, kind) that record_exchange_orders found:
--   orphan_order            an order on the account with no execution of that clientOrderId (or
--                           none at all): placed behind the backend's back, or by another system
--   execution_contradicted  the execution said no order ever filled (failed, rejected, canceled
--                           without a fill) and the exchange has it: recorded_status is what the
--                           execution says now (the correction)
--   figures_differ          a final execution whose recorded fill, or order id, is not the
--                           exchange's; the execution is left as it is (a fill is never erased)
-- `facts` is the order as the exchange reported it. Operator data: not exposed through the API
-- (schema private), read by `oracle status` / `oracle verify` as the database owner; it changes
-- only when acknowledged (acknowledge_exchange_discrepancy), and nothing deletes it.
create table private.exchange_discrepancies (
  id uuid primary key default private.uuid_v7(),
  kind text not null,
  market text not null,
  exchange_order_id text not null,
  client_order_id text,
  execution_id uuid references public.trade_executions (id) on delete restrict,
  side text,
  exchange_status text,
  execution_status text,
  recorded_status text,
  facts jsonb not null,
  detected_at timestamptz not null default now(),
  acknowledged_at timestamptz,
  acknowledged_note text,
  -- Seen again by every later sweep of its window: recorded (and audited) once.
  constraint exchange_discrepancies_order_kind_key unique (market, exchange_order_id, kind),
  constraint exchange_discrepancies_kind check (
    kind in ('orphan_order', 'execution_contradicted', 'figures_differ')
  ),
  constraint exchange_discrepancies_market_format check (market ~ '^[A-Z0-9]{1,15}-[A-Z]{2,6}$'),
  constraint exchange_discrepancies_side check (side is null or side in ('buy', 'sell')),
  constraint exchange_discrepancies_text_lengths check (
    length(exchange_order_id) between 1 and 128
    and (client_order_id is null or length(client_order_id) between 1 and 64)
    and (exchange_status is null or length(exchange_status) between 1 and 64)
    and (acknowledged_note is null or length(acknowledged_note) between 1 and 1000)
  ),
  -- An orphan has no execution; the other kinds are about one.
  constraint exchange_discrepancies_execution check ((kind = 'orphan_order') = (execution_id is null)),
  constraint exchange_discrepancies_acknowledged check ((acknowledged_at is null) = (acknowledged_note is null))
);
-- `oracle status` and `oracle verify`: the open ones, oldest first.
create index exchange_discrepancies_open_idx
  on private.exchange_discrepancies (detected_at) where acknowledged_at is null;
-- The trade_executions foreign key.
create index exchange_discrepancies_execution_idx
  on private.exchange_discrepancies (execution_id) where execution_id is not null;

alter table private.exchange_discrepancies enable row level security;

-- Written and read only by the SECURITY DEFINER functions below (and the owner); no API role.
revoke all on private.exchange_discrepancies from public, anon, authenticated, service_role;

-- Evidence: only the acknowledgement may be added, once; nothing is deleted.
create or replace function private.guard_exchange_discrepancy_change() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if tg_op = 'DELETE' then
    raise exception 'exchange_discrepancies: a discrepancy is never deleted (%)', old.id
      using errcode = '42501';
  end if;
  if old.acknowledged_at is not null
     or (pg_catalog.to_jsonb(new) - array['acknowledged_at', 'acknowledged_note'])
        is distinct from (pg_catalog.to_jsonb(old) - array['acknowledged_at', 'acknowledged_note']) then
    raise exception 'exchange_discrepancies: only an open discrepancy''s acknowledgement may be added (%)',
      old.id using errcode = '42501';
  end if;
  return new;
end;
$$;
revoke all on function private.guard_exchange_discrepancy_change() from public, anon, authenticated;

create trigger exchange_discrepancies_guard before update or delete on private.exchange_discrepancies
  for each row execute function private.guard_exchange_discrepancy_change();

-- =============================================================================================
-- Section - execution helpers (private)
-- =============================================================================================
-- Every helper is PL/pgSQL, also the one-expression ones. Each pins search_path (the advisor's
-- rule, tests/test_advisor.py), which keeps PostgreSQL from inlining a SQL-language function; a
-- SQL function that is not inlined is parsed and planned again in every transaction that calls
-- it, and every claim and every result is its own transaction. PL/pgSQL keeps its plans for the
-- connection's life. (Measured by bench/claim_path.py: eleven SQL-helper calls per execution
-- cost about a sixth of the server time of claim + record.)

-- An execution as the RPCs return it: the row as json, without the internal counting flag.
create or replace function private.execution_json(p_execution public.trade_executions) returns jsonb
language plpgsql
stable
set search_path = ''
as $$
begin
  return case when p_execution.id is null then null
              else pg_catalog.to_jsonb(p_execution) - 'counts_toward_limits' end;
end;
$$;
revoke all on function private.execution_json(public.trade_executions) from public, anon, authenticated;

-- claim_trade_execution's answer (SPEC §3), built in one place:
-- {"outcome", "execution" (the row, or null), "failed_checks", "reason"}.
create or replace function private.claim_answer(p_outcome text, p_execution public.trade_executions,
                                                p_failed_checks jsonb, p_reason text) returns jsonb
language plpgsql
stable
set search_path = ''
as $$
begin
  return pg_catalog.jsonb_build_object('outcome', p_outcome,
    'execution', private.execution_json(p_execution),
    'failed_checks', coalesce(p_failed_checks, '[]'::jsonb), 'reason', p_reason);
end;
$$;
revoke all on function private.claim_answer(text, public.trade_executions, jsonb, text)
  from public, anon, authenticated;

-- A timestamp for a human-readable reason: ISO 8601 in UTC, whatever the session's TimeZone.
create or replace function private.utc_text(p_at timestamptz) returns text
language plpgsql
stable
set search_path = ''
as $$
begin
  return pg_catalog.to_char(p_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
end;
$$;
revoke all on function private.utc_text(timestamptz) from public, anon, authenticated;

-- One validator's entry for failed_checks: [] when it passed, [{"check", "reason"}] when not.
create or replace function private.failed_check(p_check text, p_reasons text[]) returns jsonb
language plpgsql
immutable
set search_path = ''
as $$
begin
  return case when coalesce(pg_catalog.cardinality(p_reasons), 0) = 0 then '[]'::jsonb
              else pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                     'check', p_check, 'reason', pg_catalog.array_to_string(p_reasons, '; ')))
         end;
end;
$$;
revoke all on function private.failed_check(text, text[]) from public, anon, authenticated;

-- A non-negative decimal from an exchange result (a JSON number or a decimal string), or null when
-- absent; anything else is an invalid argument (22023), never a silently wrong figure.
create or replace function private.result_numeric(p_result jsonb, p_key text) returns numeric
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_value jsonb := p_result -> p_key;
begin
  if v_value is null or v_value = 'null'::jsonb then
    return null;
  end if;
  if pg_catalog.jsonb_typeof(v_value) = 'number' and length(v_value #>> '{}') <= 40 then
    if (v_value #>> '{}')::numeric < 0 then
      raise exception 'p_result.% must not be negative, got %', p_key, v_value using errcode = '22023';
    end if;
    return (v_value #>> '{}')::numeric;
  end if;
  if pg_catalog.jsonb_typeof(v_value) = 'string'
     and (v_value #>> '{}') ~ '^[0-9]{1,30}(\.[0-9]{1,30})?$' then
    return (v_value #>> '{}')::numeric;
  end if;
  raise exception 'p_result.% must be a non-negative decimal (number or string), got %', p_key, v_value
    using errcode = '22023';
end;
$$;
revoke all on function private.result_numeric(jsonb, text) from public, anon, authenticated;

-- A text field from an exchange result (string or number, e.g. Bitvavo's numeric errorCode), or
-- null; at most p_max characters (longer messages are cut, longer identifiers are invalid).
create or replace function private.result_text(p_result jsonb, p_key text, p_max integer,
                                               p_truncate boolean default false) returns text
language plpgsql
immutable
set search_path = ''
as $$
declare
  v_value jsonb := p_result -> p_key;
  v_text text;
begin
  if v_value is null or v_value = 'null'::jsonb then
    return null;
  end if;
  if pg_catalog.jsonb_typeof(v_value) not in ('string', 'number') then
    raise exception 'p_result.% must be a string, got %', p_key, v_value using errcode = '22023';
  end if;
  v_text := v_value #>> '{}';
  if v_text = '' then
    return null;
  end if;
  if length(v_text) > p_max then
    if p_truncate then
      return left(v_text, p_max);
    end if;
    raise exception 'p_result.% must be at most % characters', p_key, p_max using errcode = '22023';
  end if;
  return v_text;
end;
$$;
revoke all on function private.result_text(jsonb, text, integer, boolean) from public, anon, authenticated;

-- A timestamp from an exchange result (ISO 8601 string), or null.
create or replace function private.result_timestamp(p_result jsonb, p_key text) returns timestamptz
language plpgsql
stable
set search_path = ''
as $$
declare
  v_value jsonb := p_result -> p_key;
begin
  if v_value is null or v_value = 'null'::jsonb then
    return null;
  end if;
  if pg_catalog.jsonb_typeof(v_value) = 'string'
     and (v_value #>> '{}') ~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}' then
    begin
      return (v_value #>> '{}')::timestamptz;
    exception when others then
      null;  -- reported below
    end;
  end if;
  raise exception 'p_result.% must be an ISO 8601 timestamp, got %', p_key, v_value
    using errcode = '22023';
end;
$$;
revoke all on function private.result_timestamp(jsonb, text) from public, anon, authenticated;

-- =============================================================================================
-- Section - the order room (private): one definition for the claim and the scanner
-- =============================================================================================
-- What the order_limits and daily_limits validators of claim_trade_execution read, and what
-- get_scan_context (the scanner's sizing) reports from the same figures: defined once here, so
-- the scanner never sizes an order by other rules than the claim applies. PL/pgSQL like every
-- helper above (a SQL function with a pinned search_path is not inlined and would be planned again
-- in every transaction).

-- The largest order allowed: the smallest of the caps that are set (the user's max_order_quote,
-- their allowlist row's, the market's, the system-wide one) and, worded for a reason, which one it
-- is; both null when no cap is set.
create or replace function private.order_cap(
  p_market text,
  p_user_max numeric,
  p_user_market_max numeric,
  p_market_max numeric,
  p_system_max numeric,
  out max_order_quote numeric,
  out max_order_source text
)
language plpgsql
stable  -- format() is stable, not immutable
set search_path = ''
as $$
begin
  max_order_quote := least(p_user_max, p_user_market_max, p_market_max, p_system_max);
  max_order_source := case max_order_quote
    when p_user_max then 'your max_order_quote'
    when p_user_market_max then format('your allowlist limit for %s', p_market)
    when p_market_max then format('the market limit for %s', p_market)
    else 'the system-wide limit' end;
  if max_order_quote is null then
    max_order_source := null;
  end if;
end;
$$;
revoke all on function private.order_cap(text, numeric, numeric, numeric, numeric) from public, anon, authenticated;

-- The user's counting executions of one mode on the UTC day of p_at: how many and their
-- amount_quote sum (what daily_limits compares with max_trades_per_day and max_daily_quote).
-- Index: trade_executions_daily_idx (index-only).
create or replace function private.daily_executions(
  p_user_id uuid,
  p_mode text,
  p_at timestamptz,
  out trades bigint,
  out quote_sum numeric
)
language plpgsql
stable
set search_path = ''
as $$
declare
  v_day_start timestamptz := pg_catalog.date_trunc('day', p_at, 'UTC');
begin
  select count(*), coalesce(sum(e.amount_quote), 0) into trades, quote_sum
    from public.trade_executions e
   where e.user_id = p_user_id and e.mode = p_mode
     and e.counts_toward_limits
     and e.claimed_at >= v_day_start and e.claimed_at < v_day_start + interval '1 day';
end;
$$;
revoke all on function private.daily_executions(uuid, text, timestamptz) from public, anon, authenticated;

-- =============================================================================================
-- Section - proposal RPCs
-- =============================================================================================

-- Creates a proposal for a known user from valid arguments only (22023 otherwise); approved by
-- 'auto' exactly when the user has auto_execute and the confidence reaches min_confidence. A scan's
-- proposal (p_scan_job_id) while the user has an open one on that market and side is not created:
-- the open one is answered.
create or replace function public.create_trade_proposal(
  p_user_id uuid,
  p_market text,
  p_side text,
  p_amount_quote numeric,
  p_confidence numeric,
  p_rationale text,
  p_source text,
  p_model text default null,
  p_reference_price numeric default null,
  p_scan_job_id uuid default null,
  p_ttl_seconds integer default 900
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_settings public.trading_settings;
  v_auto boolean;
  v_proposal public.trade_proposals;
begin
  if p_user_id is null then
    raise exception 'p_user_id is required' using errcode = '22023';
  end if;
  if p_market is null or p_market !~ '^[A-Z0-9]{1,15}-[A-Z]{2,6}$' then
    raise exception 'p_market must look like BTC-EUR, got %', coalesce(p_market, 'null')
      using errcode = '22023';
  end if;
  if p_side is null or p_side not in ('buy', 'sell') then
    raise exception 'p_side must be buy or sell, got %', coalesce(p_side, 'null') using errcode = '22023';
  end if;
  if p_amount_quote is null or not (p_amount_quote > 0 and p_amount_quote < 'Infinity') then
    raise exception 'p_amount_quote must be a positive amount, got %', coalesce(p_amount_quote::text, 'null')
      using errcode = '22023';
  end if;
  if p_confidence is null or p_confidence not between 0 and 1 then
    raise exception 'p_confidence must be between 0 and 1, got %', coalesce(p_confidence::text, 'null')
      using errcode = '22023';
  end if;
  if p_source is null or p_source not in ('rules', 'openai', 'manual') then
    raise exception 'p_source must be rules, openai or manual, got %', coalesce(p_source, 'null')
      using errcode = '22023';
  end if;
  if p_ttl_seconds is null or p_ttl_seconds not between 1 and 86400 then
    raise exception 'p_ttl_seconds must be between 1 and 86400, got %', coalesce(p_ttl_seconds::text, 'null')
      using errcode = '22023';
  end if;
  if p_reference_price is not null and not (p_reference_price > 0 and p_reference_price < 'Infinity') then
    raise exception 'p_reference_price must be positive when given, got %', p_reference_price
      using errcode = '22023';
  end if;
  if length(coalesce(p_rationale, '')) > 10000 then
    raise exception 'p_rationale must be at most 10000 characters' using errcode = '22023';
  end if;
  if p_model is not null and length(p_model) not between 1 and 100 then
    raise exception 'p_model must be 1..100 characters when given' using errcode = '22023';
  end if;
  if not exists (select from auth.users u where u.id = p_user_id) then
    raise exception 'unknown user %', p_user_id using errcode = '22023';
  end if;
  if p_scan_job_id is not null and not exists (
       select from public.scan_jobs j where j.id = p_scan_job_id and j.user_id = p_user_id) then
    raise exception 'scan job % is not one of user %''s jobs', p_scan_job_id, p_user_id
      using errcode = '22023';
  end if;

  select * into v_settings from public.trading_settings s where s.user_id = p_user_id;
  v_auto := coalesce(v_settings.auto_execute, false) and p_confidence >= v_settings.min_confidence;

  insert into public.trade_proposals (user_id, scan_job_id, market, side, amount_quote, reference_price,
                                      confidence, rationale, source, model, status, expires_at,
                                      decided_at, decided_by)
  values (p_user_id, p_scan_job_id, p_market, p_side, p_amount_quote, p_reference_price,
          p_confidence, coalesce(p_rationale, ''), p_source, p_model,
          case when v_auto then 'approved' else 'pending' end,
          now() + make_interval(secs => p_ttl_seconds),
          case when v_auto then now() end,
          case when v_auto then 'auto' end)
  on conflict (user_id, market, side)
     where scan_job_id is not null and status in ('pending', 'approved')
     do nothing
  returning * into v_proposal;
  if not found then
    select * into v_proposal from public.trade_proposals p
     where p.user_id = p_user_id and p.market = p_market and p.side = p_side
       and p.scan_job_id is not null and p.status in ('pending', 'approved');
    return pg_catalog.jsonb_build_object('proposal_id', v_proposal.id, 'status', v_proposal.status);
  end if;

  perform private.audit('proposal.created', p_user_id, v_proposal.id, null, pg_catalog.jsonb_build_object(
    'market', v_proposal.market, 'side', v_proposal.side, 'amount_quote', v_proposal.amount_quote,
    'confidence', v_proposal.confidence, 'source', v_proposal.source, 'model', v_proposal.model,
    'scan_job_id', v_proposal.scan_job_id, 'status', v_proposal.status,
    'decided_by', v_proposal.decided_by, 'expires_at', v_proposal.expires_at,
    'min_confidence', v_settings.min_confidence, 'auto_execute', v_settings.auto_execute));

  return pg_catalog.jsonb_build_object('proposal_id', v_proposal.id, 'status', v_proposal.status);
end;
$$;
revoke execute on function public.create_trade_proposal(uuid, text, text, numeric, numeric, text, text, text, numeric, uuid, integer) from public, anon, authenticated;
grant execute on function public.create_trade_proposal(uuid, text, text, numeric, numeric, text, text, text, numeric, uuid, integer) to service_role;

-- The signed-in user approves or rejects one of their own pending, unexpired proposals; anyone
-- else's proposal is `not_found`, indistinguishable from a missing one (G8).
--
-- SECURITY DEFINER on purpose, the one definer function `authenticated` may execute (the advisor's
-- authenticated_security_definer_function_executable warning, explained in tests/test_advisor.py):
--   why definer: SPEC §3 lets users change a proposal's status only through this function, so
--     `authenticated` has no write grant on trade_proposals at all — as INVOKER it would need
--     UPDATE (status) plus a policy, which opens PATCH /trade_proposals as a second way to approve
--     that bypasses the expiry check and the audit; and it writes the append-only audit log (G9),
--     refused decisions included, which no user may write.
--   what stops misuse: it takes no user id — it acts on auth.uid() from the verified JWT only
--     (none → 42501), only on a row with user_id = auth.uid(), only pending → approved | rejected
--     before expires_at (pending → expired after); trade_proposals_guard backs the transitions;
--     arguments are validated (22023); search_path is '' and every name is qualified; EXECUTE is
--     revoked from public and anon.
create or replace function public.decide_trade_proposal(p_proposal_id uuid, p_decision text) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_user_id uuid := auth.uid();
  v_proposal public.trade_proposals;
begin
  if v_user_id is null then
    raise exception 'decide_trade_proposal needs a signed-in user' using errcode = '42501';
  end if;
  if p_proposal_id is null then
    raise exception 'p_proposal_id is required' using errcode = '22023';
  end if;
  if p_decision is null or p_decision not in ('approve', 'reject') then
    raise exception 'p_decision must be approve or reject, got %', coalesce(p_decision, 'null')
      using errcode = '22023';
  end if;

  -- The row lock orders this decision against a concurrent claim or expiry of the same proposal.
  select * into v_proposal
    from public.trade_proposals p
   where p.id = p_proposal_id and p.user_id = v_user_id
     for update;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'not_found', 'proposal_id', p_proposal_id);
  end if;

  if v_proposal.status <> 'pending' then
    perform private.audit('proposal.decision_refused', v_user_id, v_proposal.id, null,
      pg_catalog.jsonb_build_object('decision', p_decision, 'status', v_proposal.status));
    return pg_catalog.jsonb_build_object('outcome', 'invalid_state', 'proposal_id', v_proposal.id,
                                         'status', v_proposal.status);
  end if;

  if now() >= v_proposal.expires_at then
    -- What run_maintenance would do a moment later; the user sees the truth now.
    update public.trade_proposals p set status = 'expired' where p.id = v_proposal.id;
    perform private.audit('proposal.expired', v_user_id, v_proposal.id, null,
      pg_catalog.jsonb_build_object('decision', p_decision, 'expires_at', v_proposal.expires_at));
    return pg_catalog.jsonb_build_object('outcome', 'expired', 'proposal_id', v_proposal.id,
                                         'status', 'expired');
  end if;

  update public.trade_proposals p
     set status = case p_decision when 'approve' then 'approved' else 'rejected' end,
         decided_by = 'user',
         decided_at = now()
   where p.id = v_proposal.id
  returning * into v_proposal;

  perform private.audit('proposal.decided', v_user_id, v_proposal.id, null,
    pg_catalog.jsonb_build_object('decision', p_decision, 'status', v_proposal.status));
  return pg_catalog.jsonb_build_object('outcome', 'decided', 'proposal_id', v_proposal.id,
                                       'status', v_proposal.status);
end;
$$;
revoke execute on function public.decide_trade_proposal(uuid, text) from public, anon, authenticated;
grant execute on function public.decide_trade_proposal(uuid, text) to authenticated;

-- =============================================================================================
-- Section - the trade key's order budget (private)
-- =============================================================================================
-- Bitvavo gives the trade key 1,000 weight points a minute (POST /order weighs 1) and bans a key
-- that goes over until its window ends plus a minute (errorCode 105/110). Every trading_execute
-- instance signs with the same key, so what each process sees in the rate-limit headers is not
-- enough to share it: a burst of auto-approved proposals sent to several instances at once would
-- overrun it between two answers. The budget is kept here instead, for all instances: a claim that
-- passed its validators takes one slot (claim_trade_execution's p_order_budget) or, when none is
-- free, claims nothing and answers `rate_limited` with the seconds until one frees up.
--
-- The window slides: a slot taken at second s counts until s + p_window_seconds. trading_execute
-- passes the exchange's window (60 s) plus how long after its claim an order can still reach the
-- exchange (MAX_CLAIM_AGE + the access window) plus 2 s for the one-second buckets, so any span of
-- the exchange's window, wherever the exchange starts it and whatever its clock says, receives at
-- most p_budget orders. The budget is set below the key's limit (trading_execute's ORDER_BUDGET,
-- 800 by default) to leave /reconcile's reads (GET /order, /orders, /trades) their room.
--
-- One row per second in which slots were taken; rows that left every window are deleted by the
-- next take, so the table holds at most one window of rows.
create table private.order_budget_seconds (
  second timestamptz primary key,
  weight integer not null,
  constraint order_budget_seconds_weight_positive check (weight > 0)
);

alter table private.order_budget_seconds enable row level security;

-- Written and read only by private.take_order_budget; no API role touches it.
revoke all on private.order_budget_seconds from public, anon, authenticated, service_role;

-- Takes p_weight points of the trade key's budget when the last p_window_seconds seconds used at
-- most p_budget - p_weight of it, atomically for every caller (one transaction-scoped lock, held to
-- the caller's commit, so a claim that rolls back gives its slot back). Answers
-- {"granted", "used", "budget", "window_seconds", "retry_after_seconds"}: `used` counts this
-- take when granted; `retry_after_seconds` (refused only) is when enough weight leaves the window.
create or replace function private.take_order_budget(
  p_weight integer,
  p_budget integer,
  p_window_seconds integer
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_now timestamptz;
  v_second timestamptz;
  v_window interval;
  v_used bigint;
  v_frees_at timestamptz;
begin
  if p_budget is null or p_budget < 1 then
    raise exception 'the order budget must be a positive integer, got %', coalesce(p_budget::text, 'null')
      using errcode = '22023';
  end if;
  if p_weight is null or p_weight not between 1 and p_budget then
    raise exception 'the weight must be between 1 and the budget (%), got %', p_budget,
      coalesce(p_weight::text, 'null') using errcode = '22023';
  end if;
  if p_window_seconds is null or p_window_seconds not between 1 and 86400 then
    raise exception 'the order budget window must be 1..86400 seconds, got %',
      coalesce(p_window_seconds::text, 'null') using errcode = '22023';
  end if;
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('order_budget', 0));
  v_now := pg_catalog.clock_timestamp();
  v_second := pg_catalog.date_trunc('second', v_now);
  v_window := pg_catalog.make_interval(secs => p_window_seconds::double precision);

  delete from private.order_budget_seconds b where b.second <= v_second - v_window;
  select coalesce(sum(b.weight), 0) into v_used from private.order_budget_seconds b;

  if v_used + p_weight <= p_budget then
    insert into private.order_budget_seconds as b (second, weight) values (v_second, p_weight)
    on conflict (second) do update set weight = b.weight + excluded.weight;
    return pg_catalog.jsonb_build_object('granted', true, 'used', v_used + p_weight,
      'budget', p_budget, 'window_seconds', p_window_seconds, 'retry_after_seconds', null);
  end if;

  -- The oldest seconds leave the window first: enough weight has left once the seconds up to the
  -- first whose running total covers the excess have.
  select t.second + v_window into v_frees_at
    from (select b.second, sum(b.weight) over (order by b.second) as running
            from private.order_budget_seconds b) t
   where t.running >= v_used + p_weight - p_budget
   order by t.second
   limit 1;
  return pg_catalog.jsonb_build_object('granted', false, 'used', v_used, 'budget', p_budget,
    'window_seconds', p_window_seconds,
    'retry_after_seconds', greatest(1, ceil(extract(epoch from v_frees_at - v_now))::integer));
end;
$$;
revoke all on function private.take_order_budget(integer, integer, integer) from public, anon, authenticated;

-- =============================================================================================
-- Section - execution RPCs (service-only)
-- =============================================================================================

-- G1, G4, G5, G6: in one transaction serialised per user, replays a known Idempotency-Key, refuses a
-- second execution of a proposal, runs all seven validators and reports every failure, and claims
-- the execution (status `claimed`, fresh client_order_id) only when all of them pass.
--
-- p_require_auto_approval: the caller is the service, not the proposal's user (SPEC §4: "a
-- service-role bearer may execute any user's auto-approved proposal" — the scanner's
-- auto-execute). The proposal_state validator then also requires decided_by = 'auto': a proposal
-- its user approved by hand is executed only by that user, and the check is made here, under the
-- proposal's row lock, so a decision racing the claim cannot slip between check and claim.
-- trading_execute passes true for a service-role bearer and false for a user's token.
--
-- p_order_budget / p_order_budget_window_seconds: the trade key's order budget shared by every
-- trading_execute instance (private.take_order_budget). Taken last, once all seven validators
-- passed, so a replay, a conflict or a rejection never spends a slot (a user cannot drain the budget
-- with requests that place nothing). No slot free → outcome `rate_limited` with
-- `retry_after_seconds`: nothing claimed, the proposal stays approved, and the same
-- Idempotency-Key may be sent again. Null (the default): no budget is applied.
create or replace function public.claim_trade_execution(
  p_user_id uuid,
  p_proposal_id uuid,
  p_idempotency_key text,
  p_mode text,
  p_require_auto_approval boolean default false,
  p_order_budget integer default null,
  p_order_budget_window_seconds integer default null
) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_now timestamptz;
  v_existing public.trade_executions;
  v_execution public.trade_executions;
  v_proposal public.trade_proposals;
  v_settings public.trading_settings;
  v_controls public.system_controls;
  v_market public.market_allowlist;
  v_user_market public.trading_allowlist;
  v_failed jsonb := '[]'::jsonb;
  v_reasons text[];
  v_max numeric;
  v_max_source text;
  v_last timestamptz;
  v_count bigint;
  v_sum numeric;
  v_opposite text;
  v_detail jsonb;
  v_slot jsonb;
begin
  if p_user_id is null then
    raise exception 'p_user_id is required' using errcode = '22023';
  end if;
  if p_proposal_id is null then
    raise exception 'p_proposal_id is required' using errcode = '22023';
  end if;
  if p_idempotency_key is null or length(p_idempotency_key) not between 1 and 255
     or p_idempotency_key !~ '^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$' then
    raise exception 'p_idempotency_key must be 1..255 printable ASCII characters without leading or trailing spaces'
      using errcode = '22023';
  end if;
  if p_mode is null or p_mode not in ('paper', 'live') then
    raise exception 'p_mode must be paper or live, got %', coalesce(p_mode, 'null') using errcode = '22023';
  end if;
  if p_require_auto_approval is null then
    raise exception 'p_require_auto_approval must be true or false, got null' using errcode = '22023';
  end if;
  if p_order_budget is not null and p_order_budget < 1 then
    raise exception 'p_order_budget must be a positive integer or null, got %', p_order_budget
      using errcode = '22023';
  end if;
  if p_order_budget is not null and (p_order_budget_window_seconds is null
                                     or p_order_budget_window_seconds not between 1 and 86400) then
    raise exception 'p_order_budget_window_seconds must be 1..86400 with p_order_budget, got %',
      coalesce(p_order_budget_window_seconds::text, 'null') using errcode = '22023';
  end if;
  -- Every statement below must see claims committed while we waited for the lock; a transaction
  -- snapshot (REPEATABLE READ / SERIALIZABLE) would hide them.
  perform private.require_read_committed('claim_trade_execution');

  -- G1/G5/G6: all claims of one user queue here, before anything is read. Each later statement
  -- takes a fresh snapshot, so it sees every claim committed before this lock was granted.
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('claim:' || p_user_id::text, 0));
  v_now := pg_catalog.clock_timestamp();
  v_detail := pg_catalog.jsonb_build_object('idempotency_key', p_idempotency_key, 'mode', p_mode,
                                            'require_auto_approval', p_require_auto_approval);

  -- G1: this (user, Idempotency-Key) has been used before.
  select * into v_existing
    from public.trade_executions e
   where e.user_id = p_user_id and e.idempotency_key = p_idempotency_key;
  if found then
    if v_existing.proposal_id = p_proposal_id then
      perform private.audit('claim.replayed', p_user_id, p_proposal_id, v_existing.id, v_detail);
      return private.claim_answer('replayed', v_existing, '[]', null);
    end if;
    perform private.audit('claim.conflict', p_user_id, p_proposal_id, v_existing.id,
      v_detail || pg_catalog.jsonb_build_object('reason', 'idempotency_key_reused',
                                                'key_proposal_id', v_existing.proposal_id));
    return private.claim_answer('conflict', null, '[]', 'idempotency_key_reused');
  end if;

  -- G1: the proposal already has an execution under another key (only the user's own are seen).
  select * into v_existing
    from public.trade_executions e
   where e.proposal_id = p_proposal_id and e.user_id = p_user_id;
  if found then
    perform private.audit('claim.conflict', p_user_id, p_proposal_id, v_existing.id,
      v_detail || pg_catalog.jsonb_build_object('reason', 'already_executed'));
    return private.claim_answer('conflict', v_existing, '[]', 'already_executed');
  end if;

  -- G8: a missing proposal and another user's proposal look the same. The row lock orders this
  -- claim against a concurrent decision or expiry of the proposal.
  select * into v_proposal
    from public.trade_proposals p
   where p.id = p_proposal_id and p.user_id = p_user_id
     for update;
  if not found then
    perform private.audit('claim.not_found', p_user_id, p_proposal_id, null, v_detail);
    return private.claim_answer('not_found', null, '[]', 'proposal_not_found');
  end if;

  select * into v_settings from public.trading_settings s where s.user_id = p_user_id;
  select * into v_controls from public.system_controls c limit 1;
  select * into v_market from public.market_allowlist m where m.market = v_proposal.market;
  select * into v_user_market
    from public.trading_allowlist a
   where a.user_id = p_user_id and a.market = v_proposal.market;

  -- 1. allowlist (G4): enabled in the global market_allowlist and in the user's trading_allowlist.
  v_reasons := '{}';
  if v_market.market is null then
    v_reasons := v_reasons || format('market %s is not in the global market allowlist', v_proposal.market);
  elsif not v_market.enabled then
    v_reasons := v_reasons || format('market %s is disabled in the global market allowlist', v_proposal.market);
  end if;
  if v_user_market.market is null then
    v_reasons := v_reasons || format('market %s is not in your trading allowlist', v_proposal.market);
  elsif not v_user_market.enabled then
    v_reasons := v_reasons || format('market %s is disabled in your trading allowlist', v_proposal.market);
  end if;
  v_failed := v_failed || private.failed_check('allowlist', v_reasons);

  -- 2. proposal_state: approved and not expired; for the service, approved by 'auto' (SPEC §4).
  v_reasons := '{}';
  if v_proposal.status <> 'approved' then
    v_reasons := v_reasons || format('proposal is %s, not approved', v_proposal.status);
  end if;
  if v_now >= v_proposal.expires_at then
    v_reasons := v_reasons || format('proposal expired at %s', private.utc_text(v_proposal.expires_at));
  end if;
  if p_require_auto_approval and v_proposal.decided_by is distinct from 'auto' then
    v_reasons := v_reasons || format('proposal was %s, not auto-approved; the service executes auto-approved proposals only',
      case when v_proposal.decided_by = 'user' then 'decided by its user' else 'not decided' end);
  end if;
  v_failed := v_failed || private.failed_check('proposal_state', v_reasons);

  -- 3. order_limits: at least the market minimum, at most the smallest cap that is set.
  v_reasons := '{}';
  select c.max_order_quote, c.max_order_source into v_max, v_max_source
    from private.order_cap(v_proposal.market, v_settings.max_order_quote,
                           v_user_market.max_order_quote, v_market.max_order_quote,
                           v_controls.max_order_quote) c;
  if v_market.market is null then
    v_reasons := v_reasons || format('market %s has no order limits (not in the global allowlist)', v_proposal.market);
  elsif v_proposal.amount_quote < v_market.min_order_quote then
    v_reasons := v_reasons || format('amount %s EUR is below the minimum order of %s EUR for %s',
                                     v_proposal.amount_quote, v_market.min_order_quote, v_proposal.market);
  end if;
  if v_max is null then
    v_reasons := v_reasons || 'no maximum order size is configured'::text;
  elsif v_proposal.amount_quote > v_max then
    v_reasons := v_reasons || format('amount %s EUR is above the maximum order of %s EUR (%s)',
                                     v_proposal.amount_quote, v_max, v_max_source);
  end if;
  v_failed := v_failed || private.failed_check('order_limits', v_reasons);

  -- 4. cooldown (G5): no counting execution of this (user, market, mode) inside cooldown_seconds.
  --    Index: trade_executions_recent_idx.
  v_reasons := '{}';
  if v_settings.cooldown_seconds > 0 then
    select max(e.claimed_at) into v_last
      from public.trade_executions e
     where e.user_id = p_user_id and e.market = v_proposal.market and e.mode = p_mode
       and e.counts_toward_limits
       and e.claimed_at > v_now - make_interval(secs => v_settings.cooldown_seconds);
    if v_last is not null then
      v_reasons := v_reasons || format('a %s order on %s was claimed at %s; the cooldown of %s s ends at %s',
        p_mode, v_proposal.market, private.utc_text(v_last), v_settings.cooldown_seconds,
        private.utc_text(v_last + make_interval(secs => v_settings.cooldown_seconds)));
    end if;
  end if;
  v_failed := v_failed || private.failed_check('cooldown', v_reasons);

  -- 5. anti_flip (G6): no counting execution on the opposite side inside anti_flip_seconds.
  --    Index: trade_executions_recent_idx (side from the index).
  v_reasons := '{}';
  v_opposite := case v_proposal.side when 'buy' then 'sell' else 'buy' end;
  if v_settings.anti_flip_seconds > 0 then
    select max(e.claimed_at) into v_last
      from public.trade_executions e
     where e.user_id = p_user_id and e.market = v_proposal.market and e.mode = p_mode
       and e.counts_toward_limits
       and e.side = v_opposite
       and e.claimed_at > v_now - make_interval(secs => v_settings.anti_flip_seconds);
    if v_last is not null then
      v_reasons := v_reasons || format('a %s %s order on %s was claimed at %s; %s is not allowed before %s',
        p_mode, v_opposite, v_proposal.market, private.utc_text(v_last), v_proposal.side,
        private.utc_text(v_last + make_interval(secs => v_settings.anti_flip_seconds)));
    end if;
  end if;
  v_failed := v_failed || private.failed_check('anti_flip', v_reasons);

  -- 6. daily_limits: today's (UTC) counting executions of this mode, by number and by amount.
  v_reasons := '{}';
  select d.trades, d.quote_sum into v_count, v_sum
    from private.daily_executions(p_user_id, p_mode, v_now) d;
  if v_settings.user_id is null then
    v_reasons := v_reasons || 'no trading settings for this user'::text;
  else
    if v_count >= v_settings.max_trades_per_day then
      v_reasons := v_reasons || format('%s %s orders today (UTC) already; the limit is %s per day',
                                       v_count, p_mode, v_settings.max_trades_per_day);
    end if;
    if v_sum + v_proposal.amount_quote > v_settings.max_daily_quote then
      v_reasons := v_reasons || format('today''s %s orders total %s EUR; with %s EUR more that is above the daily limit of %s EUR',
                                       p_mode, v_sum, v_proposal.amount_quote, v_settings.max_daily_quote);
    end if;
  end if;
  v_failed := v_failed || private.failed_check('daily_limits', v_reasons);

  -- 7. trading_enabled: not halted, the user trades, and for live money both live switches are on.
  v_reasons := '{}';
  if v_controls.trading_halted is distinct from false then
    v_reasons := v_reasons || 'trading is halted system-wide'::text;
  end if;
  if v_settings.trading_enabled is distinct from true then
    v_reasons := v_reasons || 'trading is disabled in your settings'::text;
  end if;
  if p_mode = 'live' then
    if v_controls.live_trading_allowed is distinct from true then
      v_reasons := v_reasons || 'live trading is not allowed system-wide'::text;
    end if;
    if v_settings.live_trading_enabled is distinct from true then
      v_reasons := v_reasons || 'live trading is not enabled for your account'::text;
    end if;
  end if;
  v_failed := v_failed || private.failed_check('trading_enabled', v_reasons);

  if pg_catalog.jsonb_array_length(v_failed) > 0 then
    perform private.audit('claim.rejected', p_user_id, p_proposal_id, null,
      v_detail || pg_catalog.jsonb_build_object('failed_checks', v_failed,
        'market', v_proposal.market, 'side', v_proposal.side, 'amount_quote', v_proposal.amount_quote));
    return private.claim_answer('rejected', null, v_failed, 'validation_failed');
  end if;

  -- The trade key's order budget, last: only a claim that will send an order takes a slot.
  if p_order_budget is not null then
    v_slot := private.take_order_budget(1, p_order_budget, p_order_budget_window_seconds);
    if not (v_slot ->> 'granted')::boolean then
      perform private.audit('claim.rate_limited', p_user_id, p_proposal_id, null,
        v_detail || pg_catalog.jsonb_build_object('order_budget', v_slot,
          'market', v_proposal.market, 'side', v_proposal.side, 'amount_quote', v_proposal.amount_quote));
      return private.claim_answer('rate_limited', null, '[]', 'order_budget_exhausted')
        || pg_catalog.jsonb_build_object('retry_after_seconds', v_slot -> 'retry_after_seconds');
    end if;
  end if;

  insert into public.trade_executions (proposal_id, user_id, idempotency_key, client_order_id, mode,
                                       market, side, amount_quote, status, claimed_at)
  values (v_proposal.id, p_user_id, p_idempotency_key, extensions.gen_random_uuid(), p_mode,
          v_proposal.market, v_proposal.side, v_proposal.amount_quote, 'claimed', v_now)
  returning * into v_execution;

  update public.trade_proposals p set status = 'executing' where p.id = v_proposal.id;

  perform private.audit('claim.claimed', p_user_id, p_proposal_id, v_execution.id,
    v_detail || pg_catalog.jsonb_build_object(
      'checks', pg_catalog.jsonb_build_array('allowlist', 'proposal_state', 'order_limits', 'cooldown',
                                             'anti_flip', 'daily_limits', 'trading_enabled'),
      'failed_checks', '[]'::jsonb, 'client_order_id', v_execution.client_order_id,
      'market', v_execution.market, 'side', v_execution.side, 'amount_quote', v_execution.amount_quote,
      'order_budget', v_slot));
  return private.claim_answer('claimed', v_execution, '[]', null);
end;
$$;
revoke execute on function public.claim_trade_execution(uuid, uuid, text, text, boolean, integer, integer) from public, anon, authenticated;
grant execute on function public.claim_trade_execution(uuid, uuid, text, text, boolean, integer, integer) to service_role;

-- Moves an execution along the state machine only; a fill, once reported, is never erased or
-- reduced; a repeated open status adds the facts it brings; contradictions are the outcome
-- `illegal_transition` with a `reason`. A fill writes exactly one trade_history row and marks the
-- proposal executed, rejected/failed (or canceled without a fill) mark it failed; every answer is
-- audited.
--
-- Outcomes: `updated` (a transition, or new facts for the same open status), `unchanged` (nothing
-- new), `not_found`, and `illegal_transition` with `reason`:
--   execution_final             the execution is final; nothing about it changes any more
--   fill_recorded               `failed`/`rejected` after a fill was reported: money moved, so the
--                               report is wrong; the execution stays open (counted by the
--                               validators, listed for the reconciler), which settles it from the
--                               exchange's own answer
--   fill_decreased              filled_amount below the one recorded (a stale report)
--   exchange_order_id_mismatch  another exchange order id than the one recorded
-- Reported times (submitted_at, completed_at) must lie between one minute before the claim and one
-- minute after now (exchange and database clocks may differ a little); 22023 otherwise.
create or replace function public.record_execution_result(p_execution_id uuid, p_result jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  c_keys constant text[] := array['status', 'exchange_order_id', 'filled_amount', 'filled_amount_quote',
                                  'price', 'fee_paid', 'fee_currency', 'error_code', 'error_message',
                                  'submitted_at', 'completed_at'];
  c_clock_skew constant interval := interval '1 minute';
  v_unknown_keys text[];
  v_status text;
  v_filled numeric;
  v_filled_quote numeric;
  v_price numeric;
  v_fee numeric;
  v_exchange_order_id text;
  v_fee_currency text;
  v_error_code text;
  v_error_message text;
  v_submitted_at timestamptz;
  v_completed_at timestamptz;
  v_old public.trade_executions;
  v_new public.trade_executions;
  v_final boolean;
  v_fill boolean;
  v_history boolean := false;
  v_proposal_status text;
  v_refusal text;
  v_changed text[];
  v_clock timestamptz := pg_catalog.clock_timestamp();
begin
  if p_execution_id is null then
    raise exception 'p_execution_id is required' using errcode = '22023';
  end if;
  if p_result is null or pg_catalog.jsonb_typeof(p_result) <> 'object' then
    raise exception 'p_result must be a JSON object' using errcode = '22023';
  end if;
  select array_agg(k order by k) into v_unknown_keys
    from pg_catalog.jsonb_object_keys(p_result) k
   where k <> all (c_keys);
  if v_unknown_keys is not null then
    raise exception 'p_result has unknown keys: %', array_to_string(v_unknown_keys, ', ')
      using errcode = '22023', hint = 'allowed: ' || array_to_string(c_keys, ', ');
  end if;
  v_status := p_result ->> 'status';
  if pg_catalog.jsonb_typeof(p_result -> 'status') is distinct from 'string'
     or not (v_status in ('submitted', 'unknown') or private.execution_status_is_final(v_status)) then
    raise exception 'p_result.status must be one of submitted, filled, partially_filled, canceled, rejected, failed, unknown; got %',
      coalesce(p_result -> 'status', 'null'::jsonb) using errcode = '22023';
  end if;
  v_filled := private.result_numeric(p_result, 'filled_amount');
  v_filled_quote := private.result_numeric(p_result, 'filled_amount_quote');
  v_price := nullif(private.result_numeric(p_result, 'price'), 0);
  v_fee := private.result_numeric(p_result, 'fee_paid');
  v_exchange_order_id := private.result_text(p_result, 'exchange_order_id', 128);
  v_fee_currency := private.result_text(p_result, 'fee_currency', 16);
  v_error_code := private.result_text(p_result, 'error_code', 64);
  v_error_message := private.result_text(p_result, 'error_message', 2000, true);
  v_submitted_at := private.result_timestamp(p_result, 'submitted_at');
  v_completed_at := private.result_timestamp(p_result, 'completed_at');
  if v_status in ('rejected', 'failed') and v_filled > 0 then
    raise exception 'p_result: a % order cannot have filled_amount %', v_status, v_filled
      using errcode = '22023';
  end if;

  -- Concurrent reports of the same execution queue here; the second sees the first's result.
  select * into v_old from public.trade_executions e where e.id = p_execution_id for update;
  if not found then
    perform private.audit('execution.result_not_found', null, null, p_execution_id,
      pg_catalog.jsonb_build_object('result', p_result));
    return pg_catalog.jsonb_build_object('outcome', 'not_found', 'execution', null);
  end if;

  -- The order was sent after the claim and its times are in the past: anything else is garbage
  -- (e.g. a year-44 BC date psycopg cannot even read back), up to a little clock difference.
  if v_submitted_at not between v_old.claimed_at - c_clock_skew and v_clock + c_clock_skew then
    raise exception 'p_result.submitted_at % is not between the claim (%) and now', v_submitted_at,
      v_old.claimed_at using errcode = '22023';
  end if;
  if v_completed_at not between v_old.claimed_at - c_clock_skew and v_clock + c_clock_skew then
    raise exception 'p_result.completed_at % is not between the claim (%) and now', v_completed_at,
      v_old.claimed_at using errcode = '22023';
  end if;

  if private.execution_status_is_final(v_old.status) then
    v_refusal := case when v_old.status <> v_status then 'execution_final' end;
  elsif v_old.status <> v_status and not private.execution_transition_allowed(v_old.status, v_status) then
    v_refusal := 'transition_not_allowed';
  elsif v_exchange_order_id <> v_old.exchange_order_id then
    v_refusal := 'exchange_order_id_mismatch';
  elsif v_status in ('rejected', 'failed') and coalesce(v_old.filled_amount, 0) > 0 then
    -- Money moved: `certainly not placed` (or rejected) contradicts a reported fill.
    v_refusal := 'fill_recorded';
  elsif v_filled < v_old.filled_amount then
    v_refusal := 'fill_decreased';
  end if;
  if v_refusal is not null then
    perform private.audit('execution.illegal_transition', v_old.user_id, v_old.proposal_id, v_old.id,
      pg_catalog.jsonb_build_object('from', v_old.status, 'to', v_status, 'reason', v_refusal,
                                    'result', p_result));
    return pg_catalog.jsonb_build_object('outcome', 'illegal_transition', 'reason', v_refusal,
      'execution', private.execution_json(v_old));
  end if;
  if private.execution_status_is_final(v_old.status) then
    -- Repeating the same final result: a no-op (final executions never change).
    perform private.audit('execution.result_unchanged', v_old.user_id, v_old.proposal_id, v_old.id,
      pg_catalog.jsonb_build_object('status', v_old.status, 'result', p_result));
    return pg_catalog.jsonb_build_object('outcome', 'unchanged', 'execution', private.execution_json(v_old));
  end if;

  v_final := private.execution_status_is_final(v_status);
  -- Figures reported earlier (e.g. with `submitted`) stay unless this report has newer ones.
  v_filled := coalesce(v_filled, v_old.filled_amount);
  v_filled_quote := coalesce(v_filled_quote, v_old.filled_amount_quote);
  v_price := coalesce(v_price, v_old.price);
  v_fill := v_status in ('filled', 'partially_filled') or (v_status = 'canceled' and v_filled > 0);
  if v_status in ('filled', 'partially_filled') and coalesce(v_filled, 0) = 0 then
    raise exception 'p_result: a % order needs filled_amount > 0', v_status using errcode = '22023';
  end if;
  if v_fill then
    if v_filled_quote is null and v_price is null then
      raise exception 'p_result: a fill needs filled_amount_quote or price' using errcode = '22023';
    end if;
    v_filled_quote := coalesce(v_filled_quote, v_filled * v_price);
    v_price := coalesce(v_price, v_filled_quote / v_filled);
    if v_filled_quote = 0 then
      raise exception 'p_result: a fill needs filled_amount_quote > 0' using errcode = '22023';
    end if;
  end if;

  v_new := v_old;
  v_new.status := v_status;
  v_new.exchange_order_id := coalesce(v_exchange_order_id, v_old.exchange_order_id);
  v_new.filled_amount := v_filled;
  v_new.filled_amount_quote := v_filled_quote;
  v_new.price := v_price;
  v_new.fee_paid := coalesce(v_fee, v_old.fee_paid);
  v_new.fee_currency := coalesce(v_fee_currency, v_old.fee_currency);
  v_new.error_code := coalesce(v_error_code, v_old.error_code);
  v_new.error_message := coalesce(v_error_message, v_old.error_message);
  -- `failed` is certainly not placed: no submission time unless one was known before.
  v_new.submitted_at := coalesce(v_old.submitted_at, v_submitted_at,
                                 case when v_status <> 'failed' then v_clock end);
  v_new.completed_at := case when v_final then coalesce(v_completed_at, v_clock) else v_old.completed_at end;

  if v_old.status = v_status then
    -- The same open status again: it may bring facts we did not have (the exchange order id, a
    -- growing fill, error details); nothing new is `unchanged`.
    select coalesce(array_agg(n.key order by n.key), '{}') into v_changed
      from pg_catalog.jsonb_each(pg_catalog.to_jsonb(v_new)) n
      join pg_catalog.jsonb_each(pg_catalog.to_jsonb(v_old)) o using (key)
     where n.value is distinct from o.value;
    if pg_catalog.cardinality(v_changed) = 0 then
      perform private.audit('execution.result_unchanged', v_old.user_id, v_old.proposal_id, v_old.id,
        pg_catalog.jsonb_build_object('status', v_old.status, 'result', p_result));
      return pg_catalog.jsonb_build_object('outcome', 'unchanged', 'execution', private.execution_json(v_old));
    end if;
  end if;

  update public.trade_executions e
     set status = v_new.status,
         exchange_order_id = v_new.exchange_order_id,
         filled_amount = v_new.filled_amount,
         filled_amount_quote = v_new.filled_amount_quote,
         price = v_new.price,
         fee_paid = v_new.fee_paid,
         fee_currency = v_new.fee_currency,
         error_code = v_new.error_code,
         error_message = v_new.error_message,
         submitted_at = v_new.submitted_at,
         completed_at = v_new.completed_at
   where e.id = v_old.id
  returning * into v_new;

  if v_old.status = v_status then
    perform private.audit('execution.facts_added', v_new.user_id, v_new.proposal_id, v_new.id,
      pg_catalog.jsonb_build_object('status', v_new.status, 'changed', v_changed, 'result', p_result));
    return pg_catalog.jsonb_build_object('outcome', 'updated', 'execution', private.execution_json(v_new));
  end if;

  if v_fill then
    insert into public.trade_history (execution_id, proposal_id, user_id, market, side, amount,
                                      amount_quote, price, fee_paid, fee_currency, mode, executed_at)
    values (v_new.id, v_new.proposal_id, v_new.user_id, v_new.market, v_new.side, v_new.filled_amount,
            v_new.filled_amount_quote, v_new.price, coalesce(v_new.fee_paid, 0), v_new.fee_currency,
            v_new.mode, v_new.completed_at)
    on conflict (execution_id) do nothing;
    v_history := found;
    v_proposal_status := 'executed';
  elsif v_final then
    v_proposal_status := 'failed';
  end if;
  if v_proposal_status is not null then
    update public.trade_proposals p set status = v_proposal_status
     where p.id = v_new.proposal_id and p.status = 'executing';
  end if;

  perform private.audit('execution.status_changed', v_new.user_id, v_new.proposal_id, v_new.id,
    pg_catalog.jsonb_build_object('from', v_old.status, 'to', v_new.status, 'result', p_result,
      'trade_history_written', v_history, 'proposal_status', v_proposal_status));
  return pg_catalog.jsonb_build_object('outcome', 'updated', 'execution', private.execution_json(v_new));
end;
$$;
revoke execute on function public.record_execution_result(uuid, jsonb) from public, anon, authenticated;
grant execute on function public.record_execution_result(uuid, jsonb) to service_role;

-- G10: the reconciler's work list — executions whose outcome is still open (claimed, submitted,
-- unknown) and older than the given age, oldest first, at most 500.
create or replace function public.list_unsettled_executions(
  p_older_than_seconds integer default 30,
  p_limit integer default 50
) returns setof public.trade_executions
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if p_older_than_seconds is not null and p_older_than_seconds < 0 then
    raise exception 'p_older_than_seconds must not be negative, got %', p_older_than_seconds
      using errcode = '22023';
  end if;
  return query
    select e.*
      from public.trade_executions e
     where e.status in ('claimed', 'submitted', 'unknown')
       and e.claimed_at <= now() - make_interval(secs => coalesce(p_older_than_seconds, 30))
     order by e.claimed_at, e.id
     limit greatest(1, least(coalesce(p_limit, 50), 500));
end;
$$;
revoke execute on function public.list_unsettled_executions(integer, integer) from public, anon, authenticated;
grant execute on function public.list_unsettled_executions(integer, integer) to service_role;

-- =============================================================================================
-- Section - the orphan sweep (service-only): every order of the account maps to an execution
-- =============================================================================================

-- What the reconciler's sweep reads: every market of market_allowlist (claims need one) and of the
-- open executions, and its window [since, now] by the database's clock, the one that stamps
-- claimed_at. Reads only.
create or replace function public.list_sweep_markets(p_window_seconds integer) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_now timestamptz := now();
  v_markets text[];
begin
  if p_window_seconds is null or p_window_seconds not between 60 and 604800 then
    raise exception 'p_window_seconds must be between 60 and 604800, got %',
      coalesce(p_window_seconds::text, 'null') using errcode = '22023';
  end if;
  -- Index: trade_executions_unsettled_idx for the open executions.
  select coalesce(array_agg(m.market order by m.market), '{}') into v_markets
    from (select a.market from public.market_allowlist a
          union
          select e.market from public.trade_executions e
           where e.status in ('claimed', 'submitted', 'unknown')) m;
  return pg_catalog.jsonb_build_object('markets', pg_catalog.to_jsonb(v_markets),
    'since', v_now - make_interval(secs => p_window_seconds), 'now', v_now);
end;
$$;
revoke execute on function public.list_sweep_markets(integer) from public, anon, authenticated;
grant execute on function public.list_sweep_markets(integer) to service_role;

-- The sweep (G9, G10): each order the exchange lists, matched to its execution by clientOrderId
-- (and market), is either what the execution says (`matched`), still being settled (`open`: the
-- execution is claimed/submitted/unknown and the reconciler's own read settles it), or a
-- discrepancy, recorded once in private.exchange_discrepancies and audited (`exchange.discrepancy`):
--   no execution                                   orphan_order; nothing else is written (no user
--                                                  owns it: no ledger row is invented)
--   the execution says no order ever filled        execution_contradicted: the execution is corrected
--   (failed, rejected, canceled without a fill)    to what the exchange did (the state machine's one
--   and the exchange has it placed (open, a fill,  way out of a final state, corrected_at), the
--   or canceled / expired for failed / rejected)   ledger gets the fill once, the proposal follows
--                                                  (executed, or executing while the order is open),
--                                                  and `execution.status_changed` is audited with
--                                                  `corrected: true`
--   a final execution whose fill or order id is    figures_differ: recorded, the execution is left
--   not the exchange's                             as it is (a fill is never erased or rewritten)
-- A `rejected` order without a fill agrees with any execution that says nothing filled. An order
-- whose answer contradicts itself (result status `unknown`) is `skipped`.
--
-- p_orders: a JSON array (at most 10,000) of {"market", "exchange_order_id", "client_order_id"
-- (null when the order has none), "side", "exchange_status" (null when only its fills were
-- listed), "result"} where result is what record_execution_result would take for that order
-- (shared.execution.results.order_result). Invalid input raises 22023 and records nothing.
-- Executions are locked one at a time in clientOrderId order, so concurrent sweeps and reconciles
-- queue instead of deadlocking; a second sweep of the same orders records nothing new (`known`).
-- Answer: {"examined", "matched", "open", "orphans", "corrected", "figures_differ",
-- "discrepancies" (new ones of every kind), "known", "skipped"}.
create or replace function public.record_exchange_orders(p_orders jsonb) returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  c_keys constant text[] := array['market', 'exchange_order_id', 'client_order_id', 'side',
                                  'exchange_status', 'result'];
  c_result_keys constant text[] := array['status', 'exchange_order_id', 'filled_amount',
                                         'filled_amount_quote', 'price', 'fee_paid', 'fee_currency',
                                         'error_code', 'error_message'];
  c_uuid constant text := '^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$';
  v_order jsonb;
  v_result jsonb;
  v_unknown_keys text[];
  v_market text;
  v_order_id text;
  v_client_order_id text;
  v_side text;
  v_exchange_status text;
  v_status text;
  v_filled numeric;
  v_filled_quote numeric;
  v_price numeric;
  v_fee numeric;
  v_fee_currency text;
  v_execution public.trade_executions;
  v_kind text;
  v_discrepancy_id uuid;
  v_history boolean;
  v_proposal_status text;
  v_now timestamptz := pg_catalog.clock_timestamp();
  v_examined integer := 0;
  v_matched integer := 0;
  v_open integer := 0;
  v_orphans integer := 0;
  v_corrected integer := 0;
  v_differ integer := 0;
  v_known integer := 0;
  v_skipped integer := 0;
begin
  if p_orders is null or pg_catalog.jsonb_typeof(p_orders) <> 'array' then
    raise exception 'p_orders must be a JSON array' using errcode = '22023';
  end if;
  if pg_catalog.jsonb_array_length(p_orders) > 10000 then
    raise exception 'p_orders has % orders, at most 10000 per call', pg_catalog.jsonb_array_length(p_orders)
      using errcode = '22023';
  end if;

  for v_order in
    select o.value from pg_catalog.jsonb_array_elements(p_orders) o
     order by o.value ->> 'client_order_id', o.value ->> 'market', o.value ->> 'exchange_order_id'
  loop
    v_examined := v_examined + 1;
    if pg_catalog.jsonb_typeof(v_order) <> 'object' then
      raise exception 'p_orders[] must be JSON objects, got %', v_order using errcode = '22023';
    end if;
    select array_agg(k order by k) into v_unknown_keys
      from pg_catalog.jsonb_object_keys(v_order) k where k <> all (c_keys);
    if v_unknown_keys is not null then
      raise exception 'p_orders[] has unknown keys: %', array_to_string(v_unknown_keys, ', ')
        using errcode = '22023', hint = 'allowed: ' || array_to_string(c_keys, ', ');
    end if;
    v_market := v_order ->> 'market';
    if v_market is null or v_market !~ '^[A-Z0-9]{1,15}-[A-Z]{2,6}$' then
      raise exception 'p_orders[].market must look like BTC-EUR, got %', coalesce(v_order -> 'market', 'null'::jsonb)
        using errcode = '22023';
    end if;
    v_order_id := private.result_text(v_order, 'exchange_order_id', 128);
    if v_order_id is null then
      raise exception 'p_orders[].exchange_order_id is required' using errcode = '22023';
    end if;
    v_client_order_id := private.result_text(v_order, 'client_order_id', 64);
    v_exchange_status := private.result_text(v_order, 'exchange_status', 64);
    v_side := v_order ->> 'side';
    if v_side is not null and v_side not in ('buy', 'sell') then
      raise exception 'p_orders[].side must be buy or sell, got %', v_side using errcode = '22023';
    end if;
    v_result := v_order -> 'result';
    if v_result is null or pg_catalog.jsonb_typeof(v_result) <> 'object' then
      raise exception 'p_orders[].result must be a JSON object' using errcode = '22023';
    end if;
    select array_agg(k order by k) into v_unknown_keys
      from pg_catalog.jsonb_object_keys(v_result) k where k <> all (c_result_keys);
    if v_unknown_keys is not null then
      raise exception 'p_orders[].result has unknown keys: %', array_to_string(v_unknown_keys, ', ')
        using errcode = '22023', hint = 'allowed: ' || array_to_string(c_result_keys, ', ');
    end if;
    v_status := v_result ->> 'status';
    if pg_catalog.jsonb_typeof(v_result -> 'status') is distinct from 'string' or v_status not in
       ('submitted', 'filled', 'partially_filled', 'canceled', 'rejected', 'unknown') then
      raise exception 'p_orders[].result.status must be one of submitted, filled, partially_filled, canceled, rejected, unknown; got %',
        coalesce(v_result -> 'status', 'null'::jsonb) using errcode = '22023';
    end if;
    v_filled := coalesce(private.result_numeric(v_result, 'filled_amount'), 0);
    v_filled_quote := private.result_numeric(v_result, 'filled_amount_quote');
    v_price := nullif(private.result_numeric(v_result, 'price'), 0);
    v_fee := private.result_numeric(v_result, 'fee_paid');
    v_fee_currency := private.result_text(v_result, 'fee_currency', 16);
    if v_filled > 0 then
      if coalesce(v_filled_quote, 0) = 0 and v_price is null then
        raise exception 'p_orders[].result: a fill needs filled_amount_quote or price' using errcode = '22023';
      end if;
      v_filled_quote := coalesce(nullif(v_filled_quote, 0), v_filled * v_price);
      v_price := coalesce(v_price, v_filled_quote / v_filled);
    elsif v_status in ('filled', 'partially_filled') then
      raise exception 'p_orders[].result: a % order needs filled_amount > 0', v_status using errcode = '22023';
    end if;
    if v_status = 'unknown' then
      v_skipped := v_skipped + 1;  -- the exchange's answer contradicts itself: nothing to compare
      continue;
    end if;

    v_execution := null;
    if v_client_order_id ~ c_uuid then
      select * into v_execution from public.trade_executions e
       where e.client_order_id = v_client_order_id::uuid and e.market = v_market;
    end if;
    v_kind := case
      when v_execution.id is null then 'orphan_order'
      when v_execution.status in ('claimed', 'submitted', 'unknown') then null
      when v_execution.exchange_order_id <> v_order_id then 'figures_differ'
      when not v_execution.counts_toward_limits then
        case when v_filled > 0 or v_status = 'submitted'
                  or (v_status = 'canceled' and v_execution.status <> 'canceled')
             then 'execution_contradicted' end
      when v_filled <> coalesce(v_execution.filled_amount, 0) or v_status = 'submitted'
        then 'figures_differ'
    end;
    if v_execution.id is not null and v_execution.status in ('claimed', 'submitted', 'unknown') then
      v_open := v_open + 1;
      continue;
    end if;
    if v_kind is null then
      v_matched := v_matched + 1;
      continue;
    end if;

    v_history := false;
    v_proposal_status := null;
    if v_kind = 'execution_contradicted' then
      -- Again under the row lock: a concurrent sweep may have corrected it meanwhile.
      select * into v_execution from public.trade_executions e where e.id = v_execution.id for update;
      if v_execution.corrected_at is not null or v_execution.counts_toward_limits then
        v_known := v_known + 1;
        continue;
      end if;
    end if;

    insert into private.exchange_discrepancies (kind, market, exchange_order_id, client_order_id,
      execution_id, side, exchange_status, execution_status, recorded_status, facts, detected_at)
    values (v_kind, v_market, v_order_id, v_client_order_id, v_execution.id, v_side, v_exchange_status,
            v_execution.status, case when v_kind = 'execution_contradicted' then v_status end,
            v_order, v_now)
    on conflict (market, exchange_order_id, kind) do nothing
    returning id into v_discrepancy_id;
    if v_discrepancy_id is null then
      v_known := v_known + 1;  -- recorded (and audited) by an earlier sweep
      continue;
    end if;

    if v_kind = 'execution_contradicted' then
      update public.trade_executions e
         set status = v_status,
             exchange_order_id = v_order_id,
             filled_amount = v_filled,
             filled_amount_quote = case when v_filled > 0 then v_filled_quote end,
             price = case when v_filled > 0 then v_price end,
             fee_paid = coalesce(v_fee, e.fee_paid),
             fee_currency = coalesce(v_fee_currency, e.fee_currency),
             error_code = 'exchange_contradicted',
             error_message = left(format('the exchange has order %s (%s) for this clientOrderId; the execution '
                                         'had been recorded %s (%s)', v_order_id,
                                         coalesce(v_exchange_status, 'listed by its fills'), e.status,
                                         coalesce(e.error_code, 'no code')), 2000),
             submitted_at = coalesce(e.submitted_at, v_now),
             completed_at = case when v_status = 'submitted' then null else v_now end,
             corrected_at = v_now
       where e.id = v_execution.id;
      if v_filled > 0 then
        insert into public.trade_history (execution_id, proposal_id, user_id, market, side, amount,
                                          amount_quote, price, fee_paid, fee_currency, mode, executed_at)
        values (v_execution.id, v_execution.proposal_id, v_execution.user_id, v_execution.market,
                v_execution.side, v_filled, v_filled_quote, v_price, coalesce(v_fee, 0),
                v_fee_currency, v_execution.mode, v_now)
        on conflict (execution_id) do nothing;
        v_history := found;
        v_proposal_status := 'executed';
      elsif v_status = 'submitted' then
        v_proposal_status := 'executing';
      end if;
      if v_proposal_status is not null then
        update public.trade_proposals p set status = v_proposal_status
         where p.id = v_execution.proposal_id and p.status in ('failed', 'executing')
           and p.status <> v_proposal_status;
      end if;
      perform private.audit('execution.status_changed', v_execution.user_id, v_execution.proposal_id,
        v_execution.id, pg_catalog.jsonb_build_object('from', v_execution.status, 'to', v_status,
          'result', v_result, 'corrected', true, 'discrepancy_id', v_discrepancy_id,
          'trade_history_written', v_history, 'proposal_status', v_proposal_status));
      v_corrected := v_corrected + 1;
    elsif v_kind = 'orphan_order' then
      v_orphans := v_orphans + 1;
    else
      v_differ := v_differ + 1;
    end if;
    perform private.audit('exchange.discrepancy', v_execution.user_id, v_execution.proposal_id,
      v_execution.id, pg_catalog.jsonb_build_object('kind', v_kind, 'discrepancy_id', v_discrepancy_id,
        'market', v_market, 'exchange_order_id', v_order_id, 'client_order_id', v_client_order_id,
        'exchange_status', v_exchange_status, 'execution_status', v_execution.status,
        'recorded_status', case when v_kind = 'execution_contradicted' then v_status end,
        'order', v_order));
  end loop;

  return pg_catalog.jsonb_build_object('examined', v_examined, 'matched', v_matched, 'open', v_open,
    'orphans', v_orphans, 'corrected', v_corrected, 'figures_differ', v_differ,
    'discrepancies', v_orphans + v_corrected + v_differ, 'known', v_known, 'skipped', v_skipped);
end;
$$;
revoke execute on function public.record_exchange_orders(jsonb) from public, anon, authenticated;
grant execute on function public.record_exchange_orders(jsonb) to service_role;

-- The operator closes a discrepancy they have handled (`oracle verify` stops failing on it): once,
-- with a note saying what was done; audited (`exchange.discrepancy_acknowledged`).
create or replace function public.acknowledge_exchange_discrepancy(p_discrepancy_id uuid, p_note text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_discrepancy private.exchange_discrepancies;
begin
  if p_discrepancy_id is null then
    raise exception 'p_discrepancy_id is required' using errcode = '22023';
  end if;
  if p_note is null or length(btrim(p_note)) = 0 or length(p_note) > 1000 then
    raise exception 'p_note must say what was done (1..1000 characters)' using errcode = '22023';
  end if;
  select * into v_discrepancy from private.exchange_discrepancies d
   where d.id = p_discrepancy_id for update;
  if not found then
    return pg_catalog.jsonb_build_object('outcome', 'not_found', 'discrepancy_id', p_discrepancy_id);
  end if;
  if v_discrepancy.acknowledged_at is not null then
    return pg_catalog.jsonb_build_object('outcome', 'already_acknowledged', 'discrepancy_id',
      p_discrepancy_id, 'acknowledged_at', v_discrepancy.acknowledged_at);
  end if;
  update private.exchange_discrepancies d
     set acknowledged_at = now(), acknowledged_note = p_note
   where d.id = p_discrepancy_id
  returning * into v_discrepancy;
  perform private.audit('exchange.discrepancy_acknowledged', null, null, v_discrepancy.execution_id,
    pg_catalog.jsonb_build_object('discrepancy_id', p_discrepancy_id, 'kind', v_discrepancy.kind,
      'market', v_discrepancy.market, 'exchange_order_id', v_discrepancy.exchange_order_id,
      'note', p_note, 'db_user', session_user, 'role', auth.role()));
  return pg_catalog.jsonb_build_object('outcome', 'acknowledged', 'discrepancy_id', p_discrepancy_id,
    'acknowledged_at', v_discrepancy.acknowledged_at);
end;
$$;
revoke execute on function public.acknowledge_exchange_discrepancy(uuid, text) from public, anon, authenticated;
grant execute on function public.acknowledge_exchange_discrepancy(uuid, text) to service_role;

-- =============================================================================================
-- Section - the auto-execute queue (service-only)
-- =============================================================================================
-- The scanner's dispatch (shared/scanning/dispatch.py) drains the auto-approved proposals through
-- trading_execute. Several ticks may dispatch at once (cron starts one per scanner instance); a
-- short lease gives each proposal to one dispatcher at a time, so they send disjoint sets instead
-- of every one sending everything (each repeat would only be a replay or a 409, but a request, a
-- claim and an audit row each). The lease is an efficiency, not a guarantee: when it runs out with
-- a request still on its way, another dispatcher may send the same proposal, and the claim's
-- idempotency (G1) answers it. Expired leases are deleted by run_maintenance.
create table private.auto_execution_leases (
  proposal_id uuid primary key references public.trade_proposals (id) on delete cascade,
  dispatcher text not null,
  leased_until timestamptz not null,
  constraint auto_execution_leases_dispatcher_length check (length(dispatcher) between 1 and 200)
);

alter table private.auto_execution_leases enable row level security;

-- Written and read only by lease_auto_approved_proposals, release_auto_execution_leases and
-- run_maintenance.
revoke all on private.auto_execution_leases from public, anon, authenticated, service_role;

-- Leases to p_dispatcher, for p_lease_seconds, up to p_limit (1..1000) auto-approved proposals
-- that are not executed yet (status `approved`: a claim moves a proposal to `executing` in the
-- transaction that creates its execution), not expired, and not leased to another dispatcher,
-- oldest first; returns them in that order. A proposal whose claim was rejected (an audited
-- `claim.rejected`) has had its definite answer and is left out: it waits for its expiry, or for
-- its user. One refused for the order budget (`claim.rate_limited`) stays in the queue, and a
-- dispatcher may lease its own proposals again (after waiting for the budget).
create or replace function public.lease_auto_approved_proposals(
  p_dispatcher text,
  p_limit integer default 100,
  p_lease_seconds integer default 30
)
returns table (
  proposal_id uuid,
  user_id uuid,
  market text,
  side text,
  amount_quote numeric,
  created_at timestamptz,
  expires_at timestamptz
)
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_dispatcher is null or length(p_dispatcher) not between 1 and 200 then
    raise exception 'p_dispatcher must be 1..200 characters' using errcode = '22023';
  end if;
  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception 'p_limit must be 1..1000, got %', coalesce(p_limit::text, 'null')
      using errcode = '22023';
  end if;
  if p_lease_seconds is null or p_lease_seconds not between 1 and 3600 then
    raise exception 'p_lease_seconds must be 1..3600, got %', coalesce(p_lease_seconds::text, 'null')
      using errcode = '22023';
  end if;
  -- The proposal rows a concurrent dispatcher is leasing right now are skipped, not waited for;
  -- the lease row's own conflict check decides between two that saw it free.
  return query
    with candidates as (
      select p.id
        from public.trade_proposals p
        left join private.auto_execution_leases l on l.proposal_id = p.id
       where p.status = 'approved' and p.decided_by = 'auto'
         and p.expires_at > pg_catalog.now()
         and (l.proposal_id is null or l.leased_until <= pg_catalog.now()
              or l.dispatcher = p_dispatcher)
         and not exists (select from public.execution_audit_log a
                          where a.proposal_id = p.id and a.event = 'claim.rejected')
       order by p.created_at, p.id
       limit p_limit
         for update of p skip locked
    ), leased as (
      insert into private.auto_execution_leases as l (proposal_id, dispatcher, leased_until)
      select c.id, p_dispatcher,
             pg_catalog.now() + pg_catalog.make_interval(secs => p_lease_seconds::double precision)
        from candidates c
      on conflict on constraint auto_execution_leases_pkey do update
         set dispatcher = excluded.dispatcher, leased_until = excluded.leased_until
       where l.leased_until <= pg_catalog.now() or l.dispatcher = excluded.dispatcher
      returning l.proposal_id
    )
    select p.id, p.user_id, p.market, p.side, p.amount_quote, p.created_at, p.expires_at
      from public.trade_proposals p
      join leased x on x.proposal_id = p.id
     order by p.created_at, p.id;
end;
$$;
revoke execute on function public.lease_auto_approved_proposals(text, integer, integer) from public, anon, authenticated;
grant execute on function public.lease_auto_approved_proposals(text, integer, integer) to service_role;

-- Ends every lease p_dispatcher holds (a dispatch run calls it when it stops, so the proposals it
-- leased but did not send go to the next dispatcher at once); returns how many.
create or replace function public.release_auto_execution_leases(p_dispatcher text) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_released integer;
begin
  if p_dispatcher is null or length(p_dispatcher) not between 1 and 200 then
    raise exception 'p_dispatcher must be 1..200 characters' using errcode = '22023';
  end if;
  delete from private.auto_execution_leases l where l.dispatcher = p_dispatcher;
  get diagnostics v_released = row_count;
  return v_released;
end;
$$;
revoke execute on function public.release_auto_execution_leases(text) from public, anon, authenticated;
grant execute on function public.release_auto_execution_leases(text) to service_role;
