// graphile-worker as its users run it, for bench/scheduler.py (never part of `make test`).
//
//   node bench/graphile_worker.mjs migrate '{"url": …}'
//   node bench/graphile_worker.mjs drain '{"url": …, "concurrency": N, "batch": B | null}'
//
// `drain` runs graphile-worker's own runner (runOnce: until no runnable job is left) with a no-op
// task and `concurrency` concurrent jobs. `batch` null is the default fetch (each worker locks one
// job per query, completes it with one query); a number B turns on its batching: a local queue of
// B jobs fetched per query, and completions batched (completeJobBatchDelay 0). The task counts how
// often it saw each job id, so a job run twice is a duplicate. Prints one JSON line.
import { Logger, runMigrations, runOnce } from "graphile-worker";
import { EventEmitter } from "node:events";

const [command, rawOptions] = process.argv.slice(2);
const options = JSON.parse(rawOptions ?? "{}");

// Errors only: a benchmark that hides an error would print a meaningless number.
const logger = new Logger(() => (level, message) => {
  if (level === "error") console.error(`graphile-worker: ${message}`);
});

if (command === "migrate") {
  await runMigrations({ connectionString: options.url, logger });
  process.exit(0);
}
if (command !== "drain") {
  console.error(`unknown command ${command}`);
  process.exit(2);
}

const seen = new Map();
const events = new EventEmitter();
let started = null;
// The clock starts when the runner has started its workers (pool and migration check done), as
// the other systems' clocks start once their connections are open.
events.on("worker:create", () => {
  started ??= process.hrtime.bigint();
});

const batching = options.batch
  ? { localQueue: { size: options.batch }, completeJobBatchDelay: 0, failJobBatchDelay: 0 }
  : {};
await runOnce(
  {
    connectionString: options.url,
    concurrency: options.concurrency,
    maxPoolSize: Math.max(10, options.concurrency + 2),
    noHandleSignals: true,
    logger,
    events,
    taskList: {
      noop: async (_payload, helpers) => {
        seen.set(helpers.job.id, (seen.get(helpers.job.id) ?? 0) + 1);
      },
    },
    preset: { worker: batching },
  },
);
const finished = process.hrtime.bigint();

let handled = 0;
for (const n of seen.values()) handled += n;
console.log(
  JSON.stringify({
    seconds: started === null ? null : Number(finished - started) / 1e9,
    handled,
    unique: seen.size,
    duplicates: handled - seen.size,
  }),
);
