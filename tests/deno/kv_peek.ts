// Print what this token's database shows at one key and under one prefix, as a
// JSON line. Usage: kv_peek.ts URL KEY_JSON PREFIX_JSON
const kv = await Deno.openKv(Deno.args[0]);
const entry = await kv.get(JSON.parse(Deno.args[1]));
const listed = [];
for await (const e of kv.list({ prefix: JSON.parse(Deno.args[2]) })) listed.push([e.key, e.value]);
console.log(JSON.stringify({ value: entry.value, versionstamp: entry.versionstamp, listed }));
kv.close();
