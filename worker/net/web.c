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
#include <stddef.h>
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
 * web_stamp_index), and so do the scripts' module imports (see
 * web_stamp_script), so every file but index.html may be cached for good:
 * a new build is a new URL. index.html itself is revalidated on every
 * load. */
#define WEB_CACHE_INDEX "Cache-Control: no-cache\r\n"
#define WEB_CACHE_ASSET "Cache-Control: public, max-age=31536000, immutable\r\n"

/* A script's imports are kept as a bit set over the loaded files. */
_Static_assert(WEB_MAX_FILES <= 64, "web_file_t.imports has one bit per file");

typedef struct web_file_s {
    char path[WEB_NAME_MAX + 2];    /* "/name", as requested */
    const char *type;
    char *body;                     /* malloc'd */
    size_t len;
    uint64_t hash;                  /* FNV-1a of the file as read */
    uint64_t imports;               /* bit i: this script imports files[i] */
    uint64_t version;               /* the stamp: see web_set_versions */
} web_file_t;

typedef struct web_set_s {
    web_file_t files[WEB_MAX_FILES];
    size_t nfiles;
} web_set_t;

static web_set_t *web_set;      /* NULL until loaded */
static int web_tried;           /* a load was attempted (lazy or explicit) */

#define WEB_TYPE_JS "text/javascript; charset=utf-8"

static const struct {
    const char *ext;
    const char *type;
} web_types[] = {
    { "html", "text/html; charset=utf-8" },
    { "js", WEB_TYPE_JS },
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

#define WEB_HASH_INIT 1469598103934665603ULL

/* FNV-1a of len bytes at p, continuing from h (WEB_HASH_INIT to start). */
static uint64_t web_hash_more(uint64_t h, const void *p, size_t len)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t web_hash(const char *p, size_t len)
{
    return web_hash_more(WEB_HASH_INIT, p, len);
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

static int web_is_script(const web_file_t *f)
{
    return strcmp(f->type, WEB_TYPE_JS) == 0;
}

/* Orders files by path, so that every host serving the same files computes
 * the same versions (see web_set_versions), whatever its readdir order. */
static int web_cmp_path(const void *a, const void *b)
{
    return strcmp(((const web_file_t *)a)->path, ((const web_file_t *)b)->path);
}

/* Writes the "?v=<hex>" stamp of f into out (at least 16 bytes) and
 * returns its length. */
static size_t web_stamp_of(const web_file_t *f, char *out, size_t size)
{
    int n = snprintf(out, size, "?v=%08" PRIx32, (uint32_t)f->version);
    return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

/* Whether ch may continue a JavaScript identifier. ASCII is enough: it only
 * decides whether "from" or "import" stands as a word of its own. */
static int web_ident_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '$' || ch == '.' || (unsigned char)ch >= 0x80;
}

static const char *web_skip_space_back(const char *start, const char *p)
{
    while (p > start && (p[-1] == ' ' || p[-1] == '\t' || p[-1] == '\n' || p[-1] == '\r')) {
        p--;
    }
    return p;
}

/* Whether the text of [start, p) ends with the word kw. */
static int web_ends_with_word(const char *start, const char *p, const char *kw)
{
    size_t n = strlen(kw);
    if ((size_t)(p - start) < n || memcmp(p - n, kw, n) != 0) {
        return 0;
    }
    return p - n == start || !web_ident_char(p[-(ptrdiff_t)n - 1]);
}

/*
 * Finds the first module specifier of script f at or after from: a string
 * in single or double quotes right after the word "from" or "import" (or
 * "import(", a dynamic import) that names a loaded file as "./name" or
 * "/name". Stores where the string's text starts and its length, and
 * returns the file it names, or NULL when there is none left. Any other
 * string ("../x", a template literal, a name that is not loaded) is left
 * alone: such an import simply goes without a stamp.
 */
static web_file_t *web_next_import(web_set_t *set, const web_file_t *f, const char *from,
                                   const char **spec, size_t *len)
{
    const char *start = f->body;
    const char *end = f->body + f->len;
    for (const char *q = from; q < end; q++) {
        if (*q != '"' && *q != '\'') {
            continue;
        }
        const char *b = web_skip_space_back(start, q);
        if (b > start && b[-1] == '(') {
            if (!web_ends_with_word(start, web_skip_space_back(start, b - 1), "import")) {
                continue;
            }
        } else if (!web_ends_with_word(start, b, "from") && !web_ends_with_word(start, b, "import")) {
            continue;
        }
        /* The longest specifier that can name a file is "./" + name. */
        const char *s = q + 1;
        size_t room = (size_t)(end - s);
        const char *close = memchr(s, *q, room < WEB_NAME_MAX + 3 ? room : WEB_NAME_MAX + 3);
        if (close == NULL) {
            continue;
        }
        size_t n = (size_t)(close - s);
        size_t skip = n > 2 && s[0] == '.' && s[1] == '/' ? 1 : 0;   /* "./x" is "/x" */
        if (n - skip < 2 || n - skip > WEB_NAME_MAX + 1 || s[skip] != '/' ||
            memchr(s, '\0', n) != NULL) {
            continue;
        }
        char path[WEB_NAME_MAX + 2];
        memcpy(path, s + skip, n - skip);
        path[n - skip] = '\0';
        web_file_t *t = web_find(set, path);
        if (t != NULL) {
            *spec = s;
            *len = n;
            return t;
        }
    }
    return NULL;
}

/* Records in each script's imports the files its specifiers name. */
static void web_scan_imports(web_set_t *set)
{
    for (size_t i = 0; i < set->nfiles; i++) {
        web_file_t *f = &set->files[i];
        if (!web_is_script(f)) {
            continue;
        }
        const char *p = f->body;
        const char *spec;
        size_t n;
        web_file_t *t;
        while ((t = web_next_import(set, f, p, &spec, &n)) != NULL) {
            f->imports |= UINT64_C(1) << (size_t)(t - set->files);
            p = spec + n + 1;
        }
    }
}

static uint64_t web_hash_u64(uint64_t h, uint64_t x)
{
    uint8_t b[8];
    for (int k = 0; k < 8; k++) {
        b[k] = (uint8_t)(x >> (8 * k));
    }
    return web_hash_more(h, b, sizeof(b));
}

/*
 * Gives every file its version. A script's served bytes name the versions
 * of the modules it imports (web_stamp_script), so its version must change
 * whenever any of them does, or a browser holding the old bytes under an
 * immutable URL would keep importing stale modules. Hence a script's
 * version hashes its own bytes and those of every file it reaches through
 * imports, directly or not, cycles included; any other file's version is
 * the hash of its bytes. A module whose reach did not change keeps its URL,
 * and the browser its cached copy.
 */
static void web_set_versions(web_set_t *set)
{
    uint64_t reach[WEB_MAX_FILES];
    for (size_t i = 0; i < set->nfiles; i++) {
        reach[i] = set->files[i].imports;
    }
    /* Transitive closure: at most nfiles rounds, on at most 64 files. */
    for (int grew = 1; grew;) {
        grew = 0;
        for (size_t i = 0; i < set->nfiles; i++) {
            uint64_t r = reach[i];
            for (size_t j = 0; j < set->nfiles; j++) {
                if (reach[i] & (UINT64_C(1) << j)) {
                    r |= reach[j];
                }
            }
            if (r != reach[i]) {
                reach[i] = r;
                grew = 1;
            }
        }
    }
    for (size_t i = 0; i < set->nfiles; i++) {
        web_file_t *f = &set->files[i];
        f->version = f->hash;
        if (reach[i] == 0) {
            continue;
        }
        uint64_t v = web_hash_u64(WEB_HASH_INIT, f->hash);
        for (size_t j = 0; j < set->nfiles; j++) {
            if (j != i && (reach[i] & (UINT64_C(1) << j))) {
                v = web_hash_u64(v, set->files[j].hash);
            }
        }
        f->version = v;
    }
}

/*
 * Rewrites each module specifier of script f (see web_next_import) as the
 * same string followed by "?v=<version>" of the file it names. Every
 * importer of a module names the same URL, so the browser still runs one
 * instance of it. Returns 0 or -ENOMEM (f unchanged).
 */
static int web_stamp_script(web_set_t *set, web_file_t *f)
{
    if (f->imports == 0) {
        return 0;
    }
    buf_t out = { 0 };
    const char *copied = f->body;
    const char *end = f->body + f->len;
    const char *spec;
    size_t n;
    const web_file_t *t;
    while ((t = web_next_import(set, f, copied, &spec, &n)) != NULL) {
        char stamp[32];
        size_t sn = web_stamp_of(t, stamp, sizeof(stamp));
        if (buf_append(&out, copied, (size_t)(spec + n - copied)) != 0 ||
            buf_append(&out, stamp, sn) != 0) {
            goto fail;
        }
        copied = spec + n;      /* the closing quote, copied next round */
    }
    if (buf_append(&out, copied, (size_t)(end - copied)) != 0) {
        goto fail;
    }
    free(f->body);
    f->body = out.data;
    f->len = out.len;
    return 0;

fail:
    buf_free(&out);
    return -ENOMEM;
}

/*
 * Rewrites every quoted reference "/name" to another loaded file in
 * index.html as "/name?v=<version>", so that browsers fetch a new URL
 * whenever that file (or, for a script, a module it imports) changes and
 * may cache each URL forever. (The query is ignored when serving.)
 * Returns 0 or -ENOMEM (index unchanged).
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
        size_t sn = 0;
        if (f != NULL && f != index) {
            sn = web_stamp_of(f, stamp, sizeof(stamp));
        }
        /* The string, its stamp if any, and the closing quote. */
        if (buf_append(&out, p, n) != 0 || buf_append(&out, stamp, sn) != 0 ||
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
    /* The source tree's bin/chatd, else an installed sbin/chatd beside
     * share/chatd/web (make install, the Debian package). */
    int m = snprintf(buf, len, "%s/../worker/web", exe);
    if (m >= 0 && (size_t)m < len && access(buf, F_OK) == 0) {
        return 0;
    }
    m = snprintf(buf, len, "%s/../share/chatd/web", exe);
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

    qsort(set->files, set->nfiles, sizeof(set->files[0]), web_cmp_path);
    web_scan_imports(set);
    web_set_versions(set);
    for (size_t i = 0; i < set->nfiles; i++) {
        if (web_is_script(&set->files[i]) && (rc = web_stamp_script(set, &set->files[i])) != 0) {
            goto fail;
        }
    }
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
