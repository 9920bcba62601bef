#include "archive.h"
#include "mongo.h"
#include "bus.h"
#include "hashslot.h"
#include "store.h"
#include "../../common/log.h"
#include "../../common/words.h"
#include "../../proto/proto.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <mongoc/mongoc.h>

#define ARCHIVE_STREAM "chatd:archive"
#define ARCHIVE_GROUP "archivers"
#define ARCHIVE_BATCH 500
/* A batch left pending this long by a consumer is taken over. */
#define ARCHIVE_CLAIM_IDLE_MS 10000
#define ARCHIVE_COLLECTION "messages"
/* In a cluster: queues read together into one MongoDB batch; slots whose
 * queue each worker measures per tick (a full pass every 64 s per worker;
 * the workers start their passes at different slots); and hot queues
 * measured per tick besides, so the depth gauge follows the busy ones. */
#define ARCHIVE_SLOTS_PER_READ 16
#define ARCHIVE_SWEEP_PER_TICK 256
/* A new worker's first pass is quick (4 s): it is most often the
 * replacement of one that crashed and left entries behind. */
#define ARCHIVE_FIRST_SWEEP_PER_TICK 4096
#define ARCHIVE_HOT_PER_TICK 64

typedef enum { JOB_WRITE, JOB_FIND, JOB_MAXSEQ, JOB_INDEXES, JOB_GET, JOB_SEARCH, JOB_WORDS } job_kind_t;

/* Documents the words backfill reads per tick (see archive_do_words). */
#define ARCHIVE_WORDS_BATCH 500

typedef struct {
    char *id;                   /* stream entry id */
    unsigned slot;              /* whose queue it came from (in a cluster) */
    char *room;
    int64_t seq;                /* the entry's own seq (a chat's, or an event's) */
    int64_t target;             /* the message it writes: seq for a chat */
    char *payload;              /* the chat payload (an event's: as it stands after it) */
    char *state;                /* an event's: the message's state record; NULL for a chat */
} entry_t;

typedef struct job_s {
    uv_work_t req;
    archive_t *a;
    job_kind_t kind;
    int ok;
    /* JOB_WRITE */
    entry_t *entries;
    size_t n;
    /* JOB_FIND / JOB_MAXSEQ */
    char room[160];
    int64_t before;
    int limit;
    char **found;
    int nfound;
    int64_t max_seq;
    archive_find_cb_t *find_cb;
    archive_seq_cb_t *seq_cb;
    /* JOB_GET: the message (before = its seq) as a payload and a state */
    archive_get_cb_t *get_cb;
    char *got_msg;
    char *got_state;
    int got_deleted;
    /* JOB_SEARCH: the query's words (owned) */
    words_t q;
    /* JOB_WORDS: where the batch starts (after) and ends (last) */
    bson_oid_t after, last;
    int have_after;
    int seen, updated;
    void *arg;
    char err[512];
} job_t;

struct archive_s {
    bus_t *bus;
    const bus_env_t *env;
    mongoc_uri_t *uri;
    mongoc_client_pool_t *pool;
    char db[128];
    int closing;
    int jobs;                   /* in flight */
    int busy;                   /* a read or a write of the queue is under way */
    int group_ready;
    int indexes_ready;
    int words_done;             /* the words backfill has seen every document */
    int words_busy;
    int words_have_after;
    bson_oid_t words_after;
    uint64_t words_total;
    uint64_t words_retry_ms;
    int mongo_up;
    int read_new;               /* next read takes new entries, not own pending */
    uint64_t next_claim_ms;
    uint64_t retry_at_ms;
    /* In a cluster, one queue per slot: hot marks those known to hold
     * entries (from this worker's sends, or found by the sweep). */
    int cluster;
    uint8_t hot[HASHSLOT_COUNT / 8];
    /* Slots noted hot again since their last read was sent: a read that
     * found nothing new must not clear those (see archive_on_slot_read). */
    uint8_t renoted[HASHSLOT_COUNT / 8];
    /* Slots whose read of their own pending entries, in the current
     * gather, found some: still work to do, so they stay hot. */
    uint8_t pending[HASHSLOT_COUNT / 8];
    unsigned hot_cursor;
    unsigned hot_measure_cursor;
    unsigned sweep_cursor;
    int first_sweep_left;       /* slots the first, quick pass has still to see */
    uint32_t *backlog;          /* per slot, as last measured */
    uint64_t backlog_sum;
    job_t *gather;              /* the batch the reads in flight fill */
    int gather_pending;
};

/* ---------------------------------------------------------------------- */
/* Thread-pool side: only these functions touch MongoDB. */

/* A deterministic ObjectId: 8 bytes of the room's hash, 4 of the seq. A
 * retried batch then rewrites the same documents instead of adding. */
static void archive_oid(const char *room, int64_t seq, bson_oid_t *oid)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = room; *p != '\0'; p++) {
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    }
    uint8_t b[12];
    for (int i = 0; i < 8; i++) {
        b[i] = (uint8_t)(h >> (56 - 8 * i));
    }
    uint32_t s = (uint32_t)seq;
    b[8] = (uint8_t)(s >> 24);
    b[9] = (uint8_t)(s >> 16);
    b[10] = (uint8_t)(s >> 8);
    b[11] = (uint8_t)s;
    bson_oid_init_from_data(oid, b);
}

/* Appends the words of text as the array "words". 0, or -1 when memory
 * ran out. */
static int archive_append_words(bson_t *doc, const char *text)
{
    words_t w;
    if (words_of(text, strlen(text), &w) != 0) {
        return -1;
    }
    bson_t arr;
    BSON_APPEND_ARRAY_BEGIN(doc, "words", &arr);
    int i = 0;
    for (const char *word = w.n > 0 ? w.buf : NULL; word != NULL; word = words_next(&w, word)) {
        char key[16];
        snprintf(key, sizeof(key), "%d", i++);
        BSON_APPEND_UTF8(&arr, key, word);
    }
    bson_append_array_end(doc, &arr);
    words_free(&w);
    return 0;
}

/* The stored document of one chat payload (see README, "Archive schema"). */
static int archive_doc(const entry_t *e, bson_t *doc, bson_oid_t *oid)
{
    cJSON *p = cJSON_Parse(e->payload);
    if (p == NULL) {
        return -1;
    }
    const cJSON *sender = cJSON_GetObjectItemCaseSensitive(p, "sender");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(p, "content");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(p, "ts");
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(p, "cid");
    const cJSON *att = cJSON_GetObjectItemCaseSensitive(p, "attachments");
    if (!cJSON_IsString(sender) || !cJSON_IsString(content) || !cJSON_IsNumber(ts)) {
        cJSON_Delete(p);
        return -1;
    }
    cJSON *st = e->state != NULL ? cJSON_Parse(e->state) : NULL;
    if (e->state != NULL && !cJSON_IsObject(st)) {
        cJSON_Delete(st);
        cJSON_Delete(p);
        return -1;
    }
    /* An event's state record overrides the payload: see store_event_lua. */
    const cJSON *deleted = cJSON_GetObjectItemCaseSensitive(st, "d");
    int gone = deleted != NULL && !cJSON_IsFalse(deleted) && !cJSON_IsNull(deleted);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(st, "c");
    const cJSON *a2 = cJSON_GetObjectItemCaseSensitive(st, "a");
    const cJSON *edited = cJSON_GetObjectItemCaseSensitive(st, "e");
    if (cJSON_IsString(c)) {
        content = c;
    }
    if (cJSON_IsArray(a2) || cJSON_IsObject(a2)) {
        att = a2;       /* Lua's cjson writes an empty list as {} */
    }
    archive_oid(e->room, e->target, oid);
    BSON_APPEND_OID(doc, "_id", oid);
    BSON_APPEND_UTF8(doc, "roomId", e->room);
    BSON_APPEND_INT64(doc, "seq", e->target);
    BSON_APPEND_UTF8(doc, "sender", sender->valuestring);
    if (!gone) {
        BSON_APPEND_UTF8(doc, "content", content->valuestring);
    }
    /* The words search looks for (words.h): the content as it stands,
     * none for a deleted message or an end-to-end encrypted room's
     * ciphertext. Rewritten with every state, so edits keep them true. */
    if (!gone && strncmp(e->room, "e2e:", 4) != 0 &&
        archive_append_words(doc, content->valuestring) != 0) {
        cJSON_Delete(st);
        cJSON_Delete(p);
        return -1;
    }
    BSON_APPEND_DATE_TIME(doc, "timestamp", (int64_t)ts->valuedouble);
    /* The wire's ts again as a plain integer: exact on every server,
     * whatever it does with dates. */
    BSON_APPEND_INT64(doc, "ts", (int64_t)ts->valuedouble);
    bson_t arr;
    const cJSON *a;
    int i = 0;
    if (!gone) {
        BSON_APPEND_ARRAY_BEGIN(doc, "attachments", &arr);
        cJSON_ArrayForEach(a, att) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(a, "type");
            const cJSON *u = cJSON_GetObjectItemCaseSensitive(a, "url");
            if (!cJSON_IsString(t) || !cJSON_IsString(u)) {
                continue;
            }
            char key[16];
            snprintf(key, sizeof(key), "%d", i++);
            bson_t item;
            bson_append_document_begin(&arr, key, -1, &item);
            BSON_APPEND_UTF8(&item, "type", t->valuestring);
            BSON_APPEND_UTF8(&item, "url", u->valuestring);
            /* A file attachment's own fields (proto has checked them). */
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(a, "name");
            const cJSON *mime = cJSON_GetObjectItemCaseSensitive(a, "mime");
            const cJSON *size = cJSON_GetObjectItemCaseSensitive(a, "size");
            if (cJSON_IsString(name)) {
                BSON_APPEND_UTF8(&item, "name", name->valuestring);
            }
            if (cJSON_IsString(mime)) {
                BSON_APPEND_UTF8(&item, "mime", mime->valuestring);
            }
            if (cJSON_IsNumber(size)) {
                BSON_APPEND_INT64(&item, "size", (int64_t)size->valuedouble);
            }
            bson_append_document_end(&arr, &item);
        }
        bson_append_array_end(doc, &arr);
    }
    if (cJSON_IsString(cid)) {
        BSON_APPEND_UTF8(doc, "cid", cid->valuestring);
    }
    /* An e2e: room's key id and iv, the last edit's when edited. */
    const cJSON *e2e = cJSON_GetObjectItemCaseSensitive(p, "e2e");
    const cJSON *st_e2e = cJSON_GetObjectItemCaseSensitive(st, "k");
    if (cJSON_IsObject(st_e2e)) {
        e2e = st_e2e;
    }
    const cJSON *kid = cJSON_GetObjectItemCaseSensitive(e2e, "keyId");
    const cJSON *iv = cJSON_GetObjectItemCaseSensitive(e2e, "iv");
    if (!gone && cJSON_IsString(kid) && cJSON_IsString(iv)) {
        bson_t sub;
        BSON_APPEND_DOCUMENT_BEGIN(doc, "e2e", &sub);
        BSON_APPEND_UTF8(&sub, "keyId", kid->valuestring);
        BSON_APPEND_UTF8(&sub, "iv", iv->valuestring);
        bson_append_document_end(doc, &sub);
    }
    if (st != NULL) {
        if (gone) {
            BSON_APPEND_BOOL(doc, "deleted", true);
        } else if (cJSON_IsNumber(edited)) {
            BSON_APPEND_INT64(doc, "edited", (int64_t)edited->valuedouble);
        }
        /* Every reacting user, not only the 20 a client is shown: a later
         * event on the message starts from this. */
        BSON_APPEND_ARRAY_BEGIN(doc, "reactions", &arr);
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(st, "r");
        if (gone || !cJSON_IsArray(r)) {
            r = NULL;
        }
        i = 0;
        cJSON_ArrayForEach(a, r) {
            const cJSON *emoji = cJSON_GetObjectItemCaseSensitive(a, "e");
            const cJSON *users = cJSON_GetObjectItemCaseSensitive(a, "u");
            if (!cJSON_IsString(emoji) || !cJSON_IsArray(users) || cJSON_GetArraySize(users) == 0) {
                continue;
            }
            char key[16];
            snprintf(key, sizeof(key), "%d", i++);
            bson_t item, list;
            bson_append_document_begin(&arr, key, -1, &item);
            BSON_APPEND_UTF8(&item, "emoji", emoji->valuestring);
            BSON_APPEND_INT32(&item, "count", cJSON_GetArraySize(users));
            BSON_APPEND_ARRAY_BEGIN(&item, "users", &list);
            const cJSON *who;
            int k = 0;
            cJSON_ArrayForEach(who, users) {
                const cJSON *name = cJSON_GetArrayItem(who, 0);
                if (cJSON_IsString(name)) {
                    char uk[16];
                    snprintf(uk, sizeof(uk), "%d", k++);
                    BSON_APPEND_UTF8(&list, uk, name->valuestring);
                }
            }
            bson_append_array_end(&item, &list);
            bson_append_document_end(&arr, &item);
        }
        bson_append_array_end(doc, &arr);
        BSON_APPEND_INT64(doc, "v", e->seq);
    }
    cJSON_Delete(st);
    cJSON_Delete(p);
    return 0;
}

/*
 * An event rewrites its message's document with the state after it, and
 * only over an older state: the filter wants the document's v (the seq of
 * the event it holds) below this one's. Entries of one room may be written
 * out of order (two workers, a retried batch), and this keeps the newest
 * state whatever the order, a delete included. The insert goes first and
 * adds the document when there is none yet, or fails on the key, which
 * counts as done; the update then finds the document whatever the insert
 * met. The other way round, another worker's insert (of the chat itself,
 * say) landing between an update that found nothing and this insert left
 * the document without this state for good. Returns the number of
 * operations queued.
 */
static int archive_queue_state(mongoc_bulk_operation_t *bulk, const entry_t *e, bson_t *doc,
                               const bson_oid_t *oid)
{
    bson_error_t err;
    int queued = 0;
    bson_t *sel = BCON_NEW("_id", BCON_OID(oid), "$or", "[",
                           "{", "v", "{", "$lt", BCON_INT64(e->seq), "}", "}",
                           "{", "v", "{", "$exists", BCON_BOOL(false), "}", "}", "]");
    bson_t set = BSON_INITIALIZER;
    bson_iter_t it;
    if (bson_iter_init(&it, doc)) {
        while (bson_iter_next(&it)) {
            if (strcmp(bson_iter_key(&it), "_id") != 0) {
                bson_append_iter(&set, NULL, 0, &it);
            }
        }
    }
    bson_t *upd = bson_new();
    BSON_APPEND_DOCUMENT(upd, "$set", &set);
    bson_iter_t d;
    if (bson_iter_init_find(&d, doc, "deleted")) {
        bson_t *unset = BCON_NEW("content", BCON_UTF8(""), "attachments", BCON_UTF8(""), "edited", BCON_UTF8(""),
                                 "words", BCON_UTF8(""), "e2e", BCON_UTF8(""));
        BSON_APPEND_DOCUMENT(upd, "$unset", unset);
        bson_destroy(unset);
    }
    if (mongoc_bulk_operation_insert_with_opts(bulk, doc, NULL, &err)) {
        queued++;
    }
    if (mongoc_bulk_operation_update_one_with_opts(bulk, sel, upd, NULL, &err)) {
        queued++;
    }
    bson_destroy(upd);
    bson_destroy(&set);
    bson_destroy(sel);
    return queued;
}

/* 1 when a failed bulk write failed only on duplicate keys (11000): the
 * documents were stored by an earlier try of the same batch. */
static int archive_only_duplicates(const bson_t *reply)
{
    bson_iter_t it, errs;
    int seen = 0;
    if (bson_iter_init_find(&it, reply, "writeConcernErrors") && BSON_ITER_HOLDS_ARRAY(&it)) {
        bson_iter_t wce;
        if (bson_iter_recurse(&it, &wce) && bson_iter_next(&wce)) {
            return 0;
        }
    }
    if (!bson_iter_init_find(&it, reply, "writeErrors") || !BSON_ITER_HOLDS_ARRAY(&it) ||
        !bson_iter_recurse(&it, &errs)) {
        return 0;
    }
    while (bson_iter_next(&errs)) {
        bson_iter_t e;
        if (!BSON_ITER_HOLDS_DOCUMENT(&errs) || !bson_iter_recurse(&errs, &e) ||
            !bson_iter_find(&e, "code") || bson_iter_as_int64(&e) != 11000) {
            return 0;
        }
        seen = 1;
    }
    return seen;
}

/*
 * One unordered insert of the whole batch: a few round trips for thousands
 * of messages. The _id is derived from room and seq, so a retried batch can
 * only hit duplicate keys on what it stored before, which counts as stored;
 * that uniqueness is the primary key's, which every server enforces.
 */
static void archive_do_write(job_t *j, mongoc_collection_t *col)
{
    bson_t *opts = BCON_NEW("ordered", BCON_BOOL(false));
    mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(col, opts);
    bson_destroy(opts);
    bson_error_t err;
    size_t queued = 0;
    for (size_t i = 0; i < j->n; i++) {
        bson_t doc = BSON_INITIALIZER;
        bson_oid_t oid;
        if (archive_doc(&j->entries[i], &doc, &oid) != 0) {
            /* Not ours to fix: it is acknowledged and skipped, loudly. */
            snprintf(j->err, sizeof(j->err), "malformed payload for %s seq %" PRId64,
                     j->entries[i].room, j->entries[i].seq);
            bson_destroy(&doc);
            continue;
        }
        if (j->entries[i].state != NULL) {
            queued += (size_t)archive_queue_state(bulk, &j->entries[i], &doc, &oid);
        } else if (mongoc_bulk_operation_insert_with_opts(bulk, &doc, NULL, &err)) {
            queued++;
        }
        bson_destroy(&doc);
    }
    bson_t reply;
    j->ok = 1;
    if (queued > 0) {
        if (!mongoc_bulk_operation_execute(bulk, &reply, &err) && !archive_only_duplicates(&reply)) {
            j->ok = 0;
            snprintf(j->err, sizeof(j->err), "%s", err.message);
        }
        bson_destroy(&reply);
    }
    mongoc_bulk_operation_destroy(bulk);
}

/* A document's reactions as history shows them: {emoji, count, users},
 * at most 20 names each (the document keeps them all). */
static void archive_reactions(bson_iter_t *it, cJSON *out)
{
    bson_iter_t ri;
    if (!bson_iter_recurse(it, &ri)) {
        return;
    }
    while (bson_iter_next(&ri)) {
        bson_iter_t fi;
        const char *emoji = NULL;
        cJSON *users = cJSON_CreateArray();
        int count = 0;
        if (users == NULL) {
            return;
        }
        if (BSON_ITER_HOLDS_DOCUMENT(&ri) && bson_iter_recurse(&ri, &fi)) {
            while (bson_iter_next(&fi)) {
                if (strcmp(bson_iter_key(&fi), "emoji") == 0 && BSON_ITER_HOLDS_UTF8(&fi)) {
                    emoji = bson_iter_utf8(&fi, NULL);
                } else if (strcmp(bson_iter_key(&fi), "users") == 0 && BSON_ITER_HOLDS_ARRAY(&fi)) {
                    bson_iter_t ui;
                    if (bson_iter_recurse(&fi, &ui)) {
                        while (bson_iter_next(&ui)) {
                            if (!BSON_ITER_HOLDS_UTF8(&ui)) {
                                continue;
                            }
                            if (count++ < PROTO_REACTIONS_MAX) {
                                cJSON_AddItemToArray(users, cJSON_CreateString(bson_iter_utf8(&ui, NULL)));
                            }
                        }
                    }
                }
            }
        }
        cJSON *r = emoji != NULL && count > 0 ? cJSON_CreateObject() : NULL;
        if (r == NULL) {
            cJSON_Delete(users);
            continue;
        }
        cJSON_AddStringToObject(r, "emoji", emoji);
        cJSON_AddNumberToObject(r, "count", count);
        cJSON_AddItemToObject(r, "users", users);
        cJSON_AddItemToArray(out, r);
    }
}

/* Turns a stored document back into the chat payload clients know. */
static char *archive_payload(const bson_t *d)
{
    bson_iter_t it;
    cJSON *p = cJSON_CreateObject();
    if (p == NULL) {
        return NULL;
    }
    const char *room = "", *sender = "", *content = "", *cid = NULL;
    const char *e2e_key = NULL, *e2e_iv = NULL;
    int64_t seq = 0, ts = 0, edited = -1;
    int deleted = 0;
    cJSON *att = cJSON_CreateArray();
    cJSON *reactions = cJSON_CreateArray();
    if (bson_iter_init(&it, d)) {
        while (bson_iter_next(&it)) {
            const char *k = bson_iter_key(&it);
            if (strcmp(k, "roomId") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
                room = bson_iter_utf8(&it, NULL);
            } else if (strcmp(k, "seq") == 0) {
                seq = bson_iter_as_int64(&it);
            } else if (strcmp(k, "sender") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
                sender = bson_iter_utf8(&it, NULL);
            } else if (strcmp(k, "content") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
                content = bson_iter_utf8(&it, NULL);
            } else if (strcmp(k, "cid") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
                cid = bson_iter_utf8(&it, NULL);
            } else if (strcmp(k, "ts") == 0 && (BSON_ITER_HOLDS_INT64(&it) || BSON_ITER_HOLDS_INT32(&it) ||
                                                 BSON_ITER_HOLDS_DOUBLE(&it))) {
                ts = bson_iter_as_int64(&it);
            } else if (strcmp(k, "edited") == 0 && (BSON_ITER_HOLDS_INT64(&it) || BSON_ITER_HOLDS_INT32(&it) ||
                                                     BSON_ITER_HOLDS_DOUBLE(&it))) {
                edited = bson_iter_as_int64(&it);
            } else if (strcmp(k, "deleted") == 0 && BSON_ITER_HOLDS_BOOL(&it)) {
                deleted = bson_iter_bool(&it);
            } else if (strcmp(k, "reactions") == 0 && BSON_ITER_HOLDS_ARRAY(&it) && reactions != NULL) {
                archive_reactions(&it, reactions);
            } else if (strcmp(k, "timestamp") == 0 && BSON_ITER_HOLDS_DATE_TIME(&it) && ts == 0) {
                ts = bson_iter_date_time(&it);
            } else if (strcmp(k, "e2e") == 0 && BSON_ITER_HOLDS_DOCUMENT(&it)) {
                bson_iter_t ei;
                if (bson_iter_recurse(&it, &ei)) {
                    while (bson_iter_next(&ei)) {
                        if (strcmp(bson_iter_key(&ei), "keyId") == 0 && BSON_ITER_HOLDS_UTF8(&ei)) {
                            e2e_key = bson_iter_utf8(&ei, NULL);
                        } else if (strcmp(bson_iter_key(&ei), "iv") == 0 && BSON_ITER_HOLDS_UTF8(&ei)) {
                            e2e_iv = bson_iter_utf8(&ei, NULL);
                        }
                    }
                }
            } else if (strcmp(k, "attachments") == 0 && BSON_ITER_HOLDS_ARRAY(&it) && att != NULL) {
                bson_iter_t ai;
                if (bson_iter_recurse(&it, &ai)) {
                    while (bson_iter_next(&ai)) {
                        bson_iter_t fi;
                        const char *type = NULL, *url = NULL, *name = NULL, *mime = NULL;
                        int64_t size = -1;
                        if (BSON_ITER_HOLDS_DOCUMENT(&ai) && bson_iter_recurse(&ai, &fi)) {
                            while (bson_iter_next(&fi)) {
                                const char *fk = bson_iter_key(&fi);
                                if (BSON_ITER_HOLDS_UTF8(&fi)) {
                                    const char *v = bson_iter_utf8(&fi, NULL);
                                    if (strcmp(fk, "type") == 0) {
                                        type = v;
                                    } else if (strcmp(fk, "url") == 0) {
                                        url = v;
                                    } else if (strcmp(fk, "name") == 0) {
                                        name = v;
                                    } else if (strcmp(fk, "mime") == 0) {
                                        mime = v;
                                    }
                                } else if (strcmp(fk, "size") == 0 && BSON_ITER_HOLDS_NUMBER(&fi)) {
                                    size = bson_iter_as_int64(&fi);
                                }
                            }
                        }
                        cJSON *o = cJSON_CreateObject();
                        if (o != NULL && type != NULL && url != NULL) {
                            cJSON_AddStringToObject(o, "type", type);
                            cJSON_AddStringToObject(o, "url", url);
                            if (name != NULL) {
                                cJSON_AddStringToObject(o, "name", name);
                            }
                            if (size >= 0) {
                                cJSON_AddNumberToObject(o, "size", (double)size);
                            }
                            if (mime != NULL) {
                                cJSON_AddStringToObject(o, "mime", mime);
                            }
                            cJSON_AddItemToArray(att, o);
                        } else {
                            cJSON_Delete(o);
                        }
                    }
                }
            }
        }
    }
    /* The same field order as the live payload. */
    cJSON_AddStringToObject(p, "room", room);
    cJSON_AddNumberToObject(p, "seq", (double)seq);
    cJSON_AddNumberToObject(p, "ts", (double)ts);
    cJSON_AddStringToObject(p, "sender", sender);
    cJSON_AddStringToObject(p, "content", deleted ? "" : content);
    if (att != NULL) {
        if (deleted) {
            cJSON_Delete(att);
            att = cJSON_CreateArray();
        }
        cJSON_AddItemToObject(p, "attachments", att);
    }
    if (!deleted && e2e_key != NULL && e2e_iv != NULL) {
        cJSON *e = cJSON_AddObjectToObject(p, "e2e");
        cJSON_AddStringToObject(e, "keyId", e2e_key);
        cJSON_AddStringToObject(e, "iv", e2e_iv);
    }
    if (cid != NULL) {
        cJSON_AddStringToObject(p, "cid", cid);
    }
    if (deleted) {
        cJSON_AddTrueToObject(p, "deleted");
    } else if (edited >= 0) {
        cJSON_AddNumberToObject(p, "edited", (double)edited);
    }
    if (reactions != NULL) {
        if (deleted) {
            cJSON_Delete(reactions);
            reactions = cJSON_CreateArray();
        }
        cJSON_AddItemToObject(p, "reactions", reactions);
    }
    char *s = cJSON_PrintUnformatted(p);
    cJSON_Delete(p);
    return s;
}

static void archive_max_event(job_t *j, mongoc_collection_t *col)
{
    bson_t *filter = BCON_NEW("roomId", BCON_UTF8(j->room), "v", "{", "$exists", BCON_BOOL(true), "}");
    bson_t *opts = BCON_NEW("sort", "{", "v", BCON_INT32(-1), "}", "limit", BCON_INT64(1));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, filter, opts, NULL);
    const bson_t *d;
    bson_error_t err;
    if (mongoc_cursor_next(cur, &d)) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, d, "v") && bson_iter_as_int64(&it) > j->max_seq) {
            j->max_seq = bson_iter_as_int64(&it);
        }
    }
    if (mongoc_cursor_error(cur, &err)) {
        j->ok = 0;
        snprintf(j->err, sizeof(j->err), "%s", err.message);
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(filter);
    bson_destroy(opts);
}

/* Reads up to j->limit documents of filter, newest first, into j->found
 * as payloads (see archive_payload). */
static void archive_fetch(job_t *j, mongoc_collection_t *col, const bson_t *filter)
{
    bson_t *opts = BCON_NEW("sort", "{", "seq", BCON_INT32(-1), "}", "limit", BCON_INT64(j->limit));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, filter, opts, NULL);
    j->found = calloc((size_t)j->limit, sizeof(char *));
    const bson_t *d;
    int64_t last = INT64_MAX;
    while (j->found != NULL && j->nfound < j->limit && mongoc_cursor_next(cur, &d)) {
        bson_iter_t it;
        int64_t seq = bson_iter_init_find(&it, d, "seq") ? bson_iter_as_int64(&it) : 0;
        /* A duplicate document (a server without unique indexes, a
         * collision) must not show twice: keep strictly descending seqs. */
        if (seq >= last) {
            continue;
        }
        last = seq;
        char *s = archive_payload(d);
        if (s != NULL) {
            j->found[j->nfound++] = s;
        }
    }
    bson_error_t err;
    j->ok = j->found != NULL && !mongoc_cursor_error(cur, &err);
    if (!j->ok && j->found != NULL) {
        snprintf(j->err, sizeof(j->err), "%s", err.message);
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
}

/*
 * Messages of the room holding every query word, newest first. Words are
 * an indexed array ({roomId, words}); the last query word of 2 or more
 * characters may also start a word: a range on one element of the array.
 */
static void archive_do_search(job_t *j, mongoc_collection_t *col)
{
    bson_t filter = BSON_INITIALIZER, and, all, cond, range, seq;
    BSON_APPEND_UTF8(&filter, "roomId", j->room);
    if (j->before >= 0) {
        BSON_APPEND_DOCUMENT_BEGIN(&filter, "seq", &seq);
        BSON_APPEND_INT64(&seq, "$lt", j->before);
        bson_append_document_end(&filter, &seq);
    }
    BSON_APPEND_ARRAY_BEGIN(&filter, "$and", &and);
    int k = 0;
    char key[16];
    const char *last = NULL;
    for (const char *w = j->q.buf; w != NULL; w = words_next(&j->q, w)) {
        last = w;
    }
    int prefix = last != NULL && words_chars(last) >= 2;
    for (const char *w = j->q.buf; w != NULL; w = words_next(&j->q, w)) {
        snprintf(key, sizeof(key), "%d", k++);
        bson_append_document_begin(&and, key, -1, &cond);
        if (w == last && prefix) {
            /* Everything that starts with w sorts from w up to w followed
             * by the highest code point (bytewise, as the server compares). */
            char upto[WORDS_QUERY_BYTES * 4 + 8];
            snprintf(upto, sizeof(upto), "%s\xF4\x8F\xBF\xBF", w);
            BSON_APPEND_DOCUMENT_BEGIN(&cond, "words", &all);
            BSON_APPEND_DOCUMENT_BEGIN(&all, "$elemMatch", &range);
            BSON_APPEND_UTF8(&range, "$gte", w);
            BSON_APPEND_UTF8(&range, "$lt", upto);
            bson_append_document_end(&all, &range);
            bson_append_document_end(&cond, &all);
        } else {
            BSON_APPEND_UTF8(&cond, "words", w);
        }
        bson_append_document_end(&and, &cond);
    }
    bson_append_array_end(&filter, &and);
    archive_fetch(j, col, &filter);
    bson_destroy(&filter);
}

static void archive_do_find(job_t *j, mongoc_collection_t *col)
{
    bson_t *filter = j->before >= 0
        ? BCON_NEW("roomId", BCON_UTF8(j->room), "seq", "{", "$lt", BCON_INT64(j->before), "}")
        : BCON_NEW("roomId", BCON_UTF8(j->room));
    archive_fetch(j, col, filter);
    bson_destroy(filter);
    if (j->kind == JOB_MAXSEQ) {
        j->max_seq = 0;
        if (j->ok && j->nfound > 0) {
            cJSON *p = cJSON_Parse(j->found[0]);
            const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "seq");
            j->max_seq = cJSON_IsNumber(s) ? (int64_t)s->valuedouble : 0;
            cJSON_Delete(p);
        }
        /* Edits, deletes and reactions take seqs too, and the last of a
         * room may be above its last message: the documents keep theirs. */
        if (j->ok) {
            archive_max_event(j, col);
        }
    }
}

/*
 * One message for a room event on it: its payload (content as it stands)
 * and a state record in store_event_lua's shape, with every reacting user
 * (each with the document's v and ts: when exactly each reacted is not
 * kept in the archive).
 */
static void archive_do_get(job_t *j, mongoc_collection_t *col)
{
    bson_t *filter = BCON_NEW("roomId", BCON_UTF8(j->room), "seq", BCON_INT64(j->before));
    bson_t *opts = BCON_NEW("limit", BCON_INT64(1));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, filter, opts, NULL);
    const bson_t *d;
    bson_error_t err;
    j->ok = 1;
    if (mongoc_cursor_next(cur, &d)) {
        bson_iter_t it;
        int64_t v = bson_iter_init_find(&it, d, "v") ? bson_iter_as_int64(&it) : j->before;
        int64_t edited = bson_iter_init_find(&it, d, "edited") ? bson_iter_as_int64(&it) : -1;
        j->got_deleted = bson_iter_init_find(&it, d, "deleted") && BSON_ITER_HOLDS_BOOL(&it) &&
                         bson_iter_bool(&it);
        char *payload = archive_payload(d);
        cJSON *p = payload != NULL ? cJSON_Parse(payload) : NULL;
        cJSON *st = cJSON_CreateObject();
        cJSON *r = NULL;
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(p, "ts");
        int ok = p != NULL && st != NULL && (r = cJSON_AddArrayToObject(st, "r")) != NULL &&
                 cJSON_AddArrayToObject(st, "v") != NULL;
        if (ok && edited >= 0) {
            ok = cJSON_AddNumberToObject(st, "e", (double)edited) != NULL;
        }
        /* The payload keeps the current content; reactions go to the state
         * with every user, which archive_payload would cut to 20. */
        cJSON_DeleteItemFromObjectCaseSensitive(p, "reactions");
        cJSON_DeleteItemFromObjectCaseSensitive(p, "edited");
        if (ok && bson_iter_init_find(&it, d, "reactions") && BSON_ITER_HOLDS_ARRAY(&it)) {
            bson_iter_t ri;
            if (bson_iter_recurse(&it, &ri)) {
                while (ok && bson_iter_next(&ri)) {
                    bson_iter_t fi, ui;
                    const char *emoji = NULL;
                    cJSON *users = cJSON_CreateArray();
                    if (users == NULL) {
                        ok = 0;
                        break;
                    }
                    if (BSON_ITER_HOLDS_DOCUMENT(&ri) && bson_iter_recurse(&ri, &fi)) {
                        while (bson_iter_next(&fi)) {
                            if (strcmp(bson_iter_key(&fi), "emoji") == 0 && BSON_ITER_HOLDS_UTF8(&fi)) {
                                emoji = bson_iter_utf8(&fi, NULL);
                            } else if (strcmp(bson_iter_key(&fi), "users") == 0 && BSON_ITER_HOLDS_ARRAY(&fi) &&
                                       bson_iter_recurse(&fi, &ui)) {
                                while (bson_iter_next(&ui)) {
                                    if (BSON_ITER_HOLDS_UTF8(&ui)) {
                                        cJSON *u = cJSON_CreateArray();
                                        cJSON_AddItemToArray(u, cJSON_CreateString(bson_iter_utf8(&ui, NULL)));
                                        cJSON_AddItemToArray(u, cJSON_CreateNumber((double)v));
                                        cJSON_AddItemToArray(u, cJSON_CreateNumber(cJSON_IsNumber(ts) ? ts->valuedouble : 0));
                                        cJSON_AddItemToArray(users, u);
                                    }
                                }
                            }
                        }
                    }
                    cJSON *e = emoji != NULL && cJSON_GetArraySize(users) > 0 ? cJSON_CreateObject() : NULL;
                    if (e == NULL) {
                        cJSON_Delete(users);
                        continue;
                    }
                    cJSON_AddStringToObject(e, "e", emoji);
                    cJSON_AddItemToObject(e, "u", users);
                    cJSON_AddItemToArray(r, e);
                }
            }
        }
        if (ok) {
            j->got_msg = cJSON_PrintUnformatted(p);
            j->got_state = cJSON_PrintUnformatted(st);
            ok = j->got_msg != NULL && j->got_state != NULL;
        }
        if (!ok) {
            j->ok = 0;
            snprintf(j->err, sizeof(j->err), "out of memory reading seq %" PRId64, j->before);
        }
        cJSON_Delete(p);
        cJSON_Delete(st);
        free(payload);
    }
    if (mongoc_cursor_error(cur, &err)) {
        j->ok = 0;
        snprintf(j->err, sizeof(j->err), "%s", err.message);
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(filter);
    bson_destroy(opts);
}

static void archive_do_indexes(job_t *j, mongoc_collection_t *col)
{
    bson_error_t err;
    bson_t *cmd = BCON_NEW("createIndexes", BCON_UTF8(ARCHIVE_COLLECTION), "indexes", "[",
                           "{", "key", "{", "roomId", BCON_INT32(1), "seq", BCON_INT32(1), "}",
                           "name", BCON_UTF8("roomId_seq"), "unique", BCON_BOOL(true), "}",
                           "{", "key", "{", "roomId", BCON_INT32(1), "timestamp", BCON_INT32(-1), "}",
                           "name", BCON_UTF8("roomId_timestamp"), "}",
                           "{", "key", "{", "sender", BCON_INT32(1), "timestamp", BCON_INT32(-1), "}",
                           "name", BCON_UTF8("sender_timestamp"), "}",
                           "{", "key", "{", "roomId", BCON_INT32(1), "v", BCON_INT32(-1), "}",
                           "name", BCON_UTF8("roomId_v"), "}",
                           "{", "key", "{", "roomId", BCON_INT32(1), "words", BCON_INT32(1), "}",
                           "name", BCON_UTF8("roomId_words"), "}",
                           "]");
    j->ok = mongoc_collection_write_command_with_opts(col, cmd, NULL, NULL, &err);
    if (!j->ok) {
        snprintf(j->err, sizeof(j->err), "%s", err.message);
    }
    bson_destroy(cmd);
}

/*
 * The words backfill: documents archived before search existed have no
 * "words", and search could never find them. One batch, in _id order from
 * where the last one ended: each document still without words and not
 * deleted gets the words of its content, unless an edit changed the
 * content meanwhile (the update is filtered on the content it read).
 */
static void archive_do_words(job_t *j, mongoc_collection_t *col)
{
    bson_error_t err;
    bson_t *filter = BCON_NEW("words", "{", "$exists", BCON_BOOL(false), "}",
                              "deleted", "{", "$ne", BCON_BOOL(true), "}");
    if (j->have_after) {
        bson_t gt;
        BSON_APPEND_DOCUMENT_BEGIN(filter, "_id", &gt);
        BSON_APPEND_OID(&gt, "$gt", &j->after);
        bson_append_document_end(filter, &gt);
    }
    bson_t *opts = BCON_NEW("sort", "{", "_id", BCON_INT32(1), "}", "limit", BCON_INT64(ARCHIVE_WORDS_BATCH),
                            "projection", "{", "roomId", BCON_INT32(1), "content", BCON_INT32(1), "}");
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, filter, opts, NULL);
    const bson_t *d;
    j->ok = 1;
    while (j->ok && mongoc_cursor_next(cur, &d)) {
        bson_iter_t it;
        const char *room = NULL, *content = NULL;
        const bson_oid_t *id = NULL;
        if (bson_iter_init(&it, d)) {
            while (bson_iter_next(&it)) {
                const char *k = bson_iter_key(&it);
                if (strcmp(k, "_id") == 0 && BSON_ITER_HOLDS_OID(&it)) {
                    id = bson_iter_oid(&it);
                } else if (strcmp(k, "roomId") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
                    room = bson_iter_utf8(&it, NULL);
                } else if (strcmp(k, "content") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
                    content = bson_iter_utf8(&it, NULL);
                }
            }
        }
        if (id == NULL) {
            continue;
        }
        bson_oid_copy(id, &j->last);
        j->seen++;
        if (room == NULL || content == NULL || strncmp(room, "e2e:", 4) == 0) {
            continue;       /* encrypted rooms are never searched */
        }
        bson_t *match = BCON_NEW("_id", BCON_OID(id), "content", BCON_UTF8(content),
                                 "words", "{", "$exists", BCON_BOOL(false), "}");
        bson_t update = BSON_INITIALIZER, set;
        BSON_APPEND_DOCUMENT_BEGIN(&update, "$set", &set);
        int built = archive_append_words(&set, content) == 0;
        bson_append_document_end(&update, &set);
        if (!built) {
            snprintf(j->err, sizeof(j->err), "out of memory");
            j->ok = 0;
        } else if (!mongoc_collection_update_one(col, match, &update, NULL, NULL, &err)) {
            snprintf(j->err, sizeof(j->err), "%s", err.message);
            j->ok = 0;
        } else {
            j->updated++;
        }
        bson_destroy(&update);
        bson_destroy(match);
    }
    if (mongoc_cursor_error(cur, &err)) {
        snprintf(j->err, sizeof(j->err), "%s", err.message);
        j->ok = 0;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(opts);
    bson_destroy(filter);
}

static void archive_on_work(uv_work_t *req)
{
    job_t *j = req->data;
    mongoc_client_t *client = mongoc_client_pool_pop(j->a->pool);
    mongoc_collection_t *col = mongoc_client_get_collection(client, j->a->db, ARCHIVE_COLLECTION);
    switch (j->kind) {
    case JOB_WRITE:
        archive_do_write(j, col);
        break;
    case JOB_FIND:
    case JOB_MAXSEQ:
        archive_do_find(j, col);
        break;
    case JOB_INDEXES:
        archive_do_indexes(j, col);
        break;
    case JOB_GET:
        archive_do_get(j, col);
        break;
    case JOB_SEARCH:
        archive_do_search(j, col);
        break;
    case JOB_WORDS:
        archive_do_words(j, col);
        break;
    }
    mongoc_collection_destroy(col);
    mongoc_client_pool_push(j->a->pool, client);
}

/* ---------------------------------------------------------------------- */
/* Loop side. */

static void archive_set_up(archive_t *a, int up, const char *why)
{
    if (up != a->mongo_up) {
        if (up) {
            log_info("event=mongo_up");
        } else {
            log_warn("event=mongo_down err=\"%s\"", why);
        }
    }
    a->mongo_up = up;
    __atomic_store_n(&a->env->metrics->mongo_up, up, __ATOMIC_RELAXED);
}

static void job_free(job_t *j)
{
    for (size_t i = 0; i < j->n; i++) {
        free(j->entries[i].id);
        free(j->entries[i].room);
        free(j->entries[i].payload);
        free(j->entries[i].state);
    }
    free(j->entries);
    for (int i = 0; i < j->nfound; i++) {
        free(j->found[i]);
    }
    free(j->found);
    free(j->got_msg);
    free(j->got_state);
    words_free(&j->q);
    free(j);
}

static void archive_pump(archive_t *a);

/* The queue of slot (in a cluster) or the one queue, in buf. */
static const char *archive_queue_of(const archive_t *a, unsigned slot, char *buf, size_t len)
{
    if (!a->cluster) {
        return ARCHIVE_STREAM;
    }
    store_slot_queue(slot, buf, len);
    return buf;
}

/* XACK then XDEL the written entries of one queue (entries [from, to)). */
static void archive_ack(archive_t *a, job_t *j, size_t from, size_t to)
{
    char qbuf[64];
    const char *queue = archive_queue_of(a, j->entries[from].slot, qbuf, sizeof(qbuf));
    size_t argc = 3 + (to - from);
    const char **argv = calloc(argc, sizeof(*argv));
    size_t *lens = calloc(argc, sizeof(*lens));
    if (argv != NULL && lens != NULL) {
        for (size_t i = from; i < to; i++) {
            argv[3 + i - from] = j->entries[i].id;
            lens[3 + i - from] = strlen(j->entries[i].id);
        }
        argv[0] = "XACK";
        argv[1] = queue;
        argv[2] = ARCHIVE_GROUP;
        for (int i = 0; i < 3; i++) {
            lens[i] = strlen(argv[i]);
        }
        store_call(a->bus, NULL, NULL, (int)argc, argv, lens);
        /* XDEL takes the same ids after the stream name alone. */
        argv[1] = "XDEL";
        argv[2] = queue;
        lens[1] = 4;
        lens[2] = strlen(queue);
        store_call(a->bus, NULL, NULL, (int)argc - 1, argv + 1, lens + 1);
    }
    free(argv);
    free(lens);
}

/* Advances the archived cursors of the rooms of entries [from, to) of one
 * queue. Sent after their XACK on the same link (the queue's node), so
 * Redis no longer counts them as pending. */
static void archive_advance(archive_t *a, job_t *j, size_t from, size_t to)
{
    char qbuf[64];
    const char *queue = archive_queue_of(a, j->entries[from].slot, qbuf, sizeof(qbuf));
    /* A cursor not raised (no memory, Redis away) is raised by the room's
     * next batch; until then the log only keeps a little more. */
    store_archived_t *e = calloc(to - from, sizeof(*e));
    if (e == NULL) {
        return;
    }
    for (size_t i = from; i < to; i++) {
        e[i - from] = (store_archived_t){ j->entries[i].room, j->entries[i].id, j->entries[i].seq };
    }
    (void)store_set_archived(a->bus, queue, e, to - from);
    free(e);
}

/* Acknowledges the written entries and advances their rooms' cursors,
 * queue by queue (a batch holds runs of entries from one queue each). */
static void archive_commit(archive_t *a, job_t *j)
{
    for (size_t i = 0; i < j->n;) {
        size_t k = i + 1;
        while (k < j->n && j->entries[k].slot == j->entries[i].slot) {
            k++;
        }
        archive_ack(a, j, i, k);
        archive_advance(a, j, i, k);
        i = k;
    }
}

static void archive_after_work(uv_work_t *req, int status)
{
    job_t *j = req->data;
    archive_t *a = j->a;
    a->jobs--;
    if (status != 0) {
        j->ok = 0;
        snprintf(j->err, sizeof(j->err), "cancelled");
    }
    switch (j->kind) {
    case JOB_WRITE:
        a->busy = 0;
        if (j->ok) {
            archive_set_up(a, 1, NULL);
            if (j->err[0] != '\0') {
                log_error("event=archive_skipped err=\"%s\"", j->err);
            }
            archive_commit(a, j);
            log_debug("event=archived count=%zu", j->n);
            if (j->n >= ARCHIVE_BATCH || a->cluster) {
                archive_pump(a);    /* more is waiting */
            }
        } else {
            archive_set_up(a, 0, j->err);
            /* The batch stays pending in the group and is read again. */
            a->retry_at_ms = uv_now(a->env->loop) + 1000;
        }
        break;
    case JOB_FIND:
    case JOB_SEARCH:
        if (!j->ok) {
            archive_set_up(a, 0, j->err);
        }
        j->find_cb(j->arg, j->found, j->ok ? j->nfound : -1);
        break;
    case JOB_MAXSEQ:
        if (!j->ok) {
            archive_set_up(a, 0, j->err);
        }
        j->seq_cb(j->arg, j->ok ? j->max_seq : -1);
        break;
    case JOB_GET:
        if (!j->ok) {
            archive_set_up(a, 0, j->err);
        }
        j->get_cb(j->arg, j->ok ? (j->got_msg != NULL ? (j->got_deleted ? 2 : 1) : 0) : -1, j->got_msg,
                  j->got_state);
        break;
    case JOB_INDEXES:
        if (j->ok) {
            a->indexes_ready = 1;
            archive_set_up(a, 1, NULL);
            log_info("event=mongo_indexes_ready");
        } else {
            archive_set_up(a, 0, j->err);
        }
        break;
    case JOB_WORDS:
        a->words_busy = 0;
        if (!j->ok) {
            archive_set_up(a, 0, j->err);
            a->words_retry_ms = uv_now(a->env->loop) + 10000;
            break;
        }
        a->words_total += (uint64_t)j->updated;
        if (j->seen > 0) {
            a->words_after = j->last;
            a->words_have_after = 1;
        }
        if (j->seen < ARCHIVE_WORDS_BATCH) {
            a->words_done = 1;
            if (a->words_total > 0) {
                log_info("event=words_backfilled documents=%" PRIu64, a->words_total);
            }
        }
        break;
    }
    job_free(j);
}

static job_t *archive_job(archive_t *a, job_kind_t kind)
{
    job_t *j = calloc(1, sizeof(*j));
    if (j != NULL) {
        j->a = a;
        j->kind = kind;
        j->req.data = j;
    }
    return j;
}

static int archive_submit(archive_t *a, job_t *j)
{
    if (uv_queue_work(a->env->loop, &j->req, archive_on_work, archive_after_work) != 0) {
        return -1;
    }
    a->jobs++;
    return 0;
}

/* Appends the entries of one XREADGROUP reply's list (from slot's queue)
 * to j. Returns how many entries the list held. */
static size_t archive_collect(job_t *j, const redisReply *list, unsigned slot)
{
    if (list->type != REDIS_REPLY_ARRAY || list->elements == 0) {
        return 0;
    }
    entry_t *grown = realloc(j->entries, (j->n + list->elements) * sizeof(entry_t));
    if (grown == NULL) {
        return 0;
    }
    j->entries = grown;
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *e = list->element[i];
        const char *room = NULL, *payload = NULL;
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[1]->type != REDIS_REPLY_ARRAY) {
            continue;
        }
        const redisReply *f = e->element[1];
        const char *msg = NULL, *state = NULL;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            if (f->element[k]->type != REDIS_REPLY_STRING || f->element[k + 1]->type != REDIS_REPLY_STRING) {
                continue;
            }
            if (strcmp(f->element[k]->str, "r") == 0) {
                room = f->element[k + 1]->str;
            } else if (strcmp(f->element[k]->str, "m") == 0) {
                payload = f->element[k + 1]->str;
            } else if (strcmp(f->element[k]->str, "o") == 0) {
                msg = f->element[k + 1]->str;
            } else if (strcmp(f->element[k]->str, "s") == 0) {
                state = f->element[k + 1]->str;
            }
        }
        entry_t *en = &j->entries[j->n];
        memset(en, 0, sizeof(*en));
        en->slot = slot;
        en->id = strdup(e->element[0]->str);
        if (en->id == NULL) {
            continue;
        }
        j->n++;
        const char *seqp = payload != NULL ? strstr(payload, "\"seq\":") : NULL;
        if (room == NULL || seqp == NULL) {
            /* Unreadable entries are acknowledged so they do not loop. */
            en->room = strdup("");
            en->payload = strdup("");
            continue;
        }
        en->room = strdup(room);
        en->seq = strtoll(seqp + 6, NULL, 10);
        en->target = en->seq;
        /* An event (edit, delete, reaction) writes its message as it
         * stands after it, from the message ('o') and its state ('s'). */
        const char *tseq = msg != NULL ? strstr(msg, "\"seq\":") : NULL;
        if (msg != NULL && state != NULL && tseq != NULL) {
            en->target = strtoll(tseq + 6, NULL, 10);
            en->payload = strdup(msg);
            en->state = strdup(state);
        } else {
            en->payload = strdup(payload);
        }
        if (en->room == NULL || en->payload == NULL || (msg != NULL && state != NULL && en->state == NULL)) {
            j->n--;
            free(en->id);
            free(en->room);
            free(en->payload);
            free(en->state);
        }
    }
    return list->elements;
}

/* The XREADGROUP reply: [[stream, [[id, [field, value, ...]], ...]]]. */
static const redisReply *archive_read_list(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0 ||
        r->element[0]->type != REDIS_REPLY_ARRAY || r->element[0]->elements < 2) {
        return NULL;
    }
    return r->element[0]->element[1];
}

static void archive_on_read(void *arg, redisReply *r)
{
    archive_t *a = arg;
    a->busy = 0;
    const redisReply *list = archive_read_list(r);
    if (list == NULL) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR && strstr(r->str, "NOGROUP") != NULL) {
            a->group_ready = 0;
        }
        return;
    }
    if (list->type != REDIS_REPLY_ARRAY || list->elements == 0 || a->closing) {
        return;
    }
    job_t *j = archive_job(a, JOB_WRITE);
    if (j == NULL) {
        return;
    }
    archive_collect(j, list, 0);
    a->busy = 1;
    if (j->n == 0 || archive_submit(a, j) != 0) {
        a->busy = 0;
        job_free(j);
    }
}

/* ------------------------------------------------ cluster: slot queues */

static int archive_is_hot(const archive_t *a, unsigned slot)
{
    return (a->hot[slot / 8] >> (slot % 8)) & 1;
}

static void archive_measure_slot(archive_t *a, unsigned slot);

static void archive_set_hot(archive_t *a, unsigned slot, int hot)
{
    if (hot) {
        a->hot[slot / 8] |= (uint8_t)(1u << (slot % 8));
    } else if (archive_is_hot(a, slot)) {
        a->hot[slot / 8] &= (uint8_t)~(1u << (slot % 8));
        /* Cold slots are measured only by the slow sweep: measure this
         * one now, so the depth gauge does not keep its last backlog. */
        if (a->backlog != NULL && a->backlog[slot] != 0) {
            archive_measure_slot(a, slot);
        }
    }
}

void archive_note_room(archive_t *a, const char *room)
{
    if (a == NULL || !a->cluster) {
        return;
    }
    char chan[200];
    size_t n = store_channel(room, chan, sizeof(chan));
    unsigned slot = hashslot_of(chan, n);
    archive_set_hot(a, slot, 1);
    a->renoted[slot / 8] |= (uint8_t)(1u << (slot % 8));
}

typedef struct {
    archive_t *a;
    unsigned slot;
    int is_new;                 /* a read of new entries (">"), not own pending */
} archive_slot_call_t;

static void archive_gather_done(archive_t *a)
{
    job_t *j = a->gather;
    a->gather = NULL;
    if (j == NULL) {
        a->busy = 0;
        return;
    }
    if (j->n == 0 || a->closing || archive_submit(a, j) != 0) {
        a->busy = 0;
        job_free(j);
    }
}

static void archive_on_slot_read(void *arg, redisReply *r)
{
    archive_slot_call_t *sc = arg;
    archive_t *a = sc->a;
    const redisReply *list = archive_read_list(r);
    /* The pending read was sent first on the same link, so it has been
     * answered: a slot goes cold only when neither read found anything
     * and no send marked it since. */
    int keep = ((a->renoted[sc->slot / 8] | a->pending[sc->slot / 8]) >> (sc->slot % 8)) & 1;
    if (list != NULL && a->gather != NULL) {
        size_t got = archive_collect(a->gather, list, sc->slot);
        if (got > 0 && !sc->is_new) {
            a->pending[sc->slot / 8] |= (uint8_t)(1u << (sc->slot % 8));
        }
        if (got == 0 && sc->is_new && !keep) {
            archive_set_hot(a, sc->slot, 0);
        }
    } else if (r != NULL && r->type == REDIS_REPLY_NIL && sc->is_new && !keep) {
        /* Nothing new: Redis answers nil, not an empty list. The queue is
         * read again when a send or the sweep finds entries in it. */
        archive_set_hot(a, sc->slot, 0);
    } else if (r != NULL && r->type == REDIS_REPLY_ERROR && strstr(r->str, "NOGROUP") != NULL) {
        /* A queue made before its group (by hand, or an older chatd). */
        char q[64];
        store_slot_queue(sc->slot, q, sizeof(q));
        const char *argv[] = { "XGROUP", "CREATE", q, ARCHIVE_GROUP, "0", "MKSTREAM" };
        size_t lens[6];
        for (int i = 0; i < 6; i++) {
            lens[i] = strlen(argv[i]);
        }
        store_call_key(a->bus, q, NULL, NULL, 6, argv, lens);
    }
    free(sc);
    if (--a->gather_pending == 0) {
        archive_gather_done(a);
    }
}

/* Reads own pending then new entries of up to ARCHIVE_SLOTS_PER_READ hot
 * queues, pipelined, into one batch. */
static void archive_pump_cluster(archive_t *a)
{
    job_t *j = archive_job(a, JOB_WRITE);
    if (j == NULL) {
        return;
    }
    a->gather = j;
    a->gather_pending = 1;      /* held while the reads are sent */
    a->busy = 1;
    int picked = 0;
    /* Steps count from where the scan starts, not from hot_cursor, which
     * follows the picks: counted from it, the scan came round to a slot it
     * had already picked and read it twice, so every entry was written
     * twice (the second read of pending entries returns the first's). */
    unsigned start = a->hot_cursor;
    for (unsigned step = 0; step < HASHSLOT_COUNT && picked < ARCHIVE_SLOTS_PER_READ; step++) {
        unsigned slot = (start + step) % HASHSLOT_COUNT;
        if (!archive_is_hot(a, slot)) {
            continue;
        }
        char q[64];
        store_slot_queue(slot, q, sizeof(q));
        if (!bus_ready(a->bus, q, strlen(q))) {
            continue;
        }
        picked++;
        a->hot_cursor = (slot + 1) % HASHSLOT_COUNT;
        a->renoted[slot / 8] &= (uint8_t)~(1u << (slot % 8));
        a->pending[slot / 8] &= (uint8_t)~(1u << (slot % 8));
        for (int is_new = 0; is_new <= 1; is_new++) {
            archive_slot_call_t *sc = malloc(sizeof(*sc));
            if (sc == NULL) {
                continue;
            }
            *sc = (archive_slot_call_t){ a, slot, is_new };
            const char *argv[] = { "XREADGROUP", "GROUP", ARCHIVE_GROUP, a->env->wid, "COUNT", "500",
                                   "STREAMS", q, is_new ? ">" : "0" };
            size_t lens[9];
            for (int i = 0; i < 9; i++) {
                lens[i] = strlen(argv[i]);
            }
            if (store_call_key(a->bus, q, archive_on_slot_read, sc, 9, argv, lens) == 0) {
                a->gather_pending++;
            } else {
                free(sc);
            }
        }
    }
    if (--a->gather_pending == 0) {
        archive_gather_done(a);
    }
}

typedef struct {
    archive_t *a;
    unsigned slot;
} archive_sweep_call_t;

static void archive_claim(archive_t *a, const char *queue)
{
    char idle[24];
    snprintf(idle, sizeof(idle), "%d", ARCHIVE_CLAIM_IDLE_MS);
    const char *argv[] = { "XAUTOCLAIM", queue, ARCHIVE_GROUP, a->env->wid, idle, "0-0",
                           "COUNT", "500", "JUSTID" };
    size_t lens[9];
    for (int i = 0; i < 9; i++) {
        lens[i] = strlen(argv[i]);
    }
    store_call(a->bus, NULL, NULL, 9, argv, lens);
}

static void archive_on_swept(void *arg, redisReply *r)
{
    archive_sweep_call_t *sc = arg;
    archive_t *a = sc->a;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER && a->backlog != NULL) {
        uint32_t now = r->integer > 0 ? (uint32_t)r->integer : 0;
        a->backlog_sum = a->backlog_sum - a->backlog[sc->slot] + now;
        a->backlog[sc->slot] = now;
        metrics_set(&a->env->metrics->queue_depth, a->backlog_sum);
        if (now > 0 && !a->closing) {
            /* Entries a dead worker was given come to this one. */
            archive_set_hot(a, sc->slot, 1);
            char q[64];
            store_slot_queue(sc->slot, q, sizeof(q));
            archive_claim(a, q);
        }
    }
    free(sc);
}

static void archive_on_group(void *arg, redisReply *r)
{
    archive_t *a = arg;
    /* BUSYGROUP: another worker made it first, which is as good. */
    if (r != NULL && (r->type == REDIS_REPLY_STATUS ||
                      (r->type == REDIS_REPLY_ERROR && strstr(r->str, "BUSYGROUP") != NULL))) {
        a->group_ready = 1;
    }
}

static void archive_on_len(void *arg, redisReply *r)
{
    archive_t *a = arg;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER) {
        metrics_set(&a->env->metrics->queue_depth, (uint64_t)r->integer);
    }
}

/* Reads this consumer's own pending entries first (a batch whose write
 * failed, or one claimed from a dead consumer), then new ones. */
static void archive_pump(archive_t *a)
{
    bus_t *b = a->bus;
    if (a->busy || a->closing || !a->indexes_ready) {
        return;
    }
    if (a->cluster) {
        archive_pump_cluster(a);
        return;
    }
    if (!a->group_ready || !bus_healthy(b)) {
        return;
    }
    const char *argv[] = { "XREADGROUP", "GROUP", ARCHIVE_GROUP, a->env->wid, "COUNT", "500",
                           "STREAMS", ARCHIVE_STREAM, a->read_new ? ">" : "0" };
    /* Alternate: own pending ("0") then new (">"), so retries are never starved. */
    a->read_new = !a->read_new;
    size_t lens[9];
    for (int i = 0; i < 9; i++) {
        lens[i] = strlen(argv[i]);
    }
    a->busy = 1;
    if (store_call_key(b, ARCHIVE_STREAM, archive_on_read, a, 9, argv, lens) != 0) {
        a->busy = 0;
    }
}

/* Asks for queue's backlog: what its group has not finished, pending
 * entries plus those not yet read (lag). Entries below the oldest pending
 * one are all acknowledged; trimming them sweeps up any whose XDEL was
 * lost with a dying worker. A queue that does not exist has none. */
static int archive_measure(archive_t *a, const char *queue, store_cb_t *cb, void *arg)
{
    const char *argv[] = { "EVAL",
        "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
        "local ok, pend = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1])\n"
        "if not ok then return redis.call('XLEN', KEYS[1]) end\n"
        "local backlog, last = pend[1], nil\n"
        "for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do\n"
        "  local f = {}\n"
        "  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end\n"
        "  if f['name'] == ARGV[1] then\n"
        "    last = f['last-delivered-id']\n"
        "    if type(f['lag']) == 'number' then backlog = backlog + f['lag']\n"
        "    else return redis.call('XLEN', KEYS[1]) end\n"
        "  end\n"
        "end\n"
        "local floor = pend[1] > 0 and pend[2] or last\n"
        "if floor then redis.call('XTRIM', KEYS[1], 'MINID', floor) end\n"
        "return backlog\n",
        "1", queue, ARCHIVE_GROUP };
    size_t lens[5];
    for (int i = 0; i < 5; i++) {
        lens[i] = strlen(argv[i]);
    }
    return store_call(a->bus, cb, arg, 5, argv, lens);
}

/* A slice of the slot queues: finds queues with a backlog that no live
 * worker is reading (their writer died) and keeps the depth gauge; then
 * the hot queues, whose depth changes fastest. */
static void archive_sweep(archive_t *a)
{
    int n = ARCHIVE_SWEEP_PER_TICK;
    if (a->first_sweep_left > 0) {
        n = a->first_sweep_left < ARCHIVE_FIRST_SWEEP_PER_TICK ? a->first_sweep_left : ARCHIVE_FIRST_SWEEP_PER_TICK;
        a->first_sweep_left -= n;
    }
    for (int i = 0; i < n; i++) {
        unsigned slot = a->sweep_cursor;
        a->sweep_cursor = (a->sweep_cursor + 1) % HASHSLOT_COUNT;
        archive_measure_slot(a, slot);
    }
    int measured = 0;
    for (unsigned step = 0; step < HASHSLOT_COUNT && measured < ARCHIVE_HOT_PER_TICK; step++) {
        unsigned slot = (a->hot_measure_cursor + step) % HASHSLOT_COUNT;
        if (archive_is_hot(a, slot)) {
            archive_measure_slot(a, slot);
            measured++;
            a->hot_measure_cursor = (slot + 1) % HASHSLOT_COUNT;
        }
    }
}

static void archive_measure_slot(archive_t *a, unsigned slot)
{
    char q[64];
    store_slot_queue(slot, q, sizeof(q));
    if (!bus_ready(a->bus, q, strlen(q))) {
        return;
    }
    archive_sweep_call_t *sc = malloc(sizeof(*sc));
    if (sc == NULL) {
        return;
    }
    sc->a = a;
    sc->slot = slot;
    if (archive_measure(a, q, archive_on_swept, sc) != 0) {
        free(sc);       /* the callback owns it only once sent */
    }
}

/* One batch of the words backfill per tick, by the first worker of each
 * host only: the updates are idempotent, but one reader is enough. */
static void archive_words_step(archive_t *a, uint64_t now)
{
    if (a->words_done || a->words_busy || a->env->slot != 0 || now < a->words_retry_ms) {
        return;
    }
    job_t *j = archive_job(a, JOB_WORDS);
    if (j == NULL) {
        return;
    }
    j->after = a->words_after;
    j->have_after = a->words_have_after;
    if (archive_submit(a, j) != 0) {
        job_free(j);
        return;
    }
    a->words_busy = 1;
}

void archive_tick(archive_t *a)
{
    if (a == NULL || a->closing) {
        return;
    }
    bus_t *b = a->bus;
    uint64_t now = uv_now(a->env->loop);
    if (!a->indexes_ready && a->jobs == 0 && (a->cluster || a->group_ready)) {
        job_t *j = archive_job(a, JOB_INDEXES);
        if (j != NULL && archive_submit(a, j) != 0) {
            job_free(j);
        }
        return;
    }
    archive_words_step(a, now);
    if (a->cluster) {
        archive_sweep(a);
        if (now >= a->retry_at_ms) {
            archive_pump(a);
        }
        return;
    }
    if (!bus_healthy(b)) {
        return;
    }
    if (!a->group_ready) {
        const char *argv[] = { "XGROUP", "CREATE", ARCHIVE_STREAM, ARCHIVE_GROUP, "0", "MKSTREAM" };
        size_t lens[6];
        for (int i = 0; i < 6; i++) {
            lens[i] = strlen(argv[i]);
        }
        store_call_key(b, ARCHIVE_STREAM, archive_on_group, a, 6, argv, lens);
        return;
    }
    if (now >= a->next_claim_ms) {
        a->next_claim_ms = now + 5000;
        archive_claim(a, ARCHIVE_STREAM);
        archive_measure(a, ARCHIVE_STREAM, archive_on_len, a);
    }
    if (now >= a->retry_at_ms) {
        archive_pump(a);
    }
}

/* A look-up of one room on the thread pool: the job, sent, or NULL (and
 * nothing sent). The caller's callback and arg are set by the caller
 * before any reply can run: the loop runs the job's end later. */
static job_t *archive_lookup(archive_t *a, job_kind_t kind, const char *room, int64_t before, int limit)
{
    if (a == NULL || a->closing) {
        return NULL;
    }
    job_t *j = archive_job(a, kind);
    if (j == NULL) {
        return NULL;
    }
    snprintf(j->room, sizeof(j->room), "%s", room);
    j->before = before;
    j->limit = limit;
    if (archive_submit(a, j) != 0) {
        job_free(j);
        return NULL;
    }
    return j;
}

int archive_find(archive_t *a, const char *room, int64_t before, int limit,
                 archive_find_cb_t *cb, void *arg)
{
    job_t *j = archive_lookup(a, JOB_FIND, room, before, limit);
    if (j == NULL) {
        return -1;
    }
    j->find_cb = cb;
    j->arg = arg;
    return 0;
}

int archive_search(archive_t *a, const char *room, const words_t *q, int64_t before, int limit,
                   archive_find_cb_t *cb, void *arg)
{
    if (a == NULL || a->closing || q->n == 0) {
        return -1;
    }
    /* The job owns a copy of the words: set before it is sent. */
    job_t *j = archive_job(a, JOB_SEARCH);
    if (j == NULL) {
        return -1;
    }
    j->q.buf = malloc(q->len);
    if (j->q.buf == NULL) {
        job_free(j);
        return -1;
    }
    memcpy(j->q.buf, q->buf, q->len);
    j->q.len = q->len;
    j->q.n = q->n;
    snprintf(j->room, sizeof(j->room), "%s", room);
    j->before = before;
    j->limit = limit;
    j->find_cb = cb;
    j->arg = arg;
    if (archive_submit(a, j) != 0) {
        job_free(j);
        return -1;
    }
    return 0;
}

int archive_get(archive_t *a, const char *room, int64_t seq, archive_get_cb_t *cb, void *arg)
{
    job_t *j = archive_lookup(a, JOB_GET, room, seq, 1);
    if (j == NULL) {
        return -1;
    }
    j->get_cb = cb;
    j->arg = arg;
    return 0;
}

int archive_max_seq(archive_t *a, const char *room, archive_seq_cb_t *cb, void *arg)
{
    job_t *j = archive_lookup(a, JOB_MAXSEQ, room, -1, 1);
    if (j == NULL) {
        return -1;
    }
    j->seq_cb = cb;
    j->arg = arg;
    return 0;
}

archive_t *archive_new(bus_t *b)
{
    const bus_env_t *env = bus_env(b);
    if (env->cfg->mongo_uri[0] == '\0') {
        return NULL;
    }
    archive_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        return NULL;
    }
    a->bus = b;
    a->env = env;
    a->cluster = bus_is_cluster(b);
    if (a->cluster) {
        a->backlog = calloc(HASHSLOT_COUNT, sizeof(*a->backlog));
        if (a->backlog == NULL) {
            free(a);
            return NULL;
        }
        /* Workers start their sweeps apart, so together they pass every
         * queue sooner. */
        a->sweep_cursor = (unsigned)(env->slot * 2731) % HASHSLOT_COUNT;
        a->first_sweep_left = HASHSLOT_COUNT;
    }
    a->pool = mongo_pool_open(env->cfg->mongo_uri, &a->uri, a->db, sizeof(a->db));
    if (a->pool == NULL) {
        goto fail;
    }
    return a;
fail:
    free(a->backlog);
    free(a);
    return NULL;
}

void archive_close(archive_t *a)
{
    if (a != NULL) {
        a->closing = 1;
    }
}

void archive_free(archive_t *a)
{
    if (a == NULL) {
        return;
    }
    mongo_pool_close(a->pool, a->uri);
    free(a->backlog);
    free(a);
}
