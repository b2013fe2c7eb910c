// Checks rendered ServiceMonitors and PrometheusRules against the Prometheus Operator's
// monitoring.coreos.com/v1 types, as packaged by @kubernetes-models/prometheus-operator:
//
//   node check-objects.mjs OBJECTS.json WORKDIR
//
// OBJECTS.json: an array of the objects (tests/chart/check.py objects). Two checks, since the
// API server's would only come with a cluster and the Prometheus Operator's CRDs:
// 1. tsc on a file declaring each object with its interface: an unknown field (a typo the API
//    server would silently prune) or a wrong type fails, with TypeScript's "did you mean";
// 2. each model's validate(): required fields, enums and patterns of the CRD schema (e.g. the
//    Prometheus duration of interval, scrapeTimeout and for).
// WORKDIR/node_modules must reach this folder's installed packages. Exit status 1 on any
// problem, each printed on stderr.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ServiceMonitor, PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const [objectsPath, workdir] = process.argv.slice(2);
if (!objectsPath || !workdir) {
  console.error("usage: node check-objects.mjs OBJECTS.json WORKDIR");
  process.exit(2);
}
const objects = JSON.parse(readFileSync(objectsPath, "utf8"));
const models = { ServiceMonitor, PrometheusRule };
const problems = [];
let ts = 'import type { IServiceMonitor, IPrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";\n';
objects.forEach((o, i) => {
  const name = `${o.kind} ${o.metadata?.name}`;
  if (o.apiVersion !== "monitoring.coreos.com/v1" || !(o.kind in models)) {
    problems.push(`${name}: not a monitoring.coreos.com/v1 ServiceMonitor or PrometheusRule`);
    return;
  }
  ts += `// ${name}\nexport const o${i}: I${o.kind} = ${JSON.stringify(o, null, 2)};\n`;
  try {
    new models[o.kind](o).validate();
  } catch (err) {
    problems.push(`${name}: ${err.message}`);
  }
});
const file = join(workdir, "objects.ts");
writeFileSync(file, ts);
try {
  execFileSync(join(workdir, "node_modules", ".bin", "tsc"),
    ["--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution", "nodenext",
     "--target", "es2022", file], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 120000 });
} catch (err) {
  problems.push(`tsc on ${file}:\n${err.stdout || ""}${err.stderr || err.message}`);
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`${objects.length} objects match the monitoring.coreos.com/v1 types (${objects.map((o) => o.kind).join(", ")})`);
