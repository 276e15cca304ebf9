// The JavaScript half of node/tests/automerge_interop.rs: an automerge 3 app reading a document
// Meridian wrote (`meridian doc-changes --out IN`), editing its text, and handing its changes back
// (`meridian doc-apply KEY OUT`). Files hold length-prefixed change chunks (4-byte big-endian length).
// Usage: node edit.mjs IN OUT; exits 1 naming what an app would trip over.
import * as A from "@automerge/automerge";
import { readFileSync, writeFileSync } from "node:fs";

function readChunks(path) {
  const bytes = readFileSync(path);
  const chunks = [];
  for (let at = 0; at < bytes.length; ) {
    const len = bytes.readUInt32BE(at);
    chunks.push(new Uint8Array(bytes.subarray(at + 4, at + 4 + len)));
    at += 4 + len;
  }
  return chunks;
}

function fail(message) {
  console.error(message);
  process.exit(1);
}

const [input, output] = process.argv.slice(2);
const [doc] = A.applyChanges(A.init(), readChunks(input));
if (typeof doc.title !== "string") fail(`title is not a string: ${JSON.stringify(doc.title)}`);
if (A.isImmutableString(doc.title)) fail("title is an ImmutableString (a scalar), not editable text");
if (doc.tags[0] !== "red") fail(`tags[0] is ${JSON.stringify(doc.tags[0])}`);
// Editing text in place only works on automerge text.
const edited = A.change(doc, (d) => {
  A.splice(d, ["title"], d.title.length, 0, ", world");
  d.tags.push("blue");
});
const changes = A.getChanges(doc, edited);
const out = [];
for (const change of changes) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(change.length);
  out.push(len, Buffer.from(change));
}
writeFileSync(output, Buffer.concat(out));
console.log(edited.title);
