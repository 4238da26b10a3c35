// Drives vmcp over stdio with the official TypeScript MCP client and prints,
// as one JSON line, the size of each result as the client received it (the
// JSON of the whole result) with a few facts about it. Used by the e2e test
// TestTypeScriptClientSeesBudgetedSizes: sizes checked from outside Go.
// Usage: node ts-client-sizes.mjs SERVER_BINARY STATE_DIR
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [server, state] = process.argv.slice(2);
const transport = new StdioClientTransport({
  command: server,
  args: ["--state-dir", state],
  stderr: "inherit",
});
const client = new Client({ name: "ts-client-sizes", version: "1.0.0" });
await client.connect(transport);

const calls = {
  seq: ["exec_command", { command: "seq 1 1000000", timeout_seconds: 300 }],
  value: ["run_python", { code: "'z'*3_000_000" }],
  line: ["run_python", { code: "print('x'*10_000_000); print('tail')", timeout_seconds: 120 }],
};
const out = {};
for (const [name, [tool, args]] of Object.entries(calls)) {
  const res = await client.callTool({ name: tool, arguments: args }, undefined, { timeout: 600_000 });
  const text = res.content.filter((c) => c.type === "text").map((c) => c.text).join("\n");
  out[name] = {
    bytes: Buffer.byteLength(JSON.stringify({ jsonrpc: "2.0", id: 1, result: res })),
    textChars: [...text].length,
    markers: text.split("left out here").length - 1,
    isError: !!res.isError,
    structured: res.structuredContent ?? null,
  };
}
await client.close();
process.stdout.write(JSON.stringify(out) + "\n");
