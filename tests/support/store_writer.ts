/**
 * Child process for the durability test: opens the secret store in the directory given as the
 * first argument, sets each `key=value` argument in turn, prints `written <version>` and then
 * waits to be killed, never closing the store.
 */
import { SecretStore } from "../../services/secret_store.ts";

const [dir, ...pairs] = Deno.args;
if (dir === undefined) throw new Error("usage: store_writer.ts DATA_DIR KEY=VALUE...");
const store = SecretStore.open(dir);
let version = 0;
for (const pair of pairs) {
  const eq = pair.indexOf("=");
  version = store.set(pair.slice(0, eq), pair.slice(eq + 1));
}
Deno.stdout.writeSync(new TextEncoder().encode(`written ${version}\n`));
// Keep the process (and the open database) alive until the test kills it.
setInterval(() => {}, 60_000);
