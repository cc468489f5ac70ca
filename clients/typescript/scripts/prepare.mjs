// npm's `prepare` step: builds dist/ with tsc. It runs on `npm ci` here,
// and when another project installs this folder (`npm install
// ./clients/typescript`); in that case this folder's dev dependencies
// (TypeScript and the type packages) are not installed yet, so they are
// installed first from package-lock.json, with scripts off (no recursion).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(here, "node_modules", "typescript", "bin", "tsc");
const run = (cmd, args) => execFileSync(cmd, args, { cwd: here, stdio: "inherit" });

if (!existsSync(tsc)) {
  const npm = process.env.npm_execpath;
  if (!npm) {
    throw new Error("building engram-client needs TypeScript: run `npm ci` in clients/typescript first");
  }
  run(process.execPath, [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"]);
}
run(process.execPath, [tsc, "-p", "tsconfig.json"]);
