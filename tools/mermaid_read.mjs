// Reads Mermaid documents, one JSON string a line on stdin, and writes for each one line of JSON:
// what Mermaid's own parser made of it (the flowchart's title, vertices with their label text and
// classes, edges with their kind), or the parser's error. Mermaid sanitises labels with DOMPurify,
// which needs a DOM: jsdom provides one. tests/test_output_safety.py checks with it that
// `paradecom result --format mermaid` reads back exactly.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { JSDOM } from 'jsdom';

const dom = new JSDOM('<!DOCTYPE html><body></body>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import('mermaid');
mermaid.initialize({ startOnLoad: false });

// Mermaid reads the front matter with the YAML loader bundled in one of its chunks, and does not
// export it: find that chunk the way mermaid.core.mjs imports it, so the title is read with it too.
const core = createRequire(import.meta.url).resolve('mermaid/dist/mermaid.core.mjs');
const chunk = /import \{\s*JSON_SCHEMA,\s*load\s*\} from "([^"]+)"/.exec(readFileSync(core, 'utf8'));
if (!chunk) throw new Error('mermaid_read.mjs: cannot find the YAML loader in ' + core);
const yaml = await import(pathToFileURL(join(dirname(core), chunk[1])).href);

async function read(text) {
  // mermaid.parse registers the diagram types and checks the syntax; getDiagramFromText then gives
  // the parsed diagram's database. Its front matter title is passed on as mermaid.render does.
  await mermaid.parse(text);
  const title = /^---\ntitle: (.*)\n---\n/.exec(text);
  const metadata = title ? { title: String(yaml.load('title: ' + title[1], { schema: yaml.JSON_SCHEMA }).title) } : {};
  const diagram = await mermaid.mermaidAPI.getDiagramFromText(text, metadata);
  const db = diagram.db;
  return {
    type: diagram.type,
    title: db.getDiagramTitle(),
    vertices: [...db.getVertices().values()].map((v) => ({ id: v.id, text: v.text, classes: v.classes })),
    edges: db.getEdges().map((e) => ({ start: e.start, end: e.end, type: e.type, stroke: e.stroke })),
  };
}

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  let answer;
  try {
    answer = await read(JSON.parse(line));
  } catch (error) {
    answer = { error: String(error && error.message ? error.message : error) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
