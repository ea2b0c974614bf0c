/*
 * Maintenance: the housekeeping that keeps G2 and G7 live when a worker or a GPT call dies
 * half-way, and the pg_cron jobs that run it.
 *
 *   run_maintenance          every minute: frees expired scan-job leases, expires stale trade
 *                            proposals, splits shared model bills a dead tick left unsettled,
 *                            releases GPT reservations older than their lifetime
 *                            (private.gpt_reservation_lifetime: 15 minutes), deletes run-out
 *                            auto-execute dispatch leases
 *   cron 'run-maintenance'   * * * * *  select public.run_maintenance()
 *   cron 'purge-cron-history' daily: pg_cron's own run log older than 7 days
 *   cron 'invoke-scan-scheduler' (hosted Supabase only, when pg_net's net.http_post and Vault
 *                            exist): POSTs two ticks at once to the scan_scheduler function every
 *                            minute, URL and bearer from Vault secrets `scan_scheduler_url` and
 *                            `scan_scheduler_service_key`; locally the dev stack calls it itself.
 *   cron 'invoke-trading-reconcile' (the same condition): POSTs to trading_execute's /reconcile
 *                            every minute (G10: unknown outcomes settled by clientOrderId), URL
 *                            from Vault secret `trading_execute_url`, the same service key.
 *
 * pg_cron can only be created in its cron.database_name; this migration must run there (as it
 * does on Supabase and in the test harness's template database). Scheduling is idempotent:
 * each job is unscheduled by name first, so re-applying the file leaves exactly one of each.
 */

set lock_timeout = '5s';  -- a queued DDL lock fails the push instead of blocking writes

-- In pg_catalog, as Supabase installs it (its Cron docs), never in public where the advisor flags
-- it (extension_in_public); the job tables live in schema `cron` either way.
create extension if not exists pg_cron with schema pg_catalog;

-- =============================================================================================
-- Section - run_maintenance (service-only)
-- =============================================================================================

-- Frees leases of crashed workers (G2), expires proposals past expires_at that were never executed
-- (each audited with why: not decided, or approved and not executed before it expired — with the
-- last claim answer it got, e.g. `claim.rate_limited` when the trade key's order budget kept it
-- waiting), splits the recorded bill of every shared model answer whose tick died before settling
-- it (G7, private.settle_oracle_answer in the scanning migration), and releases GPT reservations
-- whose call never settled within their lifetime (15 minutes, G7); returns the counts. A settle
-- arriving after the release is still recorded (settle_gpt_usage).
create or replace function public.run_maintenance() returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_expired_locks integer;
  v_expired_proposals bigint;  -- count(*)'s type: no hidden cast
  v_released_reservations bigint;
  v_settled_answers integer := 0;
  v_answer_id uuid;
begin
  v_expired_locks := public.cleanup_expired_locks();

  -- A tick settles the bills of its calls when it ends, within its function's timeout (the
  -- scanner refuses a FUNCTION_TIMEOUT_SECONDS above 540 s); ten minutes later it is dead, and
  -- splitting here, before the stale release below, settles its reservations instead of
  -- releasing them unpaid.
  for v_answer_id in
    select a.id from private.oracle_answers a
     where a.settled_at is null and a.prompt_tokens is not null
       and a.answered_at < now() - interval '10 minutes'
     order by a.id
  loop
    perform private.settle_oracle_answer(v_answer_id);
    v_settled_answers := v_settled_answers + 1;
  end loop;

  -- Only proposals nobody started executing: `executing` and later states belong to
  -- trade_executions' state machine and are settled by the reconciler, never by age.
  -- An approved proposal that expires was never claimed: its last claim attempt, if any, says
  -- why (refused for the order budget, rejected by a validator); none means it was never sent.
  -- The rows are locked first so that the status they expire from is the one they had.
  with stale as (
    select p.id, p.status
      from public.trade_proposals p
     where p.status in ('pending', 'approved')
       and p.expires_at <= now()
       for update
  ), expired as (
    update public.trade_proposals p
       set status = 'expired'
      from stale s
     where p.id = s.id
    returning p.id, p.user_id, p.expires_at, p.decided_by, s.status as status_was
  ), audited as (
    insert into public.execution_audit_log (user_id, proposal_id, event, detail)
    select e.user_id, e.id, 'proposal.expired',
           jsonb_build_object('expires_at', e.expires_at, 'by', 'run_maintenance',
             'status_was', e.status_was, 'decided_by', e.decided_by,
             'reason', case e.status_was when 'pending' then 'not_decided_before_expiry'
                                         else 'not_executed_before_expiry' end,
             'last_claim', (select jsonb_build_object('event', a.event, 'at', a.created_at)
                              from public.execution_audit_log a
                             where a.proposal_id = e.id and a.event like 'claim.%'
                             order by a.id desc
                             limit 1))
    from expired e
    returning 1
  )
  select count(*) into v_expired_proposals from audited;

  -- A reservation this old belongs to a call that crashed or timed out without settling; holding
  -- it would keep budget blocked for the rest of the hour/day.
  with released as (
    update public.gpt_usage_log l
       set status = 'released', released_at = now(), release_reason = 'stale_reservation'
     where l.status = 'reserved'
       and l.created_at < now() - private.gpt_reservation_lifetime()
    returning l.id, l.user_id, l.reserved_usd, l.created_at
  ), audited as (
    insert into public.execution_audit_log (user_id, event, detail)
    select r.user_id, 'gpt_budget.reservation_released',
           jsonb_build_object('reservation_id', r.id, 'reserved_usd', r.reserved_usd,
                              'reserved_at', r.created_at, 'reason', 'stale_reservation')
    from released r
    returning 1
  )
  select count(*) into v_released_reservations from audited;

  -- A dispatch lease that ran out means nothing any more (lease_auto_approved_proposals).
  delete from private.auto_execution_leases l where l.leased_until <= now();

  return jsonb_build_object(
    'expired_locks', v_expired_locks,
    'expired_proposals', v_expired_proposals,
    'released_reservations', v_released_reservations,
    'settled_answers', v_settled_answers,
    'ran_at', now()
  );
end;
$$;
revoke execute on function public.run_maintenance() from public, anon, authenticated;
grant execute on function public.run_maintenance() to service_role;

-- =============================================================================================
-- Section - pg_cron jobs
-- =============================================================================================
do $$
begin
  if exists (select from cron.job where jobname = 'run-maintenance') then
    perform cron.unschedule('run-maintenance');
  end if;
  perform cron.schedule('run-maintenance', '* * * * *', $cmd$select public.run_maintenance()$cmd$);

  -- A run every minute writes 1,440 rows a day into pg_cron's history; keep a week of it.
  if exists (select from cron.job where jobname = 'purge-cron-history') then
    perform cron.unschedule('purge-cron-history');
  end if;
  perform cron.schedule('purge-cron-history', '17 3 * * *',
    $cmd$delete from cron.job_run_details where end_time < now() - interval '7 days'$cmd$);
end
$$;

-- Hosted Supabase only: pg_net (schema `net`) and Vault exist there, not on a plain PostgreSQL.
-- The test is on the function the commands call (pg_net's signature), so a stand-in `net.http_post`
-- on a test cluster schedules the same commands (tests/test_scan_cron.py and
-- tests/test_reconcile_cron.py run them). Each command reads its URL and the key from Vault at
-- every run, so rotating a secret needs no migration, and does nothing until both of its secrets
-- exist. net.http_post only queues the request (pg_net sends it after the cron transaction
-- commits), so a long timeout never holds up pg_cron. If pg_net is enabled after this migration
-- ran, run this block again in the SQL editor (`oracle verify` names the missing jobs).
--
-- invoke-scan-scheduler matches scan_scheduler's contract (SPEC §4, shared/scanning/tick.py):
--   POST <scan_scheduler_url>, twice      net.http_post always POSTs; two ticks start at once each
--                                         minute (generate_series(1, 2)), each on an instance of its
--                                         own: at 10,000 users × 5 markets every minute (50,000
--                                         jobs) two ticks drain the minute's jobs in about 40 s on a
--                                         2-core machine where one cannot (bench/scan_scale.py; the
--                                         README's Performance section says how to size this for a
--                                         number of users). They share nothing but the database:
--                                         SKIP LOCKED hands each job to one of them, leases keep
--                                         them apart (G2), and their market snapshots meet in one
--                                         oracle answer (claim_oracle_answer).
--   Authorization: Bearer <service key>   the tick accepts the service-role key only (401 otherwise)
--   Content-Type: application/json        body {}: no max_jobs, each tick drains what is due
--   timeout_milliseconds 150000           the function's own timeout (FUNCTION_TIMEOUT_SECONDS, 150 s):
--                                         a tick claims no batch after TICK_TIME_BUDGET_SECONDS
--                                         (45 s) and ends before that timeout, so pg_net waits for
--                                         its answer (net._http_response) instead of recording a
--                                         timeout for every tick that works for more than 5 s.
--   A tick still running when the next minute's starts is safe: the jobs it holds are leased (G2).
--
-- invoke-trading-reconcile matches trading_execute's POST /reconcile (shared/execution/reconcile.py):
--   POST <trading_execute_url>/reconcile  the URL secret is the function's base URL (a trailing /
--                                         is ignored)
--   Authorization: Bearer <service key>   /reconcile is service-role only (401/403 otherwise); the
--                                         key is the same secret as the scanner's
--   Content-Type: application/json        body {}: the function's RECONCILE_BATCH_SIZE (50)
--   timeout_milliseconds 60000            trading_execute's deployed timeout (60 s, the README's
--                                         deploy command): a normal run takes milliseconds; one cut
--                                         short by the function's timeout leaves the rest to the
--                                         next minute, never an order re-sent (G10).
--   Two runs at once are safe: record_execution_result takes the execution's row lock and
--   enforces the state machine, and /reconcile never places an order.
do $$
begin
  if to_regprocedure('net.http_post(text, jsonb, jsonb, jsonb, integer)') is null
     or to_regclass('vault.decrypted_secrets') is null then
    raise notice 'pg_net or Vault not installed: invoke-scan-scheduler and invoke-trading-reconcile not scheduled (the local stack calls the functions itself)';
    return;
  end if;
  if exists (select from cron.job where jobname = 'invoke-scan-scheduler') then
    perform cron.unschedule('invoke-scan-scheduler');
  end if;
  perform cron.schedule('invoke-scan-scheduler', '* * * * *', $cmd$
    select net.http_post(
      url := (select s.decrypted_secret from vault.decrypted_secrets s where s.name = 'scan_scheduler_url'),
      body := '{}'::jsonb,
      headers := jsonb_build_object(
        'Authorization', 'Bearer ' || (select s.decrypted_secret from vault.decrypted_secrets s
                                       where s.name = 'scan_scheduler_service_key'),
        'Content-Type', 'application/json'),
      timeout_milliseconds := 150000)
    from generate_series(1, 2)
    where exists (select from vault.decrypted_secrets s where s.name = 'scan_scheduler_url')
      and exists (select from vault.decrypted_secrets s where s.name = 'scan_scheduler_service_key')
  $cmd$);

  if exists (select from cron.job where jobname = 'invoke-trading-reconcile') then
    perform cron.unschedule('invoke-trading-reconcile');
  end if;
  perform cron.schedule('invoke-trading-reconcile', '* * * * *', $cmd$
    select net.http_post(
      url := (select rtrim(s.decrypted_secret, '/') || '/reconcile' from vault.decrypted_secrets s
              where s.name = 'trading_execute_url'),
      body := '{}'::jsonb,
      headers := jsonb_build_object(
        'Authorization', 'Bearer ' || (select s.decrypted_secret from vault.decrypted_secrets s
                                       where s.name = 'scan_scheduler_service_key'),
        'Content-Type', 'application/json'),
      timeout_milliseconds := 60000)
    where exists (select from vault.decrypted_secrets s where s.name = 'trading_execute_url')
      and exists (select from vault.decrypted_secrets s where s.name = 'scan_scheduler_service_key')
  $cmd$);
end
$$;
