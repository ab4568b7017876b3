// Entry point of the single executable: the bundle is CommonJS, where `import.meta.main` does not
// exist, so this file runs the CLI unconditionally.
import process from "node:process";
import { main } from "../cli.ts";

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
