// Prints, as JSON, the archived messages of a room read back through the
// official MongoDB driver: [{seq, sender, content, ts, timestamp (ms), attachments, cid, _id,
// edited, deleted, reactions, v, fields (every field name the document has)}].
// Usage: node query.mjs MONGO_URI ROOM
import { MongoClient } from 'mongodb';

const [uri, room] = process.argv.slice(2);
const client = new MongoClient(uri, { serverSelectionTimeoutMS: 5000 });
try {
  await client.connect();
  const docs = await client.db().collection('messages').find({ roomId: room }).sort({ seq: 1 }).toArray();
  console.log(JSON.stringify(docs.map((d) => ({
    _id: String(d._id), seq: Number(d.seq), sender: d.sender, content: d.content,
    ts: d.ts === undefined ? null : Number(d.ts),
    timestamp: d.timestamp === undefined ? null : new Date(d.timestamp).getTime(),
    attachments: d.attachments, cid: d.cid ?? null,
    edited: d.edited === undefined ? null : Number(d.edited), deleted: d.deleted ?? null,
    reactions: d.reactions ?? null, v: d.v === undefined ? null : Number(d.v), e2e: d.e2e ?? null,
    fields: Object.keys(d),
  }))));
} finally {
  await client.close();
}
