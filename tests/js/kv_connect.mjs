// npm @deno/kv (KV Connect over HTTP/1.1) against a kvqueue server: one JSON line
// per step. Usage: node kv_connect.mjs URL TOKEN STEP...
// Steps: basics (set, get, list), enqueue:NAME (enqueue {name} with
// keysIfUndelivered [["dead", NAME]]).
import { openKv } from "@deno/kv";

const [url, accessToken, ...steps] = process.argv.slice(2);
const kv = await openKv(url, { accessToken });
const emit = (step, data) => console.log(JSON.stringify({ step, ...data }));

for (const step of steps) {
  if (step === "basics") {
    const set = await kv.set(["npm", "greeting"], "hello from node");
    const got = await kv.get(["npm", "greeting"]);
    for (const n of [2, 1]) await kv.set(["npm", "list", n], { n });
    await kv.set(["npm-other"], "outside the prefix");
    const listed = [];
    for await (const e of kv.list({ prefix: ["npm", "list"] })) listed.push([e.key, e.value]);
    emit("basics", { set, key: got.key, value: got.value, versionstamp: got.versionstamp, listed });
  } else if (step.startsWith("enqueue:")) {
    const name = step.slice("enqueue:".length);
    const result = await kv.enqueue({ name, sent: "by @deno/kv" }, {
      keysIfUndelivered: [["dead", name]],
    });
    emit("enqueue", { name, result });
  } else {
    throw new Error(`unknown step ${step}`);
  }
}
kv.close();
