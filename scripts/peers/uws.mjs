// A peer for scripts/bench: uWebSockets.js pub/sub in one process, no
// Redis. Every room is a uWS topic; a chat gets the room's next seq from
// a counter in memory and is published to the topic (the sender included),
// so every member sees a room's messages in seq order.
//
// It speaks only the subset of docs/protocol.md that bin/chat-load uses:
// welcome, join -> joined {room, seq}, chat -> ack {room, seq} + chat
// {room, seq, sender, content, ts, cid} to every member (the sender too).
// No durability, recovery, history, presence, rate limits or auth.
//
// Usage: node uws.mjs --port PORT
// Prints "peer ready" on stderr once it listens.
import process from 'node:process';
import uWS from 'uwebsockets';

const opts = { port: 8080, host: '127.0.0.1' };
for (let i = 2; i < process.argv.length; i += 2) {
    const [k, v] = [process.argv[i], process.argv[i + 1]];
    if (v === undefined) throw new Error(`uws: ${k} needs a value`);
    if (k === '--port') opts.port = Number(v);
    else if (k === '--host') opts.host = v;
    else throw new Error(`uws: unknown option ${k}`);
}

const seqs = new Map();     // room -> latest seq
let nextSession = 0;
const decoder = new TextDecoder();

const sendJson = (ws, obj) => ws.send(JSON.stringify(obj), false);
const error = (ws, id, code, message) => sendJson(ws, { type: 'error', id, payload: { code, message } });

function onMessage(ws, data, isBinary) {
    if (isBinary) {
        ws.end(1003, 'binary');
        return;
    }
    const u = ws.getUserData();
    let m;
    try {
        m = JSON.parse(decoder.decode(data));
    } catch {
        return error(ws, undefined, 'bad_request', 'not JSON');
    }
    if (m === null || typeof m !== 'object' || typeof m.type !== 'string') {
        return error(ws, undefined, 'bad_request', 'no type');
    }
    const id = typeof m.id === 'string' ? m.id : undefined;
    const p = m.payload && typeof m.payload === 'object' ? m.payload : {};
    const room = p.room;
    switch (m.type) {
    case 'join': {
        if (typeof room !== 'string' || room.length === 0) return error(ws, id, 'bad_request', 'room');
        // One thread: nothing is published between these two lines.
        ws.subscribe(room);
        u.rooms.add(room);
        return sendJson(ws, { type: 'joined', id, payload: { room, seq: seqs.get(room) || 0, recovered: false } });
    }
    case 'chat': {
        if (typeof room !== 'string' || typeof p.content !== 'string' || p.content.length === 0) {
            return error(ws, id, 'bad_request', 'room and content');
        }
        if (!u.rooms.has(room)) return error(ws, id, 'not_joined', 'join first');
        const seq = (seqs.get(room) || 0) + 1;
        seqs.set(room, seq);
        const ts = Date.now();
        sendJson(ws, { type: 'ack', id, payload: { room, seq, ts, duplicate: false } });
        // app.publish, not ws.publish: the sender gets its own message too.
        app.publish(room, `{"type":"chat","payload":{"room":${JSON.stringify(room)},"seq":${seq},` +
                          `"sender":${JSON.stringify(u.user)},"content":${JSON.stringify(p.content)},` +
                          `"attachments":[],"ts":${ts}` + (id === undefined ? '}}' : `,"cid":${JSON.stringify(id)}}}`),
                    false);
        return;
    }
    case 'ping':
        return sendJson(ws, { type: 'pong', id });
    default:
        return error(ws, id, 'bad_request', 'unsupported type');
    }
}

const app = uWS.App();
app.ws('/ws', {
    compression: uWS.DISABLED,
    maxPayloadLength: 65536,
    idleTimeout: 120,
    // As chatd's --outbound-limit (4 MiB): a receiver that far behind is
    // closed rather than silently skipped.
    maxBackpressure: 4 << 20,
    closeOnBackpressureLimit: true,
    upgrade: (res, req, context) => {
        res.upgrade({ user: req.getQuery('user') || 'anonymous', rooms: new Set() },
                    req.getHeader('sec-websocket-key'),
                    req.getHeader('sec-websocket-protocol'),
                    req.getHeader('sec-websocket-extensions'),
                    context);
    },
    open: (ws) => {
        const u = ws.getUserData();
        sendJson(ws, {
            type: 'welcome',
            payload: { user: u.user, session: `${process.pid}-${nextSession++}`, heartbeat: 25,
                       limits: { maxMessage: 65536, maxContent: 16384, rate: 100000, burst: 100000 } },
        });
    },
    message: onMessage,
});
app.any('/*', (res) => {
    res.writeStatus('404 Not Found').writeHeader('connection', 'close').end('not found\n');
});
app.listen(opts.host, opts.port, (token) => {
    if (!token) {
        console.error(`uws: cannot listen on ${opts.host}:${opts.port}`);
        process.exit(1);
    }
    console.error(`uws: peer ready on port ${opts.port}`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
