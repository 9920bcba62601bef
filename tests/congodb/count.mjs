// Prints how many documents of a collection match a filter given as
// extended JSON ({"files_id": {"$oid": "..."}} names an ObjectId).
// Usage: node count.mjs MONGO_URI COLLECTION FILTER_JSON
import { MongoClient } from 'mongodb';
import { EJSON } from 'bson';

const [uri, collection, filter] = process.argv.slice(2);
const client = new MongoClient(uri, { serverSelectionTimeoutMS: 5000 });
try {
  await client.connect();
  console.log(await client.db().collection(collection).countDocuments(EJSON.parse(filter ?? '{}')));
} finally {
  await client.close();
}
