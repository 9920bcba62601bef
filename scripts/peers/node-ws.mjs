// A peer for scripts/bench: the seed's stack, Node cluster + ws + ioredis.
// The primary forks --workers processes that share the listening port
// (node:cluster, round-robin); each worker keeps its own connections and
// fans a room's messages out to them from a Redis pub/sub channel per room.
// A room's seq comes from Redis INCR, in the same Lua script that publishes
// the message, so every worker sees a room's messages in seq order.
//
// It speaks only the subset of docs/protocol.md that bin/chat-load uses:
// welcome, join -> joined {room, seq}, chat -> ack {room, seq} + chat
// {room, seq, sender, content, ts, cid} to every member (the sender too).
// No durability, recovery, history, presence, rate limits or auth.
//
// Usage: node node-ws.mjs --port PORT --redis-url redis://127.0.0.1:6379 [--workers 2]
// Prints "peer ready" on stderr once every worker listens.
import cluster from 'node:cluster';
import http from 'node:http';
import process from 'node:process';
import Redis from 'ioredis';
import { WebSocketServer } from 'ws';

const opts = { port: 8080, redisUrl: 'redis://127.0.0.1:6379', workers: 2, host: '127.0.0.1' };
for (let i = 2; i < process.argv.length; i += 2) {
    const [k, v] = [process.argv[i], process.argv[i + 1]];
    if (v === undefined) throw new Error(`node-ws: ${k} needs a value`);
    if (k === '--port') opts.port = Number(v);
    else if (k === '--redis-url') opts.redisUrl = v;
    else if (k === '--workers') opts.workers = Number(v);
    else if (k === '--host') opts.host = v;
    else throw new Error(`node-ws: unknown option ${k}`);
}

const OUTBOUND_LIMIT = 4 << 20;     // as chatd's --outbound-limit: close 1013 above it

if (cluster.isPrimary) {
    let listening = 0;
    let stopping = false;
    cluster.on('listening', () => {
        if (++listening === opts.workers) console.error(`node-ws: peer ready on port ${opts.port} (${opts.workers} workers)`);
    });
    cluster.on('exit', (w, code, sig) => {
        if (!stopping) {
            console.error(`node-ws: worker ${w.process.pid} exited (${sig || code})`);
            process.exitCode = 1;
        }
        if (Object.keys(cluster.workers).length === 0 && stopping) process.exit();
    });
    const stop = () => {
        stopping = true;
        for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
        setTimeout(() => process.exit(), 3000).unref();
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    for (let i = 0; i < opts.workers; i++) cluster.fork();
} else {
    worker();
}

function worker() {
    const redis = new Redis(opts.redisUrl, { enableAutoPipelining: true });
    const sub = new Redis(opts.redisUrl);
    const SEQ = 'peer:seq:';
    const CHAN = 'peer:room:';
    // KEYS: seq key, channel. ARGV: the frame before and after its seq.
    // Published as "<seq> <frame>" so that a worker reads the seq without
    // parsing the JSON.
    redis.defineCommand('chatSeq', {
        numberOfKeys: 2,
        lua: "local s = redis.call('INCR', KEYS[1])\n" +
             "redis.call('PUBLISH', KEYS[2], s .. ' ' .. ARGV[1] .. s .. ARGV[2])\n" +
             'return s',
    });

    // room name -> { members: Set<client>, ready: Promise (subscribed) }
    const rooms = new Map();
    let nextSession = 0;

    sub.on('messageBuffer', (chanBuf, msg) => {
        const room = chanBuf.toString('latin1', CHAN.length);
        const r = rooms.get(room);
        if (r === undefined) return;
        const sp = msg.indexOf(0x20);
        const seq = Number(msg.toString('latin1', 0, sp));
        const frame = msg.subarray(sp + 1);
        for (const c of r.members) {
            const st = c.rooms.get(room);
            if (st === undefined) continue;
            if (st.last === null) {
                st.held.push([seq, frame]);     // joined not sent yet
            } else if (seq > st.last) {
                st.last = seq;
                send(c, frame);
            }
        }
    });

    const send = (c, data) => {
        if (c.closed) return;
        if (c.ws.bufferedAmount > OUTBOUND_LIMIT) {
            c.closed = true;
            c.ws.close(1013, 'too slow');
            return;
        }
        c.ws.send(data, { binary: false });
    };
    const sendJson = (c, obj) => send(c, JSON.stringify(obj));
    const error = (c, id, code, message) =>
        sendJson(c, id === undefined ? { type: 'error', payload: { code, message } }
                                     : { type: 'error', id, payload: { code, message } });

    async function join(c, id, room) {
        const have = c.rooms.get(room);
        if (have !== undefined) {
            if (have.last !== null) sendJson(c, { type: 'joined', id, payload: { room, seq: have.last, recovered: false } });
            return;
        }
        // Messages that arrive between the subscription and the GET are
        // held, then sent after joined if newer than its seq.
        const st = { last: null, held: [] };
        c.rooms.set(room, st);
        let r = rooms.get(room);
        if (r === undefined) {
            r = { members: new Set(), ready: sub.subscribe(CHAN + room) };
            rooms.set(room, r);
        }
        r.members.add(c);
        await r.ready;
        const seq = Number(await redis.get(SEQ + room)) || 0;
        if (c.closed) return;
        st.last = seq;
        sendJson(c, { type: 'joined', id, payload: { room, seq, recovered: false } });
        for (const [s, frame] of st.held) {
            if (s > st.last) {
                st.last = s;
                send(c, frame);
            }
        }
        st.held = null;
    }

    async function chat(c, id, room, content) {
        const ts = Date.now();
        const head = `{"type":"chat","payload":{"room":${JSON.stringify(room)},"seq":`;
        const tail = `,"sender":${JSON.stringify(c.user)},"content":${JSON.stringify(content)},` +
                   `"attachments":[],"ts":${ts}` + (id === undefined ? '}}' : `,"cid":${JSON.stringify(id)}}}`);
        const seq = await redis.chatSeq(SEQ + room, CHAN + room, head, tail);
        sendJson(c, { type: 'ack', id, payload: { room, seq, ts, duplicate: false } });
    }

    function leaveAll(c) {
        for (const room of c.rooms.keys()) {
            const r = rooms.get(room);
            if (r === undefined) continue;
            r.members.delete(c);
            if (r.members.size === 0) {
                rooms.delete(room);
                sub.unsubscribe(CHAN + room).catch(() => {});
            }
        }
        c.rooms.clear();
    }

    function onMessage(c, data, isBinary) {
        if (isBinary) {
            c.ws.close(1003, 'binary');
            return;
        }
        let m;
        try {
            m = JSON.parse(data.toString());
        } catch {
            return error(c, undefined, 'bad_request', 'not JSON');
        }
        if (m === null || typeof m !== 'object' || typeof m.type !== 'string') {
            return error(c, undefined, 'bad_request', 'no type');
        }
        const id = typeof m.id === 'string' ? m.id : undefined;
        const p = m.payload && typeof m.payload === 'object' ? m.payload : {};
        const room = p.room;
        switch (m.type) {
        case 'join':
            if (typeof room !== 'string' || room.length === 0) return error(c, id, 'bad_request', 'room');
            join(c, id, room).catch((e) => error(c, id, 'unavailable', String(e)));
            return;
        case 'chat':
            if (typeof room !== 'string' || typeof p.content !== 'string' || p.content.length === 0) {
                return error(c, id, 'bad_request', 'room and content');
            }
            if (!c.rooms.has(room)) return error(c, id, 'not_joined', 'join first');
            chat(c, id, room, p.content).catch((e) => error(c, id, 'unavailable', String(e)));
            return;
        case 'ping':
            return sendJson(c, { type: 'pong', id });
        default:
            return error(c, id, 'bad_request', 'unsupported type');
        }
    }

    const server = http.createServer((req, res) => {
        res.writeHead(404, { 'content-type': 'text/plain', connection: 'close' });
        res.end('not found\n');
    });
    const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false, maxPayload: 65536, clientTracking: false });
    wss.on('connection', (ws, req) => {
        const user = new URL(req.url, 'http://x').searchParams.get('user') || 'anonymous';
        const c = { ws, user, rooms: new Map(), closed: false };
        const session = `${process.pid}-${nextSession++}`;
        sendJson(c, {
            type: 'welcome',
            payload: { user, session, heartbeat: 25, limits: { maxMessage: 65536, maxContent: 16384, rate: 100000, burst: 100000 } },
        });
        ws.on('message', (data, isBinary) => onMessage(c, data, isBinary));
        ws.on('close', () => {
            c.closed = true;
            leaveAll(c);
        });
        ws.on('error', () => {});
    });
    process.on('SIGTERM', () => process.exit(0));
    server.listen(opts.port, opts.host);
}
