// The Deno CLI's KV API against a KV Connect server: one JSON line per step.
// Usage: deno run --unstable-kv -A kv_basics.ts URL   (token in DENO_KV_ACCESS_TOKEN)
const kv = await Deno.openKv(Deno.args[0]);
const show = (v: unknown): unknown => v instanceof Deno.KvU64 ? { $u64: v.value.toString() } : v;
const emit = (step: string, data: Record<string, unknown>) =>
  console.log(JSON.stringify({ step, ...data }));

const set = await kv.set(["basics", "greeting"], "hello");
const got = await kv.get(["basics", "greeting"]);
emit("set_get", {
  set,
  key: got.key,
  value: got.value,
  versionstamp: got.versionstamp,
});

for (const n of [3, 1, 2]) await kv.set(["basics", "list", n], `item ${n}`);
await kv.set(["basics", "listed-not"], "outside the prefix");
const listed = [];
for await (const e of kv.list({ prefix: ["basics", "list"] })) {
  listed.push([e.key, e.value]);
}
emit("list", { listed });

const before = await kv.get(["basics", "guarded"]);
const fresh = await kv.atomic().check(before).set(["basics", "guarded"], "first")
  .commit();
const stale = await kv.atomic().check(before).set(["basics", "guarded"], "second")
  .commit();
const after = await kv.get(["basics", "guarded"]);
emit("check", { fresh, stale, value: after.value });

await kv.atomic().sum(["basics", "counter"], 5n).commit();
await kv.atomic().sum(["basics", "counter"], 7n).commit();
const counter = await kv.get(["basics", "counter"]);
emit("sum", { value: show(counter.value) });

const t0 = Date.now();
await kv.set(["basics", "ttl"], "short-lived", { expireIn: 300 });
const early = (await kv.get(["basics", "ttl"])).value;
let gone = false;
while (Date.now() - t0 < 10_000) {
  if ((await kv.get(["basics", "ttl"])).value === null) {
    gone = true;
    break;
  }
  await new Promise((r) => setTimeout(r, 50));
}
emit("expire", { early, gone, elapsed_ms: Date.now() - t0 });

try {
  await kv.enqueue({ never: "delivered" });
  emit("enqueue", { ok: true });
} catch (e) {
  emit("enqueue", { ok: false, error: String(e) });
}
kv.close();
