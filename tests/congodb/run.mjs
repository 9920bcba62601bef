// Starts CongoDB on 127.0.0.1:PORT, prints "congodb ready port=PORT", and
// stops on TERM/INT. Data lives in memory and is saved to DIR/congodb.json
// every second and on stop, then loaded at start, so a stop and start keeps
// what was written. (CongoDB's "file" storage rewrites a collection's file
// per operation without serialising them, and loses concurrent writes.)
// With CONGODB_PERSIST=0 nothing is saved or loaded: a large data set
// (scripts/bench-search loads a million documents) would spend its time
// serialising itself every second.
// Usage: [CONGODB_PERSIST=0] node run.mjs PORT DIR
import { CongoServer } from './vendor/congodb/index.js';
import { HelloHandler } from './vendor/congodb/server/handlers/HelloHandler.js';

// CongoDB answers every hello with a fresh topologyVersion.processId, which
// tells a driver that the server just restarted, and it never waits on an
// awaitable hello; a pooled driver then re-checks the server in a tight
// loop (both processes near 50% CPU). Without topologyVersion, drivers fall
// back to polling every heartbeatFrequencyMS, as with older servers.
const hello = HelloHandler.prototype.handle;
HelloHandler.prototype.handle = async function handle(context) {
  const response = await hello.call(this, context);
  delete response.topologyVersion;
  return response;
};

const port = Number.parseInt(process.argv[2] ?? '27017', 10);
const dir = process.argv[3];
if (!dir) {
  console.error('usage: node run.mjs PORT DIR');
  process.exit(2);
}
const persist = process.env.CONGODB_PERSIST !== '0';
const server = new CongoServer({
  port, host: '127.0.0.1', storage: 'memory',
  ...(persist ? { persistPath: `${dir}/congodb.json`, persistIntervalMs: 1000 } : {}),
});
await server.start();
console.log(`congodb ready port=${port}`);
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    await server.stop();
    process.exit(0);
  });
}
