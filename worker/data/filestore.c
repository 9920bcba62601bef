#include "filestore.h"
#include "mongo.h"
#include "../../common/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <mongoc/mongoc.h>

/* On disk, a file's description sits in front of its bytes: a magic line
 * and a JSON object, padded with spaces to this size. Names and types
 * hold no control characters (files.c), so even fully escaped the object
 * fits. */
#define FILESTORE_HEADER 4096
#define FILESTORE_MAGIC "CHATDFILE1\n"
/* A part untouched this long belongs to an upload that died with its
 * worker: uploads that stall end far sooner (--handshake-timeout). */
#define FILESTORE_PART_MAX_AGE_S 3600
#define FILESTORE_SWEEP_EVERY_S 600

typedef enum { OP_WRITE, OP_FINISH, OP_ABORT, OP_OPEN, OP_READ, OP_SWEEP } op_t;

struct filestore_s {
    uv_loop_t *loop;
    int dirfd;                  /* the directory backend's, else -1 */
    char dir[1024];
    mongoc_client_pool_t *pool; /* the GridFS backend's, else NULL */
    mongoc_uri_t *uri;
    char db[128];
    int open;                   /* uploads and files not yet freed */
    int sweeping;
    time_t next_sweep;
    uv_work_t sweep_req;
};

struct filestore_upload_s {
    filestore_t *fs;
    filestore_meta_t meta;
    uv_work_t req;
    op_t op;
    int busy;                   /* a job is on the thread pool */
    int aborted;
    int failed;                 /* a write failed: only abort remains */
    int finished;               /* the file is complete and visible */
    int ok;                     /* the job's outcome */
    char *data;                 /* OP_WRITE's bytes */
    size_t len;
    int64_t at;                 /* where they go in the file */
    filestore_cb_t *cb;
    void *arg;
    int fd;                     /* directory: the part, or -1 */
    mongoc_client_t *client;    /* GridFS: held for the whole upload */
    mongoc_database_t *db;
    mongoc_gridfs_bucket_t *bucket;
    mongoc_stream_t *stream;
    char err[512];
};

struct filestore_file_s {
    filestore_t *fs;
    filestore_meta_t meta;
    uv_work_t req;
    op_t op;
    int busy;
    int closed;
    int status;
    int fd;                     /* directory */
    int32_t chunk_size;         /* GridFS */
    int64_t off;
    size_t max;
    char *buf;                  /* reads land here */
    size_t buf_cap;
    ssize_t n;
    filestore_open_cb_t *open_cb;
    filestore_read_cb_t *read_cb;
    void *arg;
    char err[512];
};

static int filestore_is_gridfs(const filestore_t *fs)
{
    return fs->pool != NULL;
}

static int filestore_new_id(char out[FILESTORE_ID_LEN + 1])
{
    unsigned char raw[FILESTORE_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[FILESTORE_ID_LEN] = '\0';
    return 0;
}

static int filestore_id_valid(const char *id)
{
    if (strlen(id) != FILESTORE_ID_LEN) {
        return 0;
    }
    for (const char *p = id; *p != '\0'; p++) {
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------- */
/* Thread-pool side: the only code that touches the disk or MongoDB. */

static int filestore_pwrite_all(int fd, const char *p, size_t len, off_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

static void filestore_part_name(const char *id, char *out, size_t outlen)
{
    snprintf(out, outlen, ".part-%s", id);
}

/* The header of meta into h (FILESTORE_HEADER bytes), or -1. */
static int filestore_header(const filestore_meta_t *m, char *h)
{
    cJSON *o = cJSON_CreateObject();
    int ok = o != NULL && cJSON_AddStringToObject(o, "name", m->name) != NULL &&
             cJSON_AddStringToObject(o, "type", m->type) != NULL &&
             cJSON_AddStringToObject(o, "room", m->room) != NULL &&
             cJSON_AddStringToObject(o, "user", m->user) != NULL &&
             cJSON_AddNumberToObject(o, "size", (double)m->size) != NULL &&
             cJSON_AddNumberToObject(o, "ts", (double)m->ts) != NULL;
    char *json = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (json == NULL) {
        return -1;
    }
    size_t mlen = strlen(FILESTORE_MAGIC);
    size_t jlen = strlen(json);
    if (mlen + jlen + 1 > FILESTORE_HEADER) {
        free(json);
        return -1;
    }
    memset(h, ' ', FILESTORE_HEADER);
    memcpy(h, FILESTORE_MAGIC, mlen);
    memcpy(h + mlen, json, jlen);
    h[FILESTORE_HEADER - 1] = '\n';
    free(json);
    return 0;
}

static void filestore_copy(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src != NULL ? src : "");
}

/* Reads a header back into m (id already set). */
static int filestore_parse_header(const char *h, filestore_meta_t *m)
{
    size_t mlen = strlen(FILESTORE_MAGIC);
    if (memcmp(h, FILESTORE_MAGIC, mlen) != 0) {
        return -1;
    }
    cJSON *o = cJSON_ParseWithLength(h + mlen, FILESTORE_HEADER - mlen);
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(o, "size");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(o, "ts");
    if (!cJSON_IsObject(o) || !cJSON_IsNumber(size) || !cJSON_IsNumber(ts)) {
        cJSON_Delete(o);
        return -1;
    }
    filestore_copy(m->name, sizeof(m->name), cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "name")));
    filestore_copy(m->type, sizeof(m->type), cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "type")));
    filestore_copy(m->room, sizeof(m->room), cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "room")));
    filestore_copy(m->user, sizeof(m->user), cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "user")));
    m->size = (int64_t)size->valuedouble;
    m->ts = (int64_t)ts->valuedouble;
    cJSON_Delete(o);
    return 0;
}

static int filestore_dir_open_part(filestore_upload_t *up)
{
    if (up->fd >= 0) {
        return 0;
    }
    char part[64];
    filestore_part_name(up->meta.id, part, sizeof(part));
    up->fd = openat(up->fs->dirfd, part, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (up->fd < 0) {
        snprintf(up->err, sizeof(up->err), "open %s: %s", part, strerror(errno));
        return -1;
    }
    return 0;
}

static void filestore_dir_upload(filestore_upload_t *up)
{
    char part[64];
    filestore_part_name(up->meta.id, part, sizeof(part));
    switch (up->op) {
    case OP_WRITE:
        up->ok = filestore_dir_open_part(up) == 0 &&
                 filestore_pwrite_all(up->fd, up->data, up->len,
                                      (off_t)(FILESTORE_HEADER + up->at)) == 0;
        if (!up->ok && up->err[0] == '\0') {
            snprintf(up->err, sizeof(up->err), "write: %s", strerror(errno));
        }
        return;
    case OP_FINISH: {
        char h[FILESTORE_HEADER];
        /* Bytes, then the header that declares them complete, then the
         * rename that makes them visible; synced before each step that
         * makes them count, so a crash leaves a whole file or a part. */
        up->ok = filestore_dir_open_part(up) == 0 && filestore_header(&up->meta, h) == 0 &&
                 filestore_pwrite_all(up->fd, h, sizeof(h), 0) == 0 && fdatasync(up->fd) == 0 &&
                 renameat(up->fs->dirfd, part, up->fs->dirfd, up->meta.id) == 0 &&
                 fsync(up->fs->dirfd) == 0;
        if (!up->ok) {
            if (up->err[0] == '\0') {
                snprintf(up->err, sizeof(up->err), "finish: %s", strerror(errno));
            }
            unlinkat(up->fs->dirfd, part, 0);
        }
        return;
    }
    case OP_ABORT:
        if (up->fd >= 0) {
            unlinkat(up->fs->dirfd, up->finished ? up->meta.id : part, 0);
        }
        up->ok = 1;
        return;
    default:
        return;
    }
}

static int filestore_gridfs_open_stream(filestore_upload_t *up)
{
    if (up->stream != NULL) {
        return 0;
    }
    bson_error_t err;
    up->db = mongoc_client_get_database(up->client, up->fs->db);
    up->bucket = mongoc_gridfs_bucket_new(up->db, NULL, NULL, &err);
    if (up->bucket == NULL) {
        snprintf(up->err, sizeof(up->err), "%s", err.message);
        return -1;
    }
    bson_value_t id = { .value_type = BSON_TYPE_OID };
    bson_oid_init_from_string(&id.value.v_oid, up->meta.id);
    bson_t *opts = BCON_NEW("metadata", "{", "room", BCON_UTF8(up->meta.room), "user", BCON_UTF8(up->meta.user),
                            "type", BCON_UTF8(up->meta.type), "ts", BCON_INT64(up->meta.ts), "}");
    up->stream = mongoc_gridfs_bucket_open_upload_stream_with_id(up->bucket, &id, up->meta.name, opts, &err);
    bson_destroy(opts);
    if (up->stream == NULL) {
        snprintf(up->err, sizeof(up->err), "%s", err.message);
        return -1;
    }
    return 0;
}

static void filestore_gridfs_upload(filestore_upload_t *up)
{
    bson_error_t err;
    switch (up->op) {
    case OP_WRITE:
        up->ok = filestore_gridfs_open_stream(up) == 0 &&
                 mongoc_stream_write(up->stream, up->data, up->len, 0) == (ssize_t)up->len;
        break;
    case OP_FINISH:
        /* Closing the stream writes the last chunk and the files
         * document: from then on the file is found. */
        up->ok = filestore_gridfs_open_stream(up) == 0 && mongoc_stream_close(up->stream) == 0;
        break;
    case OP_ABORT:
        if (up->finished) {
            bson_value_t id = { .value_type = BSON_TYPE_OID };
            bson_oid_init_from_string(&id.value.v_oid, up->meta.id);
            up->ok = mongoc_gridfs_bucket_delete_by_id(up->bucket, &id, &err);
            if (!up->ok) {
                snprintf(up->err, sizeof(up->err), "%s", err.message);
            }
            return;
        }
        /* Removes the chunks written so far. */
        up->ok = up->stream == NULL || mongoc_gridfs_bucket_abort_upload(up->stream);
        break;
    default:
        return;
    }
    if (!up->ok && up->stream != NULL && mongoc_gridfs_bucket_stream_error(up->stream, &err)) {
        snprintf(up->err, sizeof(up->err), "%s", err.message);
    }
}

static void filestore_on_upload_work(uv_work_t *req)
{
    filestore_upload_t *up = req->data;
    if (filestore_is_gridfs(up->fs)) {
        filestore_gridfs_upload(up);
    } else {
        filestore_dir_upload(up);
    }
}

/* GridFS: the file's description from its files document. */
static int filestore_gridfs_meta(filestore_file_t *f, mongoc_database_t *db)
{
    bson_error_t err;
    mongoc_collection_t *col = mongoc_database_get_collection(db, "fs.files");
    bson_oid_t oid;
    bson_oid_init_from_string(&oid, f->meta.id);
    bson_t *filter = BCON_NEW("_id", BCON_OID(&oid));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, filter, NULL, NULL);
    const bson_t *d;
    f->status = FILESTORE_NOT_FOUND;
    if (mongoc_cursor_next(cur, &d)) {
        bson_iter_t it, md;
        f->status = 0;
        f->chunk_size = 0;
        f->meta.size = -1;
        if (bson_iter_init(&it, d)) {
            while (bson_iter_next(&it)) {
                const char *k = bson_iter_key(&it);
                if (strcmp(k, "length") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
                    f->meta.size = bson_iter_as_int64(&it);
                } else if (strcmp(k, "chunkSize") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
                    f->chunk_size = (int32_t)bson_iter_as_int64(&it);
                } else if (strcmp(k, "filename") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
                    filestore_copy(f->meta.name, sizeof(f->meta.name), bson_iter_utf8(&it, NULL));
                } else if (strcmp(k, "metadata") == 0 && BSON_ITER_HOLDS_DOCUMENT(&it) &&
                           bson_iter_recurse(&it, &md)) {
                    while (bson_iter_next(&md)) {
                        const char *mk = bson_iter_key(&md);
                        if (strcmp(mk, "ts") == 0 && BSON_ITER_HOLDS_NUMBER(&md)) {
                            f->meta.ts = bson_iter_as_int64(&md);
                        } else if (BSON_ITER_HOLDS_UTF8(&md)) {
                            const char *v = bson_iter_utf8(&md, NULL);
                            if (strcmp(mk, "room") == 0) {
                                filestore_copy(f->meta.room, sizeof(f->meta.room), v);
                            } else if (strcmp(mk, "user") == 0) {
                                filestore_copy(f->meta.user, sizeof(f->meta.user), v);
                            } else if (strcmp(mk, "type") == 0) {
                                filestore_copy(f->meta.type, sizeof(f->meta.type), v);
                            }
                        }
                    }
                }
            }
        }
        if (f->meta.size < 0 || f->chunk_size <= 0 || f->meta.room[0] == '\0') {
            snprintf(f->err, sizeof(f->err), "files document %s lacks length, chunkSize or room", f->meta.id);
            f->status = FILESTORE_ERROR;
        }
    }
    if (mongoc_cursor_error(cur, &err)) {
        snprintf(f->err, sizeof(f->err), "%s", err.message);
        f->status = FILESTORE_ERROR;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(filter);
    mongoc_collection_destroy(col);
    return f->status;
}

/* GridFS: the bytes at f->off from the one chunk document holding them. */
static void filestore_gridfs_read(filestore_file_t *f, mongoc_database_t *db)
{
    bson_error_t err;
    mongoc_collection_t *col = mongoc_database_get_collection(db, "fs.chunks");
    bson_oid_t oid;
    bson_oid_init_from_string(&oid, f->meta.id);
    int64_t n = f->off / f->chunk_size;
    bson_t *filter = BCON_NEW("files_id", BCON_OID(&oid), "n", BCON_INT32((int32_t)n));
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, filter, NULL, NULL);
    const bson_t *d;
    f->n = -1;
    snprintf(f->err, sizeof(f->err), "chunk %lld of %s is missing", (long long)n, f->meta.id);
    bson_iter_t it;
    if (mongoc_cursor_next(cur, &d) && bson_iter_init_find(&it, d, "data") && BSON_ITER_HOLDS_BINARY(&it)) {
        bson_subtype_t sub;
        uint32_t blen;
        const uint8_t *bin;
        bson_iter_binary(&it, &sub, &blen, &bin);
        int64_t at = f->off - n * f->chunk_size;
        if (at < (int64_t)blen) {
            size_t k = (size_t)((int64_t)blen - at);
            k = k < f->max ? k : f->max;
            memcpy(f->buf, bin + at, k);
            f->n = (ssize_t)k;
        }
    }
    if (mongoc_cursor_error(cur, &err)) {
        snprintf(f->err, sizeof(f->err), "%s", err.message);
        f->n = -1;
    }
    mongoc_cursor_destroy(cur);
    bson_destroy(filter);
    mongoc_collection_destroy(col);
}

static void filestore_on_file_work(uv_work_t *req)
{
    filestore_file_t *f = req->data;
    filestore_t *fs = f->fs;
    if (filestore_is_gridfs(fs)) {
        mongoc_client_t *client = mongoc_client_pool_pop(fs->pool);
        mongoc_database_t *db = mongoc_client_get_database(client, fs->db);
        if (f->op == OP_OPEN) {
            filestore_gridfs_meta(f, db);
        } else {
            filestore_gridfs_read(f, db);
        }
        mongoc_database_destroy(db);
        mongoc_client_pool_push(fs->pool, client);
        return;
    }
    if (f->op == OP_OPEN) {
        char h[FILESTORE_HEADER];
        f->fd = openat(fs->dirfd, f->meta.id, O_RDONLY | O_CLOEXEC);
        if (f->fd < 0) {
            f->status = errno == ENOENT ? FILESTORE_NOT_FOUND : FILESTORE_ERROR;
            snprintf(f->err, sizeof(f->err), "open: %s", strerror(errno));
            return;
        }
        ssize_t n = pread(f->fd, h, sizeof(h), 0);
        f->status = n == (ssize_t)sizeof(h) && filestore_parse_header(h, &f->meta) == 0 ? 0 : FILESTORE_ERROR;
        if (f->status != 0) {
            snprintf(f->err, sizeof(f->err), "file %s has no valid header", f->meta.id);
        }
        return;
    }
    do {
        f->n = pread(f->fd, f->buf, f->max, (off_t)(FILESTORE_HEADER + f->off));
    } while (f->n < 0 && errno == EINTR);
    if (f->n <= 0) {
        snprintf(f->err, sizeof(f->err), "read: %s", f->n < 0 ? strerror(errno) : "file shorter than its header says");
        f->n = -1;
    }
}

static void filestore_on_sweep_work(uv_work_t *req)
{
    filestore_t *fs = req->data;
    int fd = openat(fs->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        if (fd >= 0) {
            close(fd);
        }
        return;
    }
    time_t now = time(NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        if (strncmp(e->d_name, ".part-", 6) == 0 && fstatat(fs->dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            now - st.st_mtime > FILESTORE_PART_MAX_AGE_S) {
            unlinkat(fs->dirfd, e->d_name, 0);
        }
    }
    closedir(d);
}

/* ---------------------------------------------------------------------- */
/* Loop side. */

static void filestore_upload_free(filestore_upload_t *up)
{
    if (up->fd >= 0) {
        close(up->fd);
    }
    if (up->stream != NULL) {
        mongoc_stream_destroy(up->stream);
    }
    if (up->bucket != NULL) {
        mongoc_gridfs_bucket_destroy(up->bucket);
    }
    if (up->db != NULL) {
        mongoc_database_destroy(up->db);
    }
    if (up->client != NULL) {
        mongoc_client_pool_push(up->fs->pool, up->client);
    }
    free(up->data);
    up->fs->open--;
    free(up);
}

static int filestore_upload_submit(filestore_upload_t *up, op_t op);

static void filestore_after_upload_work(uv_work_t *req, int status)
{
    filestore_upload_t *up = req->data;
    up->busy = 0;
    free(up->data);
    up->data = NULL;
    int ok = status == 0 && up->ok;
    if (!ok && up->op != OP_ABORT) {
        log_error("event=file_store_failed id=%s err=\"%s\"", up->meta.id, up->err[0] ? up->err : "cancelled");
    }
    if (up->op == OP_FINISH && ok) {
        up->finished = 1;
    }
    if (up->op == OP_ABORT || (up->aborted && up->op == OP_FINISH && !ok)) {
        filestore_upload_free(up);
        return;
    }
    if (up->aborted) {
        /* Given up while a write ran: now the part goes. */
        if (filestore_upload_submit(up, OP_ABORT) != 0) {
            filestore_upload_free(up);
        }
        return;
    }
    filestore_cb_t *cb = up->cb;
    void *arg = up->arg;
    if (up->op == OP_FINISH) {
        if (!ok && filestore_is_gridfs(up->fs) && filestore_upload_submit(up, OP_ABORT) == 0) {
            up->aborted = 1;    /* frees itself after the chunks are gone */
        } else {
            filestore_upload_free(up);
        }
        cb(arg, ok ? 0 : FILESTORE_ERROR);
        return;
    }
    if (!ok) {
        up->failed = 1;
    }
    cb(arg, ok ? 0 : FILESTORE_ERROR);
}

static int filestore_upload_submit(filestore_upload_t *up, op_t op)
{
    up->op = op;
    up->req.data = up;
    up->err[0] = '\0';
    if (uv_queue_work(up->fs->loop, &up->req, filestore_on_upload_work, filestore_after_upload_work) != 0) {
        return -1;
    }
    up->busy = 1;
    return 0;
}

filestore_upload_t *filestore_upload_new(filestore_t *fs, const filestore_meta_t *meta)
{
    filestore_upload_t *up = calloc(1, sizeof(*up));
    if (up == NULL) {
        return NULL;
    }
    up->fs = fs;
    up->fd = -1;
    up->meta = *meta;
    up->meta.size = 0;
    up->meta.ts = (int64_t)uv_now(fs->loop);
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) == 0) {
        up->meta.ts = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    }
    if (filestore_new_id(up->meta.id) != 0) {
        log_error("event=getrandom_failed err=\"%s\"", strerror(errno));
        free(up);
        return NULL;
    }
    if (filestore_is_gridfs(fs)) {
        /* Never wait for a client on the loop: a full pool means busy. */
        up->client = mongoc_client_pool_try_pop(fs->pool);
        if (up->client == NULL) {
            free(up);
            return NULL;
        }
    }
    fs->open++;
    return up;
}

const char *filestore_upload_id(const filestore_upload_t *up)
{
    return up->meta.id;
}

const filestore_meta_t *filestore_upload_meta(const filestore_upload_t *up)
{
    return &up->meta;
}

int filestore_upload_write(filestore_upload_t *up, char *data, size_t len, filestore_cb_t *cb, void *arg)
{
    if (up->busy || up->aborted || up->failed) {
        return -1;
    }
    up->data = data;
    up->len = len;
    up->at = up->meta.size;
    up->cb = cb;
    up->arg = arg;
    if (filestore_upload_submit(up, OP_WRITE) != 0) {
        up->data = NULL;
        return -1;
    }
    up->meta.size += (int64_t)len;
    return 0;
}

int filestore_upload_finish(filestore_upload_t *up, filestore_cb_t *cb, void *arg)
{
    if (up->busy || up->aborted || up->failed) {
        return -1;
    }
    up->cb = cb;
    up->arg = arg;
    return filestore_upload_submit(up, OP_FINISH);
}

void filestore_upload_abort(filestore_upload_t *up)
{
    if (up->aborted) {
        return;
    }
    up->aborted = 1;
    if (up->busy) {
        return;         /* the job's end starts the removal */
    }
    if (filestore_upload_submit(up, OP_ABORT) != 0) {
        filestore_upload_free(up);
    }
}

static void filestore_file_free(filestore_file_t *f)
{
    if (f->fd >= 0) {
        close(f->fd);
    }
    free(f->buf);
    f->fs->open--;
    free(f);
}

static void filestore_after_file_work(uv_work_t *req, int status)
{
    filestore_file_t *f = req->data;
    f->busy = 0;
    if (f->closed) {
        filestore_file_free(f);
        return;
    }
    if (f->op == OP_OPEN) {
        int st = status == 0 ? f->status : FILESTORE_ERROR;
        if (st == FILESTORE_ERROR) {
            log_error("event=file_open_failed id=%s err=\"%s\"", f->meta.id, f->err);
        }
        filestore_open_cb_t *cb = f->open_cb;
        void *arg = f->arg;
        if (st != 0) {
            filestore_file_free(f);
        }
        cb(arg, st, st == 0 ? f : NULL);
        return;
    }
    ssize_t n = status == 0 ? f->n : -1;
    if (n < 0) {
        log_error("event=file_read_failed id=%s err=\"%s\"", f->meta.id, f->err);
    }
    f->read_cb(f->arg, n, f->buf);
}

static int filestore_file_submit(filestore_file_t *f, op_t op)
{
    f->op = op;
    f->req.data = f;
    if (uv_queue_work(f->fs->loop, &f->req, filestore_on_file_work, filestore_after_file_work) != 0) {
        return -1;
    }
    f->busy = 1;
    return 0;
}

int filestore_open(filestore_t *fs, const char *id, filestore_open_cb_t *cb, void *arg)
{
    if (!filestore_id_valid(id)) {
        return FILESTORE_NOT_FOUND;
    }
    filestore_file_t *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        return FILESTORE_ERROR;
    }
    f->fs = fs;
    f->fd = -1;
    memcpy(f->meta.id, id, FILESTORE_ID_LEN + 1);
    f->open_cb = cb;
    f->arg = arg;
    fs->open++;
    if (filestore_file_submit(f, OP_OPEN) != 0) {
        filestore_file_free(f);
        return FILESTORE_ERROR;
    }
    return 0;
}

const filestore_meta_t *filestore_file_meta(const filestore_file_t *f)
{
    return &f->meta;
}

int filestore_read(filestore_file_t *f, int64_t off, size_t max, filestore_read_cb_t *cb, void *arg)
{
    if (f->busy || f->closed || off < 0 || off >= f->meta.size || max == 0) {
        return -1;
    }
    if ((int64_t)max > f->meta.size - off) {
        max = (size_t)(f->meta.size - off);
    }
    if (f->buf_cap < max) {
        char *b = realloc(f->buf, max);
        if (b == NULL) {
            return -1;
        }
        f->buf = b;
        f->buf_cap = max;
    }
    f->off = off;
    f->max = max;
    f->read_cb = cb;
    f->arg = arg;
    return filestore_file_submit(f, OP_READ);
}

void filestore_close(filestore_file_t *f)
{
    if (f == NULL || f->closed) {
        return;
    }
    f->closed = 1;
    if (!f->busy) {
        filestore_file_free(f);
    }
}

/* Creates every missing directory of path, 0700, like mkdir -p. */
static int filestore_mkdirs(const char *path)
{
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
                return -1;
            }
            *p = c;
            if (c == '\0') {
                return 0;
            }
        }
    }
}

filestore_t *filestore_new(uv_loop_t *loop, const config_t *cfg)
{
    filestore_t *fs = calloc(1, sizeof(*fs));
    if (fs == NULL) {
        return NULL;
    }
    fs->loop = loop;
    fs->dirfd = -1;
    if (cfg->mongo_uri[0] != '\0') {
        fs->pool = mongo_pool_open(cfg->mongo_uri, &fs->uri, fs->db, sizeof(fs->db));
        if (fs->pool == NULL) {
            free(fs);
            return NULL;
        }
        return fs;
    }
    snprintf(fs->dir, sizeof(fs->dir), "%s", cfg->files_dir);
    if (fs->dir[0] == '\0' || filestore_mkdirs(fs->dir) != 0 ||
        (fs->dirfd = open(fs->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        log_error("event=files_dir_failed dir=\"%s\" err=\"%s\"", fs->dir, strerror(errno));
        free(fs);
        return NULL;
    }
    struct stat st;
    if (fstat(fs->dirfd, &st) == 0 && (st.st_mode & 0077) != 0) {
        log_warn("event=files_dir_open_to_others dir=\"%s\" mode=%o", fs->dir, (unsigned)(st.st_mode & 0777));
    }
    return fs;
}

static void filestore_after_sweep(uv_work_t *req, int status)
{
    (void)status;
    filestore_t *fs = req->data;
    fs->sweeping = 0;
    fs->open--;
}

void filestore_tick(filestore_t *fs)
{
    time_t now = time(NULL);
    if (fs == NULL || fs->dirfd < 0 || fs->sweeping || now < fs->next_sweep) {
        return;
    }
    fs->next_sweep = now + FILESTORE_SWEEP_EVERY_S;
    fs->sweep_req.data = fs;
    if (uv_queue_work(fs->loop, &fs->sweep_req, filestore_on_sweep_work, filestore_after_sweep) == 0) {
        fs->sweeping = 1;
        fs->open++;
    }
}

void filestore_free(filestore_t *fs)
{
    if (fs == NULL) {
        return;
    }
    if (fs->open > 0) {
        log_warn("event=filestore_free_busy open=%d", fs->open);
    }
    if (fs->dirfd >= 0) {
        close(fs->dirfd);
    }
    mongo_pool_close(fs->pool, fs->uri);
    free(fs);
}
