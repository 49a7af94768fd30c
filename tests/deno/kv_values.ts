// Values across the wire. Usage:
//   kv_values.ts URL write         store one key per kind of value under ["interop", NAME]
//   kv_values.ts URL read NAMES    print {NAME: description} of ["fromPython", NAME]
const kv = await Deno.openKv(Deno.args[0]);

// JSON cannot tell these JS types apart, so tag them (the tags of test_v8_deno.py).
function describe(v: unknown): unknown {
  if (v === null || typeof v === "boolean" || typeof v === "string") return v;
  if (v === undefined) return { $undefined: true };
  if (typeof v === "number") {
    return { $number: Object.is(v, -0) ? "-0" : Number.isFinite(v) ? v : String(v) };
  }
  if (typeof v === "bigint") return { $bigint: v.toString() };
  if (v instanceof Deno.KvU64) return { $u64: v.value.toString() };
  if (v instanceof Uint8Array && v.constructor === Uint8Array) return { $u8: Array.from(v) };
  if (v instanceof Date) return { $date: v.getTime() };
  if (v instanceof Map) return { $map: [...v].map(([k, x]) => [describe(k), describe(x)]) };
  if (v instanceof Set) return { $set: [...v].map(describe) };
  if (Array.isArray(v)) return v.map(describe);
  if (Object.getPrototypeOf(v) === Object.prototype) {
    const entries = Object.entries(v as object).map(([k, x]) => [k, describe(x)]);
    return { $object: Object.fromEntries(entries) };
  }
  return { $other: Object.prototype.toString.call(v) };
}

if (Deno.args[1] === "write") {
  const values: Record<string, unknown> = {
    string: "héllo 日本",
    number: 1.5,
    integer: 42,
    true: true,
    null: null,
    nested: { a: [1, "two", { three: [null, false] }], b: { c: "d" } },
    bytes: new Uint8Array([0, 1, 255]),
    nested_bytes: { data: new Uint8Array([7, 8]), list: [new Uint8Array([9])] },
    bigint: 2n ** 70n,
    u64: new Deno.KvU64(18446744073709551615n),
    date: new Date(1700000000123),
    map: new Map<string, unknown>([["k", 1], ["l", "v"]]),
    set: new Set(["a", "b"]),
  };
  const op = kv.atomic();
  for (const [name, value] of Object.entries(values)) op.set(["interop", name], value);
  console.log(JSON.stringify(await op.commit()));
} else {
  const seen: Record<string, unknown> = {};
  for (const name of JSON.parse(Deno.args[2])) {
    seen[name] = describe((await kv.get(["fromPython", name])).value);
  }
  console.log(JSON.stringify(seen));
}
kv.close();
