// Reads Markdown documents, one JSON string a line on stdin, and writes for each one line of JSON:
// the token tree of `marked.lexer` (GitHub-flavoured, marked's default). tests/test_output_safety.py
// rebuilds a task tree from it, to check that `paradecom result --format markdown` reads back exactly.
import { createInterface } from 'node:readline';
import { marked } from 'marked';

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  let answer;
  try {
    answer = { tokens: marked.lexer(JSON.parse(line)) };
  } catch (error) {
    answer = { error: String(error) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
