#include "config.h"
#include "log.h"

#include <cjson/cJSON.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

typedef enum { OPT_INT, OPT_STR, OPT_FLAG } opt_kind_t;

typedef struct {
    const char *name;       /* long option and config-file key */
    opt_kind_t kind;
    size_t offset;
    size_t size;            /* for OPT_STR: capacity of the char array */
    long min, max;          /* for OPT_INT */
    const char *help;
} opt_t;

#define OPT_I(n, f, lo, hi, h) { n, OPT_INT, offsetof(config_t, f), 0, lo, hi, h }
#define OPT_S(n, f, h) { n, OPT_STR, offsetof(config_t, f), sizeof(((config_t *)0)->f), 0, 0, h }
#define OPT_F(n, f, h) { n, OPT_FLAG, offsetof(config_t, f), 0, 0, 1, h }

static const opt_t config_opts[] = {
    OPT_I("port", port, 0, 65535, "TCP port to listen on (default 8080)"),
    OPT_S("bind", bind, "address to bind (default 127.0.0.1)"),
    OPT_I("workers", workers, 1, 256, "worker processes (default: CPU count)"),
    OPT_S("redis-url", redis_url, "Redis URL (default redis://127.0.0.1:6379)"),
    OPT_S("redis-cluster", redis_cluster, "Redis Cluster seed nodes HOST:PORT[,HOST:PORT...] (instead of one Redis)"),
    OPT_I("ack-replicas", ack_replicas, 0, 16, "replicas that must hold a message before its ack (default 0)"),
    OPT_I("ack-timeout", ack_timeout, 10, 60000, "ms to wait for --ack-replicas before 'unavailable' (default 1000)"),
    OPT_S("mongo-uri", mongo_uri, "MongoDB URI for the message archive (default: none)"),
    OPT_S("jwt-secret", jwt_secret, "HS256 secret; without it ?user= is accepted (development)"),
    OPT_I("heartbeat", heartbeat, 1, 3600, "seconds between WebSocket pings (default 25)"),
    OPT_S("config", config_file, "config file of 'key = value' lines"),
    OPT_S("pidfile", pidfile, "file to write the master pid to"),
    OPT_S("log-file", log_file, "log file (default stderr)"),
    OPT_S("log-level", log_level, "debug, info, warn or error (default info)"),
    OPT_I("max-message", max_message, 256, 16 << 20, "largest WebSocket message in bytes (default 65536)"),
    OPT_I("max-content", max_content, 1, 16 << 20, "largest chat content in bytes (default 16384)"),
    OPT_I("rate", rate, 1, 1000000, "chat+typing requests per second per connection (default 20)"),
    OPT_I("burst", burst, 1, 1000000, "rate-limit burst (default 40)"),
    OPT_I("recovery-window", recovery_window, 1, 10000000, "messages kept per room for recovery (default 1000)"),
    OPT_I("dedup-window", dedup_window, 1, 365 * 86400, "seconds a chat id is remembered (default 86400)"),
    OPT_I("outbound-limit", outbound_limit, 4096, 1 << 30, "bytes queued to one client before 1013 (default 4 MiB)"),
    OPT_I("write-delay", write_delay, 0, 100, "ms output may wait to be coalesced into fewer writes (default 0)"),
    OPT_I("member-events", member_events, 0, 10000000, "room size up to which member events are sent (default 1000)"),
    OPT_I("max-rooms", max_rooms, 1, 100000, "rooms one connection may join (default 100)"),
    OPT_I("max-conns-per-ip", max_conns_per_ip, 0, 10000000, "connections per client address per worker, 0 = unlimited"),
    OPT_I("handshake-timeout", handshake_timeout, 1, 3600, "seconds to complete the upgrade (default 10)"),
    OPT_I("shutdown-timeout", shutdown_timeout, 1, 3600, "seconds a graceful stop may take (default 30)"),
    OPT_I("max-file", max_file, 1, 1 << 30, "largest uploaded file in bytes (default 10485760)"),
    OPT_S("files-dir", files_dir, "directory for uploaded files without --mongo-uri (default var/files)"),
    OPT_F("deflate", deflate, "offer permessage-deflate (RFC 7692) to clients that ask (default off)"),
    OPT_S("ice-servers", ice_servers, "STUN/TURN servers for calls, a JSON array of RTCIceServer (default [])"),
    OPT_S("tls-cert", tls_cert, "PEM certificate (leaf, then chain): serve TLS (wss://, https://)"),
    OPT_S("tls-key", tls_key, "PEM private key of --tls-cert"),
    OPT_I("tls-port", tls_port, 0, 65535, "serve TLS on this port and plain on --port (default: TLS on --port only)"),
};

#define CONFIG_NOPTS (sizeof(config_opts) / sizeof(config_opts[0]))

static void config_defaults(config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->port = 8080;
    snprintf(cfg->bind, sizeof(cfg->bind), "127.0.0.1");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->workers = ncpu > 0 ? (int)ncpu : 1;
    snprintf(cfg->redis_url, sizeof(cfg->redis_url), "redis://127.0.0.1:6379");
    cfg->ack_timeout = 1000;
    cfg->heartbeat = 25;
    snprintf(cfg->log_level, sizeof(cfg->log_level), "info");
    cfg->max_message = 65536;
    cfg->max_content = 16384;
    cfg->rate = 20;
    cfg->burst = 40;
    cfg->recovery_window = 1000;
    cfg->dedup_window = 86400;
    cfg->outbound_limit = 4 << 20;
    cfg->member_events = 1000;
    cfg->max_rooms = 100;
    cfg->max_conns_per_ip = 0;
    cfg->handshake_timeout = 10;
    cfg->shutdown_timeout = 30;
    cfg->max_file = 10 << 20;
    snprintf(cfg->files_dir, sizeof(cfg->files_dir), "var/files");
    cfg->tls_port = -1;
}

int config_equal(const config_t *a, const config_t *b)
{
    for (size_t i = 0; i < CONFIG_NOPTS; i++) {
        const opt_t *o = &config_opts[i];
        const char *fa = (const char *)a + o->offset, *fb = (const char *)b + o->offset;
        if (o->kind == OPT_STR ? strcmp(fa, fb) != 0 : memcmp(fa, fb, sizeof(int)) != 0) {
            return 0;
        }
    }
    return 1;
}

/* --ice-servers reaches browsers as given: an array of RTCIceServer
 * objects, each with "urls" (a string or an array of strings). */
static int config_ice_servers_valid(const char *text)
{
    cJSON *a = cJSON_Parse(text);
    int ok = cJSON_IsArray(a);
    const cJSON *s;
    cJSON_ArrayForEach(s, a) {
        const cJSON *urls = cJSON_GetObjectItemCaseSensitive(s, "urls");
        ok = ok && cJSON_IsObject(s) && (cJSON_IsString(urls) || cJSON_IsArray(urls));
    }
    cJSON_Delete(a);
    return ok;
}

static const opt_t *config_find(const char *name, size_t len)
{
    for (size_t i = 0; i < CONFIG_NOPTS; i++) {
        const char *o = config_opts[i].name;
        if (strlen(o) != len) {
            continue;
        }
        size_t j = 0;
        /* Config keys may use '_' where options use '-'. */
        for (; j < len; j++) {
            char c = name[j] == '_' ? '-' : (char)tolower((unsigned char)name[j]);
            if (c != o[j]) {
                break;
            }
        }
        if (j == len) {
            return &config_opts[i];
        }
    }
    return NULL;
}

static int config_set(config_t *cfg, const opt_t *o, const char *value,
                      const char *origin, char *err, size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    if (o->kind == OPT_STR) {
        size_t n = strlen(value);
        if (n >= o->size) {
            snprintf(err, errlen, "%s: value of %s is too long (max %zu)", origin, o->name, o->size - 1);
            return -1;
        }
        memcpy(field, value, n + 1);
        return 0;
    }
    if (o->kind == OPT_FLAG) {
        /* A bare --flag on the command line; 1/0, true/false, yes/no, on/off elsewhere. */
        static const char *const yes[] = { "1", "true", "yes", "on" }, *const no[] = { "0", "false", "no", "off" };
        for (size_t i = 0; i < 4; i++) {
            if (strcasecmp(value, yes[i]) == 0 || strcasecmp(value, no[i]) == 0) {
                memcpy(field, &(int){ strcasecmp(value, yes[i]) == 0 }, sizeof(int));
                return 0;
            }
        }
        snprintf(err, errlen, "%s: %s must be 1 or 0 (true/false, yes/no, on/off), not '%s'", origin, o->name, value);
        return -1;
    }
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || v < o->min || v > o->max) {
        snprintf(err, errlen, "%s: %s must be an integer from %ld to %ld, not '%s'",
                 origin, o->name, o->min, o->max, value);
        return -1;
    }
    memcpy(field, &(int){ (int)v }, sizeof(int));
    return 0;
}

static char *config_trim(char *s)
{
    while (isspace((unsigned char)*s)) {
        s++;
    }
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) {
        *--e = '\0';
    }
    return s;
}

static int config_read_file(config_t *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open config file %s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int lineno = 0;
    int rc = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        char *s = config_trim(line);
        if (*s == '\0' || *s == '#') {
            continue;
        }
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            snprintf(err, errlen, "%s:%d: expected 'key = value'", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = config_trim(s);
        char *value = config_trim(eq + 1);
        char *close = value[0] == '"' ? strrchr(value + 1, '"') : NULL;
        char *after = close != NULL ? close + 1 : NULL;
        while (after != NULL && isspace((unsigned char)*after)) {
            after++;
        }
        if (after != NULL && (*after == '\0' || *after == '#')) {
            /* A quoted value is taken whole; a comment may follow it. */
            *close = '\0';
            value++;
        } else {
            /* "key = value   # why": a '#' after a space starts a comment. */
            for (char *p = value; *p != '\0'; p++) {
                if (*p == '#' && p > value && isspace((unsigned char)p[-1])) {
                    *p = '\0';
                    value = config_trim(value);
                    break;
                }
            }
        }
        const opt_t *o = config_find(key, strlen(key));
        if (o == NULL || strcmp(o->name, "config") == 0) {
            snprintf(err, errlen, "%s:%d: unknown key '%s'", path, lineno, key);
            rc = -1;
            break;
        }
        char origin[1100];
        snprintf(origin, sizeof(origin), "%s:%d", path, lineno);
        if (config_set(cfg, o, value, origin, err, errlen) != 0) {
            rc = -1;
            break;
        }
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, errlen, "reading %s: %s", path, strerror(errno));
        rc = -1;
    }
    fclose(f);
    return rc;
}

static void config_env_name(const opt_t *o, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "CHATD_");
    for (const char *p = o->name; *p != '\0' && n + 1 < len; p++) {
        buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    }
    buf[n] = '\0';
}

void config_print_ok(const config_t *cfg)
{
    /* As nginx -t: the whole configuration was read and is valid. */
    if (cfg->config_file[0] != '\0') {
        printf("chatd: configuration ok (%s)\n", cfg->config_file);
    } else {
        printf("chatd: configuration ok\n");
    }
}

void config_usage(const char *prog)
{
    printf("Usage: %s [options]\n\nchatd %s: a WebSocket chat server.\n"
           "Every option is also read from the environment as CHATD_<NAME>\n"
           "(e.g. CHATD_REDIS_URL) and from the config file as 'name = value'.\n\n",
           prog, CHATD_VERSION);
    for (size_t i = 0; i < CONFIG_NOPTS; i++) {
        const opt_t *o = &config_opts[i];
        printf("  --%-20s %s\n", o->name, o->help);
    }
    printf("  --%-20s %s\n  --%-20s %s\n  --%-20s %s\n", "check-config",
           "check the configuration (file, environment, options) and exit", "help", "print this text",
           "version", "print the version");
}

/*
 * Splits "--name=value" or "--name value". Returns the option, with *value
 * set, or NULL with a message in err.
 */
static const opt_t *config_arg(int argc, char **argv, int *i, const char **value,
                               char *err, size_t errlen)
{
    const char *a = argv[*i];
    if (strncmp(a, "--", 2) != 0) {
        snprintf(err, errlen, "unexpected argument '%s' (see --help)", a);
        return NULL;
    }
    const char *name = a + 2;
    const char *eq = strchr(name, '=');
    size_t len = eq != NULL ? (size_t)(eq - name) : strlen(name);
    const opt_t *o = config_find(name, len);
    if (o == NULL) {
        snprintf(err, errlen, "unknown option '%s' (see --help)", a);
        return NULL;
    }
    if (eq != NULL) {
        *value = eq + 1;
    } else if (o->kind == OPT_FLAG) {
        *value = "1";
    } else if (*i + 1 < argc) {
        *value = argv[++*i];
    } else {
        snprintf(err, errlen, "option --%s needs a value", o->name);
        return NULL;
    }
    return o;
}

int config_load(config_t *cfg, int argc, char **argv, int *exit_now,
                char *err, size_t errlen)
{
    *exit_now = 0;
    int check_only = 0;
    for (int i = 1; i < argc; i++) {
        check_only |= strcmp(argv[i], "--check-config") == 0;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            config_usage(argv[0]);
            *exit_now = 1;
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("chatd %s\n", CHATD_VERSION);
            *exit_now = 1;
            return 0;
        }
    }

    config_defaults(cfg);

    /* The config file is named by the environment or argv, but it is the
     * weakest source: find its name first, apply the rest on top. */
    const char *file = getenv("CHATD_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--check-config") == 0) {
            continue;
        }
        const char *value = NULL;
        const opt_t *o = config_arg(argc, argv, &i, &value, err, errlen);
        if (o == NULL) {
            return -1;
        }
        if (strcmp(o->name, "config") == 0) {
            file = value;
        }
    }
    if (file != NULL && file[0] != '\0') {
        if (config_read_file(cfg, file, err, errlen) != 0) {
            return -1;
        }
    }

    for (size_t k = 0; k < CONFIG_NOPTS; k++) {
        char env[64];
        config_env_name(&config_opts[k], env, sizeof(env));
        const char *v = getenv(env);
        if (v != NULL && config_set(cfg, &config_opts[k], v, env, err, errlen) != 0) {
            return -1;
        }
    }

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--check-config") == 0) {
            continue;
        }
        const char *value = NULL;
        const opt_t *o = config_arg(argc, argv, &i, &value, err, errlen);
        char origin[80];
        snprintf(origin, sizeof(origin), "--%s", o->name);
        if (config_set(cfg, o, value, origin, err, errlen) != 0) {
            return -1;
        }
    }

    if (log_level_parse(cfg->log_level) < 0) {
        snprintf(err, errlen, "log-level must be debug, info, warn or error, not '%s'", cfg->log_level);
        return -1;
    }
    if (cfg->max_content > cfg->max_message) {
        snprintf(err, errlen, "max-content (%d) cannot exceed max-message (%d)",
                 cfg->max_content, cfg->max_message);
        return -1;
    }
    if (cfg->ice_servers[0] != '\0' && !config_ice_servers_valid(cfg->ice_servers)) {
        snprintf(err, errlen, "ice-servers must be a JSON array of objects with \"urls\"");
        return -1;
    }
    if ((cfg->tls_cert[0] != '\0') != (cfg->tls_key[0] != '\0')) {
        snprintf(err, errlen, "tls-cert and tls-key go together");
        return -1;
    }
    if (cfg->tls_port >= 0 && cfg->tls_cert[0] == '\0') {
        snprintf(err, errlen, "tls-port needs tls-cert and tls-key");
        return -1;
    }
    if (cfg->tls_port > 0 && cfg->tls_port == cfg->port) {
        snprintf(err, errlen, "tls-port must differ from port (leave it out to serve only TLS on port)");
        return -1;
    }
    if (check_only) {
        /* The caller finishes the check (files the config names) and
         * says so (config_print_ok). */
        *exit_now = CONFIG_CHECK_ONLY;
    }
    return 0;
}
