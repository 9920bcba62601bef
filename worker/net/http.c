#include "http.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

static int http_on_url(llhttp_t *p, const char *at, size_t len)
{
    http_req_t *req = p->data;
    if (req->url_len + len > HTTP_MAX_URL) {
        return -1;
    }
    memcpy(req->url + req->url_len, at, len);
    req->url_len += len;
    req->url[req->url_len] = '\0';
    return 0;
}

static int http_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    http_req_t *req = p->data;
    for (size_t i = 0; i < len; i++) {
        if (req->field_len + 1 >= sizeof(req->field)) {
            req->field_overflow = 1;
            break;
        }
        req->field[req->field_len++] = (char)tolower((unsigned char)at[i]);
    }
    req->field[req->field_len] = '\0';
    return 0;
}

static int http_on_header_field_complete(llhttp_t *p)
{
    http_req_t *req = p->data;
    req->value = NULL;
    if (req->field_overflow) {
        return 0;
    }
    static const struct {
        const char *name;
        size_t off, len_off, cap;
    } keep[] = {
#define HTTP_KEEP(name, f) { name, offsetof(http_req_t, f), offsetof(http_req_t, f##_len), sizeof(((http_req_t *)0)->f) - 1 }
        HTTP_KEEP("upgrade", upgrade),
        HTTP_KEEP("connection", connection),
        HTTP_KEEP("sec-websocket-key", ws_key),
        HTTP_KEEP("sec-websocket-version", ws_version),
        HTTP_KEEP("sec-websocket-extensions", ws_extensions),
        HTTP_KEEP("content-type", content_type),
        HTTP_KEEP("range", range),
        HTTP_KEEP("expect", expect),
        HTTP_KEEP("authorization", authorization),
#undef HTTP_KEEP
    };
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
        if (strcmp(req->field, keep[i].name) == 0) {
            req->value = (char *)req + keep[i].off;
            req->value_len = (size_t *)((char *)req + keep[i].len_off);
            req->value_cap = keep[i].cap;
            if (i == 2 && req->key_seen++) {
                req->dup_key = 1;
            }
            if (*req->value_len > 0) {
                /* Repeated headers combine as a list (RFC 9110 5.3). */
                if (*req->value_len + 1 < req->value_cap) {
                    req->value[(*req->value_len)++] = ',';
                    req->value[*req->value_len] = '\0';
                }
            }
            break;
        }
    }
    return 0;
}

static int http_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    http_req_t *req = p->data;
    if (req->value == NULL) {
        return 0;
    }
    if (*req->value_len + len > req->value_cap) {
        return -1;
    }
    memcpy(req->value + *req->value_len, at, len);
    *req->value_len += len;
    req->value[*req->value_len] = '\0';
    return 0;
}

static int http_on_header_value_complete(llhttp_t *p)
{
    http_req_t *req = p->data;
    /* Trailing white space is not part of a field value (RFC 9110 5.5). */
    if (req->value != NULL) {
        while (*req->value_len > 0 && (req->value[*req->value_len - 1] == ' ' ||
                                       req->value[*req->value_len - 1] == '\t')) {
            req->value[--*req->value_len] = '\0';
        }
    }
    req->field_len = 0;
    req->field_overflow = 0;
    req->value = NULL;
    return 0;
}

static int http_on_headers_complete(llhttp_t *p)
{
    http_req_t *req = p->data;
    req->complete = 1;
    req->method = llhttp_get_method(p);
    if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        /* A body is read only once its reader has judged the headers
         * (http_req_body): stop before its first byte. */
        req->has_body = 1;
        req->content_length = -1;
        if ((p->flags & F_CONTENT_LENGTH) != 0 && (p->flags & F_CHUNKED) == 0) {
            req->content_length = p->content_length > INT64_MAX ? INT64_MAX : (int64_t)p->content_length;
        }
        return HPE_PAUSED;
    }
    /* Stop right after the headers: bodies of GET are not read, and
     * whatever follows an upgrade belongs to the WebSocket. */
    return 2;
}

static int http_on_body(llhttp_t *p, const char *at, size_t len)
{
    http_req_t *req = p->data;
    if (req->on_body == NULL) {
        return -1;
    }
    return req->on_body(req->body_ud, at, len) == 0 ? 0 : -1;
}

static int http_on_message_complete(llhttp_t *p)
{
    http_req_t *req = p->data;
    if (!req->has_body) {
        return 0;
    }
    req->body_done = 1;
    /* One request per connection: what follows the body is not parsed. */
    return HPE_PAUSED;
}

static const llhttp_settings_t http_settings = {
    .on_url = http_on_url,
    .on_header_field = http_on_header_field,
    .on_header_field_complete = http_on_header_field_complete,
    .on_header_value = http_on_header_value,
    .on_header_value_complete = http_on_header_value_complete,
    .on_headers_complete = http_on_headers_complete,
    .on_body = http_on_body,
    .on_message_complete = http_on_message_complete,
};

void http_req_init(http_req_t *req)
{
    memset(req, 0, sizeof(*req));
    llhttp_init(&req->parser, HTTP_REQUEST, &http_settings);
    req->parser.data = req;
}

http_status_t http_req_feed(http_req_t *req, const char *data, size_t len, size_t *consumed)
{
    size_t room = HTTP_MAX_HEADER_BYTES - req->header_bytes;
    size_t n = len < room ? len : room;
    llhttp_errno_t err = llhttp_execute(&req->parser, data, n);
    if ((err == HPE_PAUSED_UPGRADE || err == HPE_PAUSED) && req->complete) {
        *consumed = (size_t)(llhttp_get_error_pos(&req->parser) - data);
        return HTTP_DONE;
    }
    if (err != HPE_OK) {
        return HTTP_BAD;
    }
    req->header_bytes += n;
    if (n < len || req->header_bytes >= HTTP_MAX_HEADER_BYTES) {
        return HTTP_TOO_BIG;
    }
    return HTTP_AGAIN;
}

http_status_t http_req_body(http_req_t *req, const char *data, size_t len)
{
    if (!req->has_body || req->body_done) {
        return req->body_done ? HTTP_DONE : HTTP_BAD;
    }
    if (llhttp_get_errno(&req->parser) == HPE_PAUSED) {
        llhttp_resume(&req->parser);
    }
    llhttp_errno_t err = llhttp_execute(&req->parser, data, len);
    if (req->body_done) {
        return HTTP_DONE;
    }
    return err == HPE_OK ? HTTP_AGAIN : HTTP_BAD;
}

int64_t http_req_content_length(const http_req_t *req)
{
    return req->has_body ? req->content_length : -1;
}

int http_req_expects_continue(const http_req_t *req)
{
    return strcasecmp(req->expect, "100-continue") == 0;
}

void http_req_split(http_req_t *req, const char **path, const char **query)
{
    char *q = strchr(req->url, '?');
    if (q != NULL) {
        *q = '\0';
        *query = q + 1;
    } else {
        *query = "";
    }
    *path = req->url;
}

/* 1 when the comma-separated list has token (case-insensitive). */
static int http_list_has(const char *list, const char *token)
{
    size_t tlen = strlen(token);
    const char *p = list;
    while (*p != '\0') {
        while (*p == ' ' || *p == '\t' || *p == ',') {
            p++;
        }
        const char *start = p;
        while (*p != '\0' && *p != ',') {
            p++;
        }
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }
        if ((size_t)(end - start) == tlen && strncasecmp(start, token, tlen) == 0) {
            return 1;
        }
    }
    return 0;
}

int http_req_check_upgrade(const http_req_t *req, const char **why)
{
    if (req->method != HTTP_GET) {
        *why = "WebSocket upgrade needs GET";
        return -1;
    }
    if (!http_list_has(req->upgrade, "websocket")) {
        *why = "missing 'Upgrade: websocket'";
        return -1;
    }
    if (!http_list_has(req->connection, "upgrade")) {
        *why = "missing 'Connection: Upgrade'";
        return -1;
    }
    if (strcmp(req->ws_version, "13") != 0) {
        *why = "Sec-WebSocket-Version must be 13";
        return -1;
    }
    /* The key is base64 of 16 bytes: 22 alphabet characters and "==". */
    int alphabet = req->ws_key_len == 24;
    for (size_t i = 0; alphabet && i < 22; i++) {
        char ch = req->ws_key[i];
        alphabet = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                   (ch >= '0' && ch <= '9') || ch == '+' || ch == '/';
    }
    if (req->dup_key || !alphabet || strcmp(req->ws_key + 22, "==") != 0) {
        *why = "Sec-WebSocket-Key must be base64 of 16 bytes";
        return -1;
    }
    return 0;
}

static int http_hex(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int http_query_get(const char *query, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    const char *p = query;
    while (*p != '\0') {
        const char *end = strchr(p, '&');
        if (end == NULL) {
            end = p + strlen(p);
        }
        if ((size_t)(end - p) > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
            size_t n = 0;
            for (const char *s = p + nlen + 1; s < end; s++) {
                int c = (unsigned char)*s;
                if (c == '%') {
                    int hi = s + 2 < end ? http_hex(s[1]) : -1;
                    int lo = hi >= 0 ? http_hex(s[2]) : -1;
                    if (lo < 0) {
                        return -2;
                    }
                    c = hi * 16 + lo;
                    s += 2;
                } else if (c == '+') {
                    c = ' ';
                }
                if (n + 1 >= outlen) {
                    return -2;
                }
                out[n++] = (char)c;
            }
            out[n] = '\0';
            if (strlen(out) != n) {
                return -2;      /* an encoded NUL */
            }
            return (int)n;
        }
        p = *end == '&' ? end + 1 : end;
    }
    return -1;
}

int http_ws_accept(const char *key, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char cat[HTTP_MAX_VALUE + sizeof(guid)];
    size_t klen = strlen(key);
    if (klen > HTTP_MAX_VALUE) {
        return -1;
    }
    memcpy(cat, key, klen);
    memcpy(cat + klen, guid, sizeof(guid) - 1);
    unsigned char digest[SHA_DIGEST_LENGTH];
    if (SHA1(cat, klen + sizeof(guid) - 1, digest) == NULL) {
        return -1;
    }
    return EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH) == 28 ? 0 : -1;
}

static const char *http_reason(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 206: return "Partial Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

int http_response_head(char *buf, size_t buflen, int status, const char *content_type,
                       const char *extra_headers, size_t body_len)
{
    int n = snprintf(buf, buflen,
                     "HTTP/1.1 %d %s\r\n"
                     "Server: chatd\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: close\r\n"
                     "%s\r\n",
                     status, http_reason(status), content_type, body_len,
                     extra_headers != NULL ? extra_headers : "");
    return n < 0 || (size_t)n >= buflen ? -1 : n;
}
