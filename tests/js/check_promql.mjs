// Parses PromQL expressions with Prometheus's own grammar (@prometheus-io/lezer-promql, the
// parser of Prometheus's web UI), independently of the daemon. Reads a JSON object
// {name: expression} on stdin and prints {name: null | offset of the first syntax error}.
// Usage: node check_promql.mjs TOOLS_DIR   (where scripts/test installed the package)
import { createRequire } from "node:module";
import { join } from "node:path";

const require = createRequire(join(process.argv[2], "package.json"));
const { parser } = require("@prometheus-io/lezer-promql");

let input = "";
for await (const chunk of process.stdin) input += chunk;
const result = {};
for (const [name, expr] of Object.entries(JSON.parse(input))) {
  let error = null;
  parser.parse(expr).iterate({
    enter: (node) => {
      if (node.type.isError && error === null) error = node.from;
    },
  });
  result[name] = error;
}
console.log(JSON.stringify(result));
