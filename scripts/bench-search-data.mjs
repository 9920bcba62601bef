// Helper of scripts/bench-search: the data of one big room, written as
// chatd's archive writes it, and the queries with their expected answers.
// Runs on Node with the MongoDB driver of tests/congodb (bash
// tests/congodb/setup installs it).
//
//   generate --uri URI --room R --messages N --live L --queries Q --out DIR
//            [--kinds K,...]
//       N messages in room R, deterministic (a seeded generator): the first
//       N - L go straight into the collection `messages` as documents of
//       worker/data/archive.c's archive_doc (see docShape below), with edits,
//       deletes and reactions among them as chatd would have stored them;
//       the last L are written to DIR/live.json for the bench to send
//       through chatd. Writes DIR/meta.json (the room's last seq in the
//       archive part, counts) and DIR/queries.json: Q queries of several
//       kinds, each with the seqs a search must answer (limit 20, newest
//       first) and `more`, found by matching every message's words against
//       the query's words (common/words.c's words_match) one by one.
//       Before inserting, it creates archive_do_indexes's indexes.
//   redis-only --room R --messages N --queries Q --out DIR [--kinds K,...]
//       The same for a room held by Redis only (no archive): DIR/live.json
//       with N messages for the bench to send, DIR/queries.json.
//   vocab --out DIR
//       DIR/vocab.json: messages holding every word of the vocabulary (as
//       written, and in capitals), for the check below.
//   The query kinds (K): common, common-deep (a common word with `before`
//   a random seq), rare, two-words, prefix, accents (see makeQueries);
//   the queries take them in turn. Default: all but common-deep.
//   check --uri URI --room R --words-room W --out DIR
//       Compares what chatd's archive wrote with what this script writes:
//       the field names (in order) and value types of a live document of
//       room R (sent through chatd) against a generated one, the same for
//       an edited, a deleted, a reacted and an edited and reacted message
//       (chatd's: seqs 1 to 4 of room W, see bench-search.py events), the words
//       chatd stored for each live message against this script's words(),
//       and the same for room W, whose messages hold the whole vocabulary.
//       Prints a JSON report; exits 1 on a difference.
//
// words() below is common/words.c's words_of for the text this script
// writes (Latin, Greek, Cyrillic and Han letters, digits, punctuation): full
// case folding is toLowerCase() plus ß and final sigma, which is exact for
// that repertoire but not for every Unicode string; `check` proves it on
// every word used.
import { createRequire } from 'node:module';
import { writeFileSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, '../tests/congodb/package.json'));
const { MongoClient, Long, ObjectId } = require('mongodb');

// ---- words (common/words.c) ---------------------------------------------

const LATIN = /\p{Script=Latin}/u;
const MARK = /\p{M}/u;
const LETTER_OR_DIGIT = /[\p{L}\p{N}]/u;

function fold(s) {
  return s.toLowerCase().replace(/ß/g, 'ss').replace(/ς/g, 'σ');
}

/** The distinct words of text, in order of first appearance. */
export function words(text) {
  if (/^[\x00-\x7f]*$/.test(text)) {
    return [...new Set(text.toLowerCase().split(/[^a-z0-9]+/).filter(Boolean))];
  }
  const f = fold(text).normalize('NFD');
  const out = [];
  let cur = '';
  let inWord = false;
  let latinBase = false;
  for (const ch of f) {
    if (MARK.test(ch)) {
      if (inWord && !latinBase) cur += ch;
    } else if (LETTER_OR_DIGIT.test(ch)) {
      latinBase = LATIN.test(ch);
      inWord = true;
      cur += ch;
    } else if (inWord) {
      out.push(cur.normalize('NFC'));
      cur = '';
      inWord = false;
      latinBase = false;
    }
  }
  if (inWord) out.push(cur.normalize('NFC'));
  return [...new Set(out)];
}

/** words_match: every query word is a message word, the last (of 2+
 * characters) may also start one. msg: array of words. */
function matches(msgWords, q) {
  for (let i = 0; i < q.length; i++) {
    const w = q[i];
    const prefix = i === q.length - 1 && [...w].length >= 2;
    if (!msgWords.some((m) => (prefix ? m.startsWith(w) : m === w))) return false;
  }
  return true;
}

// ---- deterministic randomness ---------------------------------------------

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- the vocabulary --------------------------------------------------------

// The most frequent words of chat, in rank order.
const COMMON = `the i you to a and it is that of in for on we this be with have are not just
so but can do at my if me what was will no yes ok get all up like your know one there out about
now go they it's think when then see how time he good would should could more make need did
here some too also work back going today want new right thanks let way well still got look
need any day them because really why where who which tomorrow after before thing people
meeting deploy release build test fix bug issue branch merge review code server client
api data user team call week morning night lunch coffee update plan ready done sure maybe
great nice cool sorry please help question answer problem change version log error config`
  .split(/\s+/).filter(Boolean);

// Accented words (and a few other scripts), spread over the ranks. As
// written in messages (with capitals where natural).
const ACCENTED = `café résumé naïve über señor façade Straße crème brûlée déjà fiancée
jalapeño Zürich München São Ångström smörgåsbord piñata élan Genève Kraków Łódź Dvořák Škoda
Ørsted Réunion Québec garçon hôtel château forêt Noël coöperate Bogotá Málaga Córdoba
Ærø Öresund Malmö Gödel Erdős Poincaré Fréchet Bézier Müller Schrödinger Côte Provençal
naïveté rôle entrée soirée exposé protégé cliché doppelgänger Mañana Ñandú Привет мир Москва
Αθήνα Ελλάδα 東京 北京`.split(/\s+/).filter(Boolean);

const SYL = ['ka', 'lo', 'mi', 'ren', 'tas', 'vo', 'ne', 'du', 'pra', 'sel', 'bi', 'gor', 'fa',
  'zu', 'tem', 'ris', 'ol', 'an', 'ex', 'qua', 'ly', 'mon', 'ter', 'hu', 'sa', 'ci', 'po', 'dra',
  'ke', 'vin', 'str', 'el', 'ob', 'nu', 'ta', 'ro'];

/** Every word, by rank (index 0 the most frequent), and the needles:
 * words planted in a few chosen messages only. */
function vocabulary() {
  const rnd = mulberry32(7);
  const seen = new Set();
  const synth = [];
  while (synth.length < 4800) {
    const n = 2 + Math.floor(rnd() * 3);
    let w = '';
    for (let i = 0; i < n; i++) w += SYL[Math.floor(rnd() * SYL.length)];
    if (!seen.has(w)) {
      seen.add(w);
      synth.push(w);
    }
  }
  const ranked = [...COMMON];
  for (const w of COMMON) seen.add(w);
  let s = 0;
  // An accented word every 60 ranks from rank 150 on: the first ones are
  // frequent (hundreds of thousands of uses), the last rare.
  for (let i = 0; i < ACCENTED.length; i++) {
    const at = 150 + i * 60;
    while (ranked.length < at) ranked.push(synth[s++]);
    ranked.push(ACCENTED[i]);
  }
  while (s < synth.length) ranked.push(synth[s++]);
  const needles = [];
  for (let i = 0; i < 300; i++) needles.push(`qz${i.toString(36)}x${(i * 7919 % 1000).toString(36)}`);
  return { ranked, needles };
}

// ---- messages --------------------------------------------------------------

const PUNCT = [' ', ' ', ' ', ' ', ' ', ' ', ', ', ' - ', '? ', '! ', '. ', ': ', ' (', ') '];

class Generator {
  constructor(seed, ranked) {
    this.rnd = mulberry32(seed);
    this.ranked = ranked;
    // Zipf, exponent 1: rank r (1-based) has weight 1/r.
    this.cdf = new Float64Array(ranked.length);
    let sum = 0;
    for (let r = 0; r < ranked.length; r++) {
      sum += 1 / (r + 1);
      this.cdf[r] = sum;
    }
    this.total = sum;
  }

  word() {
    const x = this.rnd() * this.total;
    let lo = 0;
    let hi = this.cdf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.cdf[mid] < x) lo = mid + 1;
      else hi = mid;
    }
    return this.ranked[lo];
  }

  /** A message's text: 3 to 24 words, punctuation, a capital now and then. */
  text(extra) {
    const n = 3 + Math.floor(this.rnd() * this.rnd() * 22);
    let t = '';
    for (let i = 0; i < n; i++) {
      let w = this.word();
      if (i === 0 || this.rnd() < 0.03) w = w[0].toUpperCase() + w.slice(1);
      else if (this.rnd() < 0.005) w = w.toUpperCase();
      t += w + (i < n - 1 ? PUNCT[Math.floor(this.rnd() * PUNCT.length)] : '');
    }
    for (const w of extra) t += ` ${w}`;
    if (this.rnd() < 0.3) t += this.rnd() < 0.5 ? '?' : '.';
    return t;
  }

  attachments() {
    if (this.rnd() >= 0.02) return [];
    const n = 1 + Math.floor(this.rnd() * 2);
    const out = [];
    for (let i = 0; i < n; i++) {
      out.push({ type: 'image', url: `https://files.example.com/${Math.floor(this.rnd() * 1e9).toString(36)}.png` });
    }
    return out;
  }

  sender() {
    return `user${String(1 + Math.floor(this.rnd() * this.rnd() * 60)).padStart(2, '0')}`;
  }
}

/** archive_oid: 8 bytes of FNV-1a 64 of the room, 4 of the seq (big-endian). */
function archiveOid(room, seq) {
  let h = 1469598103934665603n;
  for (const b of Buffer.from(room, 'utf8')) {
    h = ((h ^ BigInt(b)) * 1099511628211n) & 0xffffffffffffffffn;
  }
  const buf = Buffer.alloc(12);
  buf.writeBigUInt64BE(h, 0);
  buf.writeUInt32BE(seq >>> 0, 8);
  return new ObjectId(buf);
}

/** The document archive_doc writes for a message, in its field order:
 * m = {seq, sender, content, ts, attachments, cid} as sent, st = the
 * state after its last event or null: {edited, content, deleted,
 * reactions: [{emoji, users}], v}. */
function docShape(room, m, st) {
  const gone = st !== null && st.deleted;
  const content = st !== null && st.content !== undefined ? st.content : m.content;
  const d = { _id: archiveOid(room, m.seq), roomId: room, seq: Long.fromNumber(m.seq), sender: m.sender };
  if (!gone) {
    d.content = content;
    if (!room.startsWith('e2e:')) d.words = words(content);
  }
  d.timestamp = new Date(m.ts);
  d.ts = Long.fromNumber(m.ts);
  if (!gone) d.attachments = m.attachments.map((a) => ({ type: a.type, url: a.url }));
  if (m.cid !== undefined) d.cid = m.cid;
  if (st !== null) {
    if (gone) d.deleted = true;
    else if (st.edited !== undefined) d.edited = Long.fromNumber(st.edited);
    d.reactions = gone ? [] : st.reactions.filter((r) => r.users.length > 0)
      .map((r) => ({ emoji: r.emoji, count: r.users.length, users: [...r.users] }));
    d.v = Long.fromNumber(st.v);
  }
  return d;
}

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) {
    if (def === undefined) throw new Error(`--${name} is required`);
    return def;
  }
  return process.argv[i + 1];
}

// ---- the room --------------------------------------------------------------

/*
 * Generates n messages (and the events among the archived ones). Calls
 * sink(docs) with each batch of archived documents; returns the final
 * words of every message by index (null when deleted), their seqs, the
 * live messages (the last `live`) and the last seq of the archived part.
 */
async function buildRoom(room, n, live, seed, sink) {
  const { ranked, needles } = vocabulary();
  const g = new Generator(seed, ranked);
  // Needle i goes into 1 + (i mod 12) messages anywhere in the room.
  const planted = new Map();
  const prnd = mulberry32(seed ^ 0x5eed);
  const needleCount = {};
  needles.forEach((w, i) => {
    const k = 1 + (i % 12);
    needleCount[w] = k;
    for (let j = 0; j < k; j++) {
      const at = Math.floor(prnd() * n);
      if (!planted.has(at)) planted.set(at, []);
      planted.get(at).push(w);
    }
  });
  const finalWords = new Array(n);
  const seqOf = new Int32Array(n);
  const liveMsgs = [];
  const BATCH = 10000;
  const archived = n - live;
  // One message each minute or so, ending now: the archived part lies in
  // the past, the live part is sent now.
  const now = Date.now();
  let ts = now - archived * 31000;
  let seq = 0;
  let idx = 0;
  const events = { edit: 0, delete: 0, reaction: 0 };
  while (idx < archived) {
    const batch = [];   // {m, st, idx}
    while (batch.length < BATCH && idx < archived) {
      seq++;
      ts += 1 + Math.floor(g.rnd() * 60000);
      const x = g.rnd();
      // Events on an earlier message of the same batch (not deleted).
      const alive = batch.length > 0 ? batch[batch.length - 1 - Math.floor(g.rnd() * Math.min(batch.length, 200))] : null;
      if (alive !== null && !(alive.st && alive.st.deleted) && x < 0.017) {
        const st = alive.st ?? { reactions: [] };
        const kind = x < 0.005 ? 'edit' : x < 0.007 ? 'delete' : 'reaction';
        if (kind === 'edit') {
          st.content = g.text(planted.get(alive.idx) ?? []);
          st.edited = ts;
        } else if (kind === 'delete') {
          st.deleted = true;
        } else {
          const emoji = ['👍', '🎉', '❤️', '😂', '👀'][Math.floor(g.rnd() * 5)];
          const user = g.sender();
          let r = st.reactions.find((e) => e.emoji === emoji);
          if (r && r.users.includes(user)) {
            // Already there: chatd answers it as a duplicate, no seq.
            seq--;
            continue;
          }
          if (!r) st.reactions.push((r = { emoji, users: [] }));
          r.users.push(user);
        }
        st.v = seq;
        alive.st = st;
        events[kind]++;
        continue;
      }
      const m = {
        seq, sender: g.sender(), content: g.text(planted.get(idx) ?? []), ts,
        attachments: g.attachments(), cid: `c${seq.toString(36)}${Math.floor(g.rnd() * 1e6).toString(36)}`,
      };
      batch.push({ m, st: null, idx });
      seqOf[idx] = seq;
      idx++;
    }
    const docs = batch.map((b) => docShape(room, b.m, b.st));
    for (let i = 0; i < batch.length; i++) finalWords[batch[i].idx] = docs[i].words ?? null;
    await sink(docs);
  }
  const lastArchived = seq;
  // The live part: plain chats, sent by the bench; their seqs follow.
  while (idx < n) {
    const content = g.text(planted.get(idx) ?? []);
    liveMsgs.push({ content, attachments: g.attachments() });
    seqOf[idx] = ++seq;
    finalWords[idx] = words(content);
    idx++;
  }
  return { finalWords, seqOf, liveMsgs, lastArchived, events, ranked, needles, needleCount };
}

// ---- queries ---------------------------------------------------------------

const LIMIT = 20;
const KINDS = 'common,rare,two-words,prefix,accents';

/** Variants of an accented word as a user might type it. */
function variant(w, rnd) {
  const bare = w.normalize('NFD').replace(/\p{M}/gu, '').normalize('NFC');
  const forms = [w.toUpperCase(), bare, bare.toUpperCase(), w.toLowerCase(),
    bare[0].toUpperCase() + bare.slice(1).toLowerCase()];
  return forms[Math.floor(rnd() * forms.length)];
}

/*
 * The queries, then every query's answer: the newest LIMIT matching seqs
 * below `before`, `more` when an older one exists, the number of matches
 * in the whole room and in the messages above logLow (the Redis log).
 */
function makeQueries(room, total, nq, kinds, logLow, seed) {
  const { finalWords, seqOf, ranked, needles, needleCount } = room;
  const rnd = mulberry32(seed);
  const pick = (a) => a[Math.floor(rnd() * a.length)];
  const latinAccented = ACCENTED.filter((w) => LATIN.test(w) && w.normalize('NFD') !== w);
  const mid = ranked.slice(20, 600).filter((w) => !ACCENTED.includes(w));
  const gen = {
    // A word among the 15 most frequent.
    common: () => ({ q: pick(ranked.slice(0, 15)) }),
    // The same, paging deep: before a random seq of the room.
    'common-deep': () => ({ q: pick(ranked.slice(0, 15)), before: seqOf[1 + Math.floor(rnd() * (total - 1))] }),
    // A needle: in 1 to 12 messages of the whole room.
    rare: () => ({ q: pick(needles) }),
    // Two words of middling frequency (the second may also be a prefix).
    'two-words': () => ({ q: `${pick(mid)} ${pick(mid)}` }),
    // A prefix of 2 to 4 letters of a word of middling frequency, alone or
    // after a frequent word.
    prefix: () => {
      const w = pick(mid.filter((x) => [...x].length >= 5));
      const p = w.slice(0, 2 + Math.floor(rnd() * 3));
      return { q: rnd() < 0.5 ? p : `${pick(ranked.slice(0, 15))} ${p}` };
    },
    // An accented word typed with other accents or case.
    accents: () => ({ q: variant(pick(latinAccented), rnd) }),
  };
  const out = [];
  for (let i = 0; i < nq; i++) {
    const kind = kinds[i % kinds.length];
    out.push({ kind, ...gen[kind]() });
  }
  for (const q of out) {
    const qw = words(q.q);
    const before = q.before ?? Infinity;
    const hits = [];
    let all = 0;
    let inLog = 0;
    let logHits = 0;
    for (let i = total - 1; i >= 0; i--) {
      const w = finalWords[i];
      if (w === null || !matches(w, qw)) continue;
      all++;
      if (seqOf[i] >= logLow) inLog++;
      if (seqOf[i] >= logLow && seqOf[i] < before) logHits++;
      if (seqOf[i] < before && hits.length <= LIMIT) hits.push(seqOf[i]);
    }
    q.words = qw;
    q.limit = LIMIT;
    q.expect = hits.slice(0, LIMIT);
    q.more = hits.length > LIMIT;
    q.matches = all;
    q.matchesInLog = inLog;
    // Matches the Redis log holds below before: fewer than LIMIT + 1 and
    // chatd goes on into the archive.
    q.logHits = logHits;
    if (q.kind === 'rare') q.planted = needleCount[q.q];
  }
  return out;
}

// ---- commands --------------------------------------------------------------

async function generate() {
  const uri = arg('uri');
  const roomName = arg('room');
  const n = Number(arg('messages'));
  const live = Number(arg('live'));
  const nq = Number(arg('queries'));
  const out = arg('out');
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10000 });
  await client.connect();
  const col = client.db().collection('messages');
  // archive_do_indexes's indexes, made before the data as chatd makes them
  // on an empty collection.
  await client.db().command({
    createIndexes: 'messages',
    indexes: [
      { key: { roomId: 1, seq: 1 }, name: 'roomId_seq', unique: true },
      { key: { roomId: 1, timestamp: -1 }, name: 'roomId_timestamp' },
      { key: { sender: 1, timestamp: -1 }, name: 'sender_timestamp' },
      { key: { roomId: 1, v: -1 }, name: 'roomId_v' },
      { key: { roomId: 1, words: 1 }, name: 'roomId_words' },
    ],
  });
  const t0 = Date.now();
  let inserted = 0;
  let sample = null;
  const room = await buildRoom(roomName, n, live, 20261130, async (docs) => {
    sample ??= docs.find((d) => d.v === undefined && d.attachments.length > 0) ?? null;
    await col.insertMany(docs, { ordered: false });
    inserted += docs.length;
    if (inserted % 100000 === 0) {
      process.stderr.write(`bench-search: ${inserted} documents inserted (${((Date.now() - t0) / 1000).toFixed(0)} s)\n`);
    }
  });
  const insertSeconds = (Date.now() - t0) / 1000;
  await client.close();
  const logLow = room.lastArchived + 1;
  const total = room.seqOf.length;
  const kinds = arg('kinds', KINDS).split(',');
  const t1 = Date.now();
  const queries = makeQueries(room, total, nq, kinds, logLow, 1130);
  writeFileSync(join(out, 'live.json'), JSON.stringify(room.liveMsgs));
  writeFileSync(join(out, 'queries.json'), JSON.stringify(queries));
  const wordsPerMsg = room.finalWords.reduce((s, w) => s + (w ? w.length : 0), 0) / total;
  writeFileSync(join(out, 'meta.json'), JSON.stringify({
    room: roomName, messages: total, archivedDocuments: inserted, liveMessages: live,
    lastArchivedSeq: room.lastArchived, lastSeq: room.lastArchived + live, events: room.events,
    vocabulary: room.ranked.length, needles: room.needles.length, wordsPerMessage: wordsPerMsg,
    insertSeconds, bruteForceSeconds: (Date.now() - t1) / 1000,
    sampleDoc: sample && Object.keys(sample),
  }));
  console.log(JSON.stringify({ inserted, insertSeconds, lastArchived: room.lastArchived }));
}

async function redisOnly() {
  const roomName = arg('room');
  const n = Number(arg('messages'));
  const nq = Number(arg('queries'));
  const out = arg('out');
  const room = await buildRoom(roomName, n, n, 20261201, async () => {});
  const kinds = arg('kinds', KINDS).split(',');
  const queries = makeQueries(room, n, nq, kinds, 1, 1201);
  writeFileSync(join(out, 'live.json'), JSON.stringify(room.liveMsgs));
  writeFileSync(join(out, 'queries.json'), JSON.stringify(queries));
  writeFileSync(join(out, 'meta.json'), JSON.stringify({ room: roomName, messages: n }));
}

function vocabCmd() {
  // Every word as messages use it, 50 to a message, and once in capitals.
  const { ranked, needles } = vocabulary();
  const all = [...ranked, ...needles];
  const msgs = [];
  for (let i = 0; i < all.length; i += 50) {
    const part = all.slice(i, i + 50);
    msgs.push({ content: part.join(' ') });
    msgs.push({ content: part.map((w) => w.toUpperCase()).join(', ') });
  }
  writeFileSync(join(arg('out'), 'vocab.json'), JSON.stringify(msgs));
}

function typeOf(v) {
  if (v instanceof Long) return 'int64';
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'double';
  if (v instanceof ObjectId) return 'objectId';
  if (v instanceof Date) return 'date';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

async function check() {
  const uri = arg('uri');
  const roomName = arg('room');
  const wordsRoom = arg('words-room');
  const out = arg('out');
  const meta = JSON.parse(readFileSync(join(out, 'meta.json'), 'utf8'));
  const client = new MongoClient(uri, { serverSelectionTimeoutMS: 10000 });
  await client.connect();
  const col = client.db().collection('messages');
  const problems = [];
  // A chatd-written document (live part, with attachments) and a generated
  // one (archived part), read back the same way.
  const opts = { promoteLongs: false };
  const live = await col.find({ roomId: roomName, seq: { $gt: meta.lastArchivedSeq } }, opts).toArray();
  const byChatd = live.find((d) => d.attachments.length > 0 && d.cid !== undefined) ?? live[0];
  const generated = await col.findOne({ roomId: roomName, seq: { $lte: meta.lastArchivedSeq }, v: { $exists: false },
    'attachments.0': { $exists: true } }, opts);
  const shape = (d) => Object.entries(d).map(([k, v]) => `${k}:${typeOf(v)}`);
  const a = shape(byChatd);
  const b = shape(generated);
  if (a.join() !== b.join()) problems.push(`fields differ: chatd ${a.join(' ')} / generated ${b.join(' ')}`);
  const oid = archiveOid(roomName, Number(byChatd.seq));
  if (!oid.equals(byChatd._id)) problems.push(`_id of seq ${byChatd.seq}: chatd ${byChatd._id} / derived ${oid}`);
  let compared = 0;
  for (const d of live) {
    compared++;
    if (d.words.join('\n') !== words(d.content).join('\n')) {
      problems.push(`words of seq ${d.seq}: chatd ${JSON.stringify(d.words)} / script ${JSON.stringify(words(d.content))}`);
    }
  }
  // Documents of events: chatd's (bench-search.py events, in the words
  // room) against generated ones in the same state.
  const states = {
    edited: [{ seq: 1 }, { edited: { $exists: true }, 'reactions.0': { $exists: false } }],
    deleted: [{ seq: 2 }, { deleted: true }],
    reacted: [{ seq: 3 }, { edited: { $exists: false }, 'reactions.0': { $exists: true } }],
    'edited+reacted': [{ seq: 4 }, { edited: { $exists: true }, 'reactions.0': { $exists: true } }],
  };
  const eventShapes = {};
  for (const [name, [mine, theirs]] of Object.entries(states)) {
    const c = await col.findOne({ roomId: wordsRoom, ...mine }, opts);
    const g = await col.findOne({ roomId: roomName, seq: { $lte: meta.lastArchivedSeq }, ...theirs }, opts);
    if (c === null || g === null) {
      problems.push(`${name}: no document (chatd ${c !== null}, generated ${g !== null})`);
      continue;
    }
    eventShapes[name] = shape(c);
    if (shape(c).join() !== shape(g).join()) {
      problems.push(`${name} fields differ: chatd ${shape(c).join(' ')} / generated ${shape(g).join(' ')}`);
    }
  }
  const vocabDocs = await col.find({ roomId: wordsRoom, deleted: { $exists: false } }).toArray();
  let vocabWords = 0;
  for (const d of vocabDocs) {
    vocabWords += d.words.length;
    if (d.words.join('\n') !== words(d.content).join('\n')) {
      problems.push(`words of ${wordsRoom} seq ${d.seq}: chatd ${JSON.stringify(d.words)} / script ${JSON.stringify(words(d.content))}`);
    }
  }
  await client.close();
  const report = {
    ok: problems.length === 0 && live.length === meta.liveMessages && vocabDocs.length > 0,
    liveDocuments: live.length, wordsCompared: compared, vocabularyDocuments: vocabDocs.length,
    vocabularyWords: vocabWords, chatdFields: a, generatedFields: b, eventFields: eventShapes,
    problems: problems.slice(0, 20),
  };
  console.log(JSON.stringify(report));
  process.exit(report.ok ? 0 : 1);
}

const cmd = process.argv[2];
const cmds = { generate, 'redis-only': redisOnly, vocab: vocabCmd, check };
if (!cmds[cmd]) {
  console.error('usage: node bench-search-data.mjs generate|redis-only|vocab|check ... (see the header)');
  process.exit(2);
}
await cmds[cmd]();
