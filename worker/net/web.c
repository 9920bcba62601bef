#include "web.h"
#include "conn.h"
#include "http.h"
#include "../../common/buf.h"
#include "../../common/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WEB_MAX_FILES 64
#define WEB_MAX_FILE_BYTES (1024 * 1024)
#define WEB_NAME_MAX 64

/*
 * Every answer carries these. The client is plain files from this origin:
 * no inline script or style, no third-party anything, and its only
 * network use besides loading is the WebSocket back to this server. A
 * page that cannot run inline code cannot be made to run injected markup
 * either, so a slip in the client's escaping still is not an XSS.
 */
#define WEB_SECURITY_HEADERS                                                  \
    "X-Content-Type-Options: nosniff\r\n"                                     \
    "Content-Security-Policy: default-src 'self'; script-src 'self'; "        \
    "style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "   \
    "object-src 'none'; base-uri 'none'; form-action 'self'; "                \
    "frame-ancestors 'none'\r\n"                                              \
    "Referrer-Policy: no-referrer\r\n"                                        \
    "X-Frame-Options: DENY\r\n"

/* index.html names the other files with a version stamp (see
 * web_stamp_index), so they may be cached for good: a new build is a new
 * URL. index.html itself is revalidated on every load. */
#define WEB_CACHE_INDEX "Cache-Control: no-cache\r\n"
#define WEB_CACHE_ASSET "Cache-Control: public, max-age=31536000, immutable\r\n"

typedef struct web_file_s {
    char path[WEB_NAME_MAX + 2];    /* "/name", as requested */
    const char *type;
    char *body;                     /* malloc'd */
    size_t len;
    uint64_t hash;                  /* FNV-1a of the file as read */
} web_file_t;

typedef struct web_set_s {
    web_file_t files[WEB_MAX_FILES];
    size_t nfiles;
} web_set_t;

static web_set_t *web_set;      /* NULL until loaded */
static int web_tried;           /* a load was attempted (lazy or explicit) */

static const struct {
    const char *ext;
    const char *type;
} web_types[] = {
    { "html", "text/html; charset=utf-8" },
    { "js", "text/javascript; charset=utf-8" },
    { "css", "text/css; charset=utf-8" },
    { "svg", "image/svg+xml" },
    { "png", "image/png" },
    { "ico", "image/x-icon" },
    { "json", "application/json" },
};

static const char *web_type_of(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (dot == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < sizeof(web_types) / sizeof(web_types[0]); i++) {
        if (strcmp(dot + 1, web_types[i].ext) == 0) {
            return web_types[i].type;
        }
    }
    return NULL;
}

/* Whether name may be served: plain characters only, so that no request
 * path with a separator, an escape or a dot-segment can ever equal one. */
static int web_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > WEB_NAME_MAX || name[0] == '.') {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-')) {
            return 0;
        }
    }
    return web_type_of(name) != NULL;
}

static uint64_t web_hash(const char *p, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void web_set_free(web_set_t *set)
{
    if (set == NULL) {
        return;
    }
    for (size_t i = 0; i < set->nfiles; i++) {
        free(set->files[i].body);
    }
    free(set);
}

/*
 * Reads one file of dirfd into f. Returns 1 when loaded, 0 when skipped
 * (not a regular file, too large), or a negative errno.
 */
static int web_read_file(int dirfd, const char *name, web_file_t *f)
{
    /* O_NOFOLLOW: a symlink in the directory must not reach elsewhere. */
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd == -1) {
        if (errno == ELOOP) {
            return 0;
        }
        int err = errno;
        log_warn("event=web_open_failed call=openat file=%s err=\"%s\"", name, strerror(err));
        return -err;
    }
    struct stat st;
    if (fstat(fd, &st) == -1) {
        int err = errno;
        log_warn("event=web_open_failed call=fstat file=%s err=\"%s\"", name, strerror(err));
        close(fd);
        return -err;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > WEB_MAX_FILE_BYTES) {
        if (S_ISREG(st.st_mode)) {
            log_warn("event=web_file_skipped file=%s reason=\"larger than 1 MiB\"", name);
        }
        close(fd);
        return 0;
    }
    size_t want = (size_t)st.st_size;
    /* One spare byte so that an empty file still gets a real allocation. */
    char *body = malloc(want + 1);
    if (body == NULL) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < want) {
        ssize_t n = read(fd, body + got, want - got);
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            int err = errno;
            log_warn("event=web_read_failed call=read file=%s err=\"%s\"", name, strerror(err));
            free(body);
            close(fd);
            return -err;
        }
        if (n == 0) {
            break;      /* shrank while we read: serve what is there */
        }
        got += (size_t)n;
    }
    close(fd);
    /* web_name_ok() bounded the name: it fits after the slash. */
    size_t nlen = strlen(name);
    f->path[0] = '/';
    memcpy(f->path + 1, name, nlen + 1);
    f->type = web_type_of(name);
    f->body = body;
    f->len = got;
    f->hash = web_hash(body, got);
    return 1;
}

static web_file_t *web_find(web_set_t *set, const char *path)
{
    for (size_t i = 0; i < set->nfiles; i++) {
        if (strcmp(set->files[i].path, path) == 0) {
            return &set->files[i];
        }
    }
    return NULL;
}

/*
 * Rewrites every quoted reference "/name" to another loaded file in
 * index.html as "/name?v=<hash>", so that browsers fetch a new URL
 * whenever that file changes and may cache each URL forever. (The query
 * is ignored when serving.) Returns 0 or -ENOMEM (index unchanged).
 */
static int web_stamp_index(web_set_t *set, web_file_t *index)
{
    buf_t out = { 0 };
    const char *p = index->body;
    const char *end = index->body + index->len;
    while (p < end) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (q == NULL) {
            if (buf_append(&out, p, (size_t)(end - p)) != 0) {
                goto fail;
            }
            break;
        }
        /* Copy through the opening quote, then look at what it opens. */
        if (buf_append(&out, p, (size_t)(q + 1 - p)) != 0) {
            goto fail;
        }
        p = q + 1;
        const char *endq = memchr(p, '"', (size_t)(end - p));
        if (endq == NULL) {
            continue;   /* unterminated: the rest is copied as it is */
        }
        size_t n = (size_t)(endq - p);
        const web_file_t *f = NULL;
        if (n > 1 && n <= WEB_NAME_MAX + 1 && p[0] == '/') {
            char path[WEB_NAME_MAX + 2];
            memcpy(path, p, n);
            path[n] = '\0';
            f = web_find(set, path);
        }
        char stamp[32];
        int sn = 0;
        if (f != NULL && f != index) {
            sn = snprintf(stamp, sizeof(stamp), "?v=%08" PRIx32, (uint32_t)f->hash);
        }
        /* The string, its stamp if any, and the closing quote. */
        if (buf_append(&out, p, n) != 0 || buf_append(&out, stamp, (size_t)sn) != 0 ||
            buf_append(&out, "\"", 1) != 0) {
            goto fail;
        }
        p = endq + 1;
    }
    free(index->body);
    index->body = out.data;
    index->len = out.len;
    if (index->body == NULL) {
        /* An empty index still needs a non-NULL body. */
        index->body = malloc(1);
        if (index->body == NULL) {
            return -ENOMEM;
        }
    }
    return 0;

fail:
    buf_free(&out);
    return -ENOMEM;
}

/* Fills buf with the default directory. Returns 0 or WEB_E_NODIR. */
static int web_default_dir(char *buf, size_t len)
{
    const char *env = getenv("CHATD_WEB_DIR");
    if (env != NULL && env[0] != '\0') {
        int n = snprintf(buf, len, "%s", env);
        return n < 0 || (size_t)n >= len ? WEB_E_NODIR : 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n == -1) {
        log_warn("event=web_dir_unknown call=readlink err=\"%s\"", strerror(errno));
        return WEB_E_NODIR;
    }
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash == NULL) {
        return WEB_E_NODIR;
    }
    *slash = '\0';
    int m = snprintf(buf, len, "%s/../worker/web", exe);
    return m < 0 || (size_t)m >= len ? WEB_E_NODIR : 0;
}

int web_load(const char *dir)
{
    char dirbuf[PATH_MAX];
    web_tried = 1;
    if (dir == NULL) {
        int rc = web_default_dir(dirbuf, sizeof(dirbuf));
        if (rc != 0) {
            return rc;
        }
        dir = dirbuf;
    }
    web_set_t *set = calloc(1, sizeof(*set));
    if (set == NULL) {
        return -ENOMEM;
    }
    int rc = 0;
    DIR *d = opendir(dir);
    if (d == NULL) {
        rc = -errno;
        log_warn("event=web_load_failed call=opendir dir=%s err=\"%s\"", dir, strerror(errno));
        goto fail;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!web_name_ok(e->d_name)) {
            continue;
        }
        if (set->nfiles == WEB_MAX_FILES) {
            log_warn("event=web_file_skipped file=%s reason=\"more than %d files\"",
                     e->d_name, WEB_MAX_FILES);
            continue;
        }
        int got = web_read_file(dirfd(d), e->d_name, &set->files[set->nfiles]);
        if (got < 0) {
            rc = got;
            closedir(d);
            goto fail;
        }
        set->nfiles += (size_t)got;
    }
    closedir(d);

    web_file_t *index = web_find(set, "/index.html");
    if (index == NULL) {
        log_warn("event=web_load_failed dir=%s err=\"no index.html\"", dir);
        rc = WEB_E_NOINDEX;
        goto fail;
    }
    if ((rc = web_stamp_index(set, index)) != 0) {
        goto fail;
    }
    web_set_free(web_set);
    web_set = set;
    log_info("event=web_loaded dir=%s files=%zu", dir, set->nfiles);
    return (int)set->nfiles;

fail:
    web_set_free(set);
    return rc;
}

void web_unload(void)
{
    web_set_free(web_set);
    web_set = NULL;
}

/* Like conn_http_reply, but a HEAD request gets the head alone (with the
 * body's length, as HTTP requires). */
static void web_reply(conn_t *c, const web_file_t *f, const char *cache)
{
    char extra[1024];
    char head[2048];
    int n = snprintf(extra, sizeof(extra), "%s" WEB_SECURITY_HEADERS, cache);
    int hn = -1;
    if (n > 0 && (size_t)n < sizeof(extra)) {
        hn = http_response_head(head, sizeof(head), 200, f->type, extra, f->len);
    }
    int head_only = c->http != NULL && c->http->method == HTTP_HEAD;
    if (hn < 0) {
        conn_abort(c);
        return;
    }
    if (conn_send_raw(c, head, (size_t)hn) != 0 ||
        (!head_only && conn_send_raw(c, f->body, f->len) != 0)) {
        return;     /* aborted */
    }
    conn_close(c, 0, NULL);
}

int web_serve(conn_t *c, const char *path)
{
    if (web_set == NULL && !web_tried) {
        log_warn("event=web_lazy_load reason=\"web_load() was not called at start\"");
        (void)web_load(NULL);
    }
    if (web_set == NULL) {
        return 0;
    }
    int is_index = strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0;
    const web_file_t *f = web_find(web_set, is_index ? "/index.html" : path);
    if (f == NULL) {
        return 0;
    }
    web_reply(c, f, is_index ? WEB_CACHE_INDEX : WEB_CACHE_ASSET);
    return 1;
}
