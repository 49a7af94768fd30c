// S3 for Deno: the same work as kvqueue's side, on a Deno KV file database.
// `deno run --unstable-kv -A deno_kv_queue.ts DB N BATCH` enqueues N messages,
// BATCH per atomic commit, while listenQueue (same process) counts them, and
// prints one JSON line with the seconds from the first enqueue to the last delivery.
const [path, nArg, batchArg] = Deno.args;
const n = Number(nArg);
const batch = Number(batchArg);
const payload = { forUser: "alovelace", body: "x".repeat(160) };

const kv = await Deno.openKv(path);
let received = 0;
let finish: () => void = () => {};
const allReceived = new Promise<void>((resolve) => (finish = resolve));
const listening = kv.listenQueue(() => {
  received += 1;
  if (received === n) finish();
});

const started = performance.now();
for (let sent = 0; sent < n; sent += batch) {
  const op = kv.atomic();
  for (let i = 0; i < batch; i++) op.enqueue(payload);
  const result = await op.commit();
  if (!result.ok) throw new Error("commit failed");
}
const enqueued = performance.now();
await allReceived;
const finished = performance.now();
kv.close();
await listening;
console.log(JSON.stringify({
  messages: n,
  seconds: (finished - started) / 1000,
  enqueue_seconds: (enqueued - started) / 1000,
}));
