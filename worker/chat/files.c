#include "files.h"
#include "room.h"
#include "../../common/buf.h"
#include "../../common/log.h"
#include "../../proto/proto.h"
#include "../net/auth.h"
#include "../net/http.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cjson/cJSON.h>

/* Bytes per store write or read: one GridFS chunk's worth. */
#define FILES_CHUNK (256 * 1024)
/* Body bytes held while the store catches up before reading pauses. */
#define FILES_PENDING_MAX (1024 * 1024)

/* One upload or download; lives until its conn is answered or gone and
 * no store callback can reach it any more. */
typedef struct files_xfer_s {
    files_t *fl;
    conn_t *c;                  /* referenced while the xfer lives */
    auth_t auth;
    int gone;                   /* the conn ended or was answered */
    /* upload */
    filestore_upload_t *up;
    buf_t pending;              /* body bytes not yet handed to the store */
    int64_t received;
    int writing;
    int body_ended;
    int finishing;
    void *done;                 /* the finish callback's argument, until it runs */
    /* download */
    filestore_file_t *f;
    int opening;
    int reading;
    int head_only;
    int64_t pos, end;           /* bytes [pos, end) still to send */
    char range[HTTP_MAX_VALUE + 1];
} files_xfer_t;

void files_init(files_t *fl, const config_t *cfg, filestore_t *store, metrics_slot_t *metrics)
{
    fl->cfg = cfg;
    fl->store = store;
    fl->metrics = metrics;
    fl->transfers = 0;
}

static files_xfer_t *files_xfer_new(files_t *fl, conn_t *c, auth_t *auth)
{
    files_xfer_t *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return NULL;
    }
    x->fl = fl;
    x->c = c;
    x->auth = *auth;
    conn_ref(c);
    metrics_set(&fl->metrics->file_transfers, ++fl->transfers);
    return x;
}

/* Frees x once nothing can call back into it. */
static void files_xfer_release(files_xfer_t *x)
{
    if (x->opening || (x->f != NULL && x->reading)) {
        return;     /* the open's or the read's callback comes back first */
    }
    if (x->f != NULL) {
        filestore_close(x->f);
    }
    auth_free(&x->auth);
    buf_free(&x->pending);
    free(x->done);
    metrics_set(&x->fl->metrics->file_transfers, --x->fl->transfers);
    conn_unref(x->c);
    free(x);
}

/* Answers and ends the exchange; x stays until released. */
static void files_reply(files_xfer_t *x, int status, const char *type, const char *extra,
                        const char *body)
{
    if (x->gone) {
        return;
    }
    x->gone = 1;
    conn_exchange_end(x->c);
    conn_http_reply(x->c, status, type, extra, body, strlen(body));
}

static void files_reply_text(conn_t *c, int status, const char *text)
{
    conn_http_reply(c, status, "text/plain; charset=utf-8", NULL, text, strlen(text));
}

/* A display name: UTF-8 without control characters, 1..255 bytes. */
static int files_name_valid(const char *s, size_t n)
{
    if (n == 0 || n > FILESTORE_TEXT_MAX || !proto_utf8_valid((const uint8_t *)s, n)) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* A media type as a header may carry it back: printable ASCII. */
static int files_type_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > FILESTORE_TEXT_MAX) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) {
            return 0;
        }
    }
    return 1;
}

/* ---------------------------------------------------------------------- */
/* Upload */

/* Ends an upload with an error answer: nothing of it stays. */
static void files_upload_fail(files_xfer_t *x, int status, const char *body)
{
    if (x->up != NULL) {
        filestore_upload_abort(x->up);
        x->up = NULL;
    }
    files_reply(x, status, "text/plain", NULL, body);
    files_xfer_release(x);
}

static void files_upload_step(files_xfer_t *x);

static void files_on_written(void *arg, int status)
{
    files_xfer_t *x = arg;
    x->writing = 0;
    if (status != 0) {
        files_upload_fail(x, 503, "file storage unavailable, retry\n");
        return;
    }
    files_upload_step(x);
}

/* The 201 answer, written when the store has the whole file. */
typedef struct files_done_s {
    files_xfer_t *x;
    filestore_meta_t meta;
} files_done_t;

static void files_on_upload_done(void *arg, int status)
{
    files_done_t *d = arg;
    files_xfer_t *x = d->x;
    x->up = NULL;       /* the store freed it */
    x->done = NULL;
    if (status != 0) {
        files_reply(x, 503, "text/plain", NULL, "file storage unavailable, retry\n");
    } else {
        char url[16 + FILESTORE_ID_LEN];
        snprintf(url, sizeof(url), "/files/%s", d->meta.id);
        cJSON *o = cJSON_CreateObject();
        int ok = o != NULL && cJSON_AddStringToObject(o, "id", d->meta.id) != NULL &&
                 cJSON_AddStringToObject(o, "url", url) != NULL &&
                 cJSON_AddStringToObject(o, "name", d->meta.name) != NULL &&
                 cJSON_AddNumberToObject(o, "size", (double)x->received) != NULL &&
                 cJSON_AddStringToObject(o, "type", d->meta.type) != NULL;
        char *json = ok ? cJSON_PrintUnformatted(o) : NULL;
        cJSON_Delete(o);
        if (json == NULL) {
            files_reply(x, 500, "text/plain", NULL, "out of memory\n");
        } else {
            metrics_add(&x->fl->metrics->files_uploaded, 1);
            metrics_add(&x->fl->metrics->file_upload_bytes, (uint64_t)x->received);
            log_info("event=file_stored id=%s size=%" PRId64 " user=\"%s\" room=\"%s\"", d->meta.id,
                     x->received, x->auth.user, d->meta.room);
            char extra[128];
            snprintf(extra, sizeof(extra), "Location: %s\r\nCache-Control: no-store\r\n", url);
            files_reply(x, 201, "application/json", extra, json);
            free(json);
        }
    }
    free(d);
    files_xfer_release(x);
}

/* Hands pending bytes to the store, one write at a time, and finishes
 * once the body is complete and written. */
static void files_upload_step(files_xfer_t *x)
{
    if (x->gone || x->writing || x->finishing) {
        return;
    }
    if (x->pending.len > 0) {
        char *data = x->pending.data;
        size_t len = x->pending.len;
        x->pending = (buf_t){ 0 };
        if (filestore_upload_write(x->up, data, len, files_on_written, x) != 0) {
            free(data);
            files_upload_fail(x, 503, "file storage unavailable, retry\n");
            return;
        }
        x->writing = 1;
        conn_body_pause(x->c, 0);
        return;
    }
    if (!x->body_ended) {
        return;
    }
    files_done_t *d = malloc(sizeof(*d));
    if (d == NULL) {
        files_upload_fail(x, 500, "out of memory\n");
        return;
    }
    d->x = x;
    d->meta = *filestore_upload_meta(x->up);
    if (filestore_upload_finish(x->up, files_on_upload_done, d) != 0) {
        free(d);
        files_upload_fail(x, 503, "file storage unavailable, retry\n");
        return;
    }
    x->finishing = 1;
    x->done = d;
}

static int files_on_body(void *ud, conn_t *c, const char *data, size_t len)
{
    files_xfer_t *x = ud;
    x->received += (int64_t)len;
    if (x->received > x->fl->cfg->max_file) {
        /* A chunked body, or one longer than it said: refused as it comes. */
        files_upload_fail(x, 413, "file larger than maxFile\n");
        return -1;
    }
    if (buf_append(&x->pending, data, len) != 0) {
        files_upload_fail(x, 500, "out of memory\n");
        return -1;
    }
    if (x->pending.len >= FILES_PENDING_MAX) {
        conn_body_pause(c, 1);
    }
    if (x->pending.len >= FILES_CHUNK) {
        files_upload_step(x);
    }
    return 0;
}

static void files_on_body_end(void *ud, conn_t *c)
{
    (void)c;
    files_xfer_t *x = ud;
    x->body_ended = 1;
    files_upload_step(x);
}

/* The conn went before the answer: nothing of the upload stays. */
static void files_on_upload_gone(void *ud, conn_t *c)
{
    (void)c;
    files_xfer_t *x = ud;
    x->gone = 1;
    if (x->up != NULL) {
        log_info("event=file_upload_interrupted id=%s received=%" PRId64, filestore_upload_id(x->up), x->received);
        filestore_upload_abort(x->up);
        x->up = NULL;
    }
    files_xfer_release(x);
}

static const conn_exchange_t files_upload_exchange = {
    .body = files_on_body,
    .body_end = files_on_body_end,
    .gone = files_on_upload_gone,
};

static void files_upload(files_t *fl, conn_t *c, const http_req_t *req, const char *query, auth_t *auth)
{
    filestore_meta_t meta;
    memset(&meta, 0, sizeof(meta));
    int n = http_query_get(query, "room", meta.room, sizeof(meta.room));
    if (n < 0) {
        auth_free(auth);
        files_reply_text(c, 400, n == -1 ? "room= is required\n" : "malformed room\n");
        return;
    }
    const char *why;
    if (!proto_room_valid(meta.room)) {
        auth_free(auth);
        files_reply_text(c, 400, "invalid room name\n");
        return;
    }
    if (!room_allowed(auth, meta.room, &why)) {
        auth_free(auth);
        files_reply_text(c, 403, why);
        return;
    }
    n = http_query_get(query, "name", meta.name, sizeof(meta.name));
    if (n == -1) {
        snprintf(meta.name, sizeof(meta.name), "file");
    } else if (n < 0 || !files_name_valid(meta.name, (size_t)n)) {
        auth_free(auth);
        files_reply_text(c, 400, "name must be 1 to 255 bytes of UTF-8 without control characters\n");
        return;
    }
    const char *type = req->content_type[0] != '\0' ? req->content_type : "application/octet-stream";
    if (!files_type_valid(type)) {
        auth_free(auth);
        files_reply_text(c, 400, "Content-Type must be printable ASCII of at most 255 bytes\n");
        return;
    }
    /* Both fit: the type was checked, a user name is at most 64 bytes. */
    memcpy(meta.type, type, strlen(type) + 1);
    memcpy(meta.user, auth->user, strnlen(auth->user, FILESTORE_USER_MAX) + 1);
    meta.user[FILESTORE_USER_MAX] = '\0';
    /* Refused on its word, before a byte of the body is read. */
    if (http_req_content_length(req) > (int64_t)fl->cfg->max_file) {
        auth_free(auth);
        files_reply_text(c, 413, "file larger than maxFile\n");
        return;
    }
    files_xfer_t *x = files_xfer_new(fl, c, auth);
    if (x == NULL) {
        auth_free(auth);
        files_reply_text(c, 500, "out of memory\n");
        return;
    }
    x->up = filestore_upload_new(fl->store, &meta);
    if (x->up == NULL) {
        x->gone = 1;
        files_reply_text(c, 503, "file storage busy, retry\n");
        files_xfer_release(x);
        return;
    }
    conn_exchange_begin(c, &files_upload_exchange, x);
    if (conn_body_read(c) != 0) {
        files_upload_fail(x, 500, "cannot read the body\n");
    }
}

/* ---------------------------------------------------------------------- */
/* Download */

/*
 * The one range of a Range header: 1 with [*from, *to] inside the file,
 * -1 when it cannot be satisfied, 0 to send the whole file (no header,
 * one chatd does not parse, or several ranges, which a server may answer
 * whole; RFC 9110 14.2).
 */
static int files_range(const char *h, int64_t size, int64_t *from, int64_t *to)
{
    if (strncasecmp(h, "bytes=", 6) != 0 || strchr(h, ',') != NULL) {
        return 0;
    }
    const char *p = h + 6;
    while (*p == ' ') {
        p++;
    }
    char *end;
    if (*p == '-') {
        if (p[1] < '0' || p[1] > '9') {
            return 0;
        }
        long long suffix = strtoll(p + 1, &end, 10);
        if (*end != '\0' || suffix < 0) {
            return 0;
        }
        if (suffix == 0 || size == 0) {
            return -1;
        }
        *from = suffix >= size ? 0 : size - suffix;
        *to = size - 1;
        return 1;
    }
    if (*p < '0' || *p > '9') {
        return 0;
    }
    long long a = strtoll(p, &end, 10);
    if (*end != '-') {
        return 0;
    }
    long long b = -1;
    if (end[1] != '\0') {
        if (end[1] < '0' || end[1] > '9') {
            return 0;
        }
        b = strtoll(end + 1, &end, 10);
        if (*end != '\0' || b < a) {
            return 0;
        }
    }
    if (a >= size) {
        return -1;
    }
    *from = a;
    *to = b < 0 || b >= size ? size - 1 : b;
    return 1;
}

/* The image types a browser may show inline; all else is a download. */
static int files_inline_type(const char *type)
{
    static const char *const ok[] = { "image/png", "image/jpeg", "image/gif", "image/webp" };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (strcasecmp(type, ok[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Content-Disposition with the name twice: plain ASCII for old clients,
 * and RFC 8187's UTF-8 form. */
static void files_disposition(const char *name, int as_inline, char *out, size_t outlen)
{
    char ascii[FILESTORE_TEXT_MAX + 1];
    char ext[FILESTORE_TEXT_MAX * 3 + 1];
    size_t a = 0, e = 0;
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++) {
        int plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
                    strchr("!#$&+-.^_`|~", *p) != NULL;
        if (a < sizeof(ascii) - 1) {
            ascii[a++] = *p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\' ? (char)*p : '_';
        }
        if (plain) {
            ext[e++] = (char)*p;
        } else {
            ext[e++] = '%';
            ext[e++] = hex[*p >> 4];
            ext[e++] = hex[*p & 15];
        }
    }
    ascii[a] = '\0';
    ext[e] = '\0';
    snprintf(out, outlen, "Content-Disposition: %s; filename=\"%s\"; filename*=UTF-8''%s\r\n",
             as_inline ? "inline" : "attachment", ascii, ext);
}

static void files_send_more(files_xfer_t *x);

static void files_end_download(files_xfer_t *x)
{
    x->gone = 1;
    conn_exchange_end(x->c);
    conn_close(x->c, 0, NULL);
    files_xfer_release(x);
}

static void files_on_read(void *arg, ssize_t n, const char *data)
{
    files_xfer_t *x = arg;
    x->reading = 0;
    if (x->gone) {
        files_xfer_release(x);
        return;
    }
    if (n <= 0) {
        /* The head is out: all that is left is to cut the body short. */
        conn_abort(x->c);
        return;
    }
    if (conn_send_raw(x->c, data, (size_t)n) != 0) {
        return;         /* aborted: gone follows */
    }
    x->pos += n;
    metrics_add(&x->fl->metrics->file_download_bytes, (uint64_t)n);
}

/* Reads the next piece while fewer than CONN_STREAM_LOW bytes wait, and
 * closes once the last byte is written. */
static void files_send_more(files_xfer_t *x)
{
    /* Writable may come before the file is open (the conn was flushed for
     * other output, a TLS session ticket say): nothing to send yet, and
     * pos == end == 0 must not read as "all sent". */
    if (x->gone || x->reading || x->f == NULL) {
        return;
    }
    if (x->pos >= x->end) {
        if (conn_pending_bytes(x->c) == 0) {
            files_end_download(x);
        }
        return;
    }
    int64_t left = x->end - x->pos;
    size_t want = left < FILES_CHUNK ? (size_t)left : FILES_CHUNK;
    if (filestore_read(x->f, x->pos, want, files_on_read, x) != 0) {
        conn_abort(x->c);
        return;
    }
    x->reading = 1;
}

static void files_on_writable(void *ud, conn_t *c)
{
    (void)c;
    files_send_more(ud);
}

static void files_on_download_gone(void *ud, conn_t *c)
{
    (void)c;
    files_xfer_t *x = ud;
    x->gone = 1;
    files_xfer_release(x);
}

static const conn_exchange_t files_download_exchange = {
    .writable = files_on_writable,
    .gone = files_on_download_gone,
};

static void files_on_open(void *arg, int status, filestore_file_t *f)
{
    files_xfer_t *x = arg;
    x->opening = 0;
    x->f = f;
    if (x->gone) {
        files_xfer_release(x);
        return;
    }
    if (status == FILESTORE_NOT_FOUND) {
        files_reply(x, 404, "text/plain", NULL, "no such file\n");
        files_xfer_release(x);
        return;
    }
    if (status != 0) {
        files_reply(x, 503, "text/plain", NULL, "file storage unavailable, retry\n");
        files_xfer_release(x);
        return;
    }
    const filestore_meta_t *m = filestore_file_meta(f);
    const char *why;
    if (!room_allowed(&x->auth, m->room, &why)) {
        files_reply(x, 403, "text/plain", NULL, why);
        files_xfer_release(x);
        return;
    }
    int64_t from = 0, to = m->size - 1;
    int r = files_range(x->range, m->size, &from, &to);
    if (r < 0) {
        char extra[64];
        snprintf(extra, sizeof(extra), "Content-Range: bytes */%" PRId64 "\r\n", m->size);
        files_reply(x, 416, "text/plain", extra, "range not satisfiable\n");
        files_xfer_release(x);
        return;
    }
    int as_inline = files_inline_type(m->type);
    char extra[1536];
    size_t len = 0;
    files_disposition(m->name, as_inline, extra, sizeof(extra));
    len = strlen(extra);
    if (r > 0) {
        len += (size_t)snprintf(extra + len, sizeof(extra) - len,
                                "Content-Range: bytes %" PRId64 "-%" PRId64 "/%" PRId64 "\r\n", from, to, m->size);
    }
    snprintf(extra + len, sizeof(extra) - len,
             "Accept-Ranges: bytes\r\n"
             "X-Content-Type-Options: nosniff\r\n"
             "Content-Security-Policy: sandbox\r\n"
             "Cache-Control: private, max-age=86400\r\n"
             "ETag: \"%s\"\r\n", m->id);
    char head[2048];
    int64_t body = m->size == 0 ? 0 : to - from + 1;
    int hlen = http_response_head(head, sizeof(head), r > 0 ? 206 : 200,
                                  as_inline ? m->type : "application/octet-stream", extra, (size_t)body);
    if (hlen < 0 || conn_send_raw(x->c, head, (size_t)hlen) != 0) {
        conn_abort(x->c);
        return;
    }
    metrics_add(&x->fl->metrics->files_downloaded, 1);
    x->pos = from;
    x->end = x->head_only ? from : from + body;
    files_send_more(x);
}

static void files_download(files_t *fl, conn_t *c, const http_req_t *req, const char *id, auth_t *auth)
{
    files_xfer_t *x = files_xfer_new(fl, c, auth);
    if (x == NULL) {
        auth_free(auth);
        files_reply_text(c, 500, "out of memory\n");
        return;
    }
    x->head_only = req->method == HTTP_HEAD;
    snprintf(x->range, sizeof(x->range), "%s", req->range);
    conn_exchange_begin(c, &files_download_exchange, x);
    int rc = filestore_open(fl->store, id, files_on_open, x);
    if (rc != 0) {
        files_reply(x, rc == FILESTORE_NOT_FOUND ? 404 : 503, "text/plain", NULL,
                    rc == FILESTORE_NOT_FOUND ? "no such file\n" : "file storage unavailable, retry\n");
        files_xfer_release(x);
        return;
    }
    x->opening = 1;
}

int files_http(files_t *fl, conn_t *c, const char *path, const char *query)
{
    int upload = strcmp(path, "/files") == 0;
    if (!upload && strncmp(path, "/files/", 7) != 0) {
        return 0;
    }
    const http_req_t *req = conn_request(c);
    if (req == NULL) {
        return 1;
    }
    if (upload ? req->method != HTTP_POST : req->method != HTTP_GET && req->method != HTTP_HEAD) {
        conn_http_reply(c, 405, "text/plain", upload ? "Allow: POST\r\n" : "Allow: GET, HEAD\r\n",
                        "method not allowed\n", 19);
        return 1;
    }
    if (fl->store == NULL) {
        files_reply_text(c, 503, "file storage unavailable\n");
        return 1;
    }
    auth_t auth;
    const char *why;
    if (auth_check_request(query, req->authorization, fl->cfg->jwt_secret, (int64_t)time(NULL), &auth, &why) != 0) {
        files_reply_text(c, 401, why);
        return 1;
    }
    if (upload) {
        files_upload(fl, c, req, query, &auth);
    } else {
        files_download(fl, c, req, path + 7, &auth);
    }
    return 1;
}
