// Starts CongoDB on 127.0.0.1:PORT with file storage in DIR (so that a
// restart keeps what was written), prints "congodb ready port=PORT", and
// stops on TERM/INT. Usage: node run.mjs PORT DIR
import { CongoServer } from './vendor/congodb/index.js';

const port = Number.parseInt(process.argv[2] ?? '27017', 10);
const dir = process.argv[3];
if (!dir) {
  console.error('usage: node run.mjs PORT DIR');
  process.exit(2);
}
const server = new CongoServer({ port, host: '127.0.0.1', storage: 'file', storagePath: dir });
await server.start();
console.log(`congodb ready port=${port}`);
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    await server.stop();
    process.exit(0);
  });
}
