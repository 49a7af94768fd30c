// Watch one key and print each value the stream yields as a JSON line; exit after
// COUNT values. Usage: kv_watch.ts URL KEY_JSON COUNT
const kv = await Deno.openKv(Deno.args[0]);
const key = JSON.parse(Deno.args[1]);
const count = Number(Deno.args[2]);
let seen = 0;
for await (const [entry] of kv.watch([key])) {
  console.log(JSON.stringify({ value: entry.value, versionstamp: entry.versionstamp }));
  if (++seen >= count) break;
}
kv.close();
