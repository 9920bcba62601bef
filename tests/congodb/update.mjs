// Applies an update to every document of a collection matching a filter,
// both given as extended JSON, and prints how many it modified (tests use it
// to make documents look as an older chatd wrote them).
// Usage: node update.mjs MONGO_URI COLLECTION FILTER_JSON UPDATE_JSON
import { MongoClient } from 'mongodb';
import { EJSON } from 'bson';

const [uri, collection, filter, update] = process.argv.slice(2);
const client = new MongoClient(uri, { serverSelectionTimeoutMS: 5000 });
try {
  await client.connect();
  const r = await client.db().collection(collection).updateMany(EJSON.parse(filter), EJSON.parse(update));
  console.log(r.modifiedCount);
} finally {
  await client.close();
}
