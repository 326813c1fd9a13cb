// The npm packages of JsSIP and SIP.js ship no browser bundle (CommonJS / bare ES modules only),
// so the pages served to Chromium load these self-contained IIFE builds instead.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
export const bundleDir = path.join(here, "node_modules", ".ws2sip-bundles");

const bundles = [
  // JsSIP is CommonJS, SIP.js is ES modules: each is re-exported in its own module system.
  { source: 'module.exports = require("jssip");', globalName: "JsSIP", outfile: "jssip.js" },
  { source: 'export * from "sip.js";', globalName: "SIP", outfile: "sipjs.js" },
];

for (const { source, globalName, outfile } of bundles) {
  await build({
    stdin: { contents: source, resolveDir: here },
    bundle: true,
    format: "iife",
    globalName,
    platform: "browser",
    outfile: path.join(bundleDir, outfile),
    logLevel: "warning",
  });
  console.log(`built ${path.join(bundleDir, outfile)}`);
}
