/* Unit tests of common/config: defaults, file, environment, argv. */
#include "unit.h"

#include "../../common/config.h"

#include <unistd.h>

extern char **environ;

/* Removes every CHATD_* variable so the host environment cannot leak in. */
static void clear_env(void)
{
    char names[64][128];
    int n;
    do {
        n = 0;
        for (char **e = environ; *e != NULL && n < 64; e++) {
            if (strncmp(*e, "CHATD_", 6) == 0) {
                const char *eq = strchr(*e, '=');
                size_t len = eq != NULL ? (size_t)(eq - *e) : strlen(*e);
                if (len < sizeof(names[0])) {
                    memcpy(names[n], *e, len);
                    names[n][len] = '\0';
                    n++;
                }
            }
        }
        for (int i = 0; i < n; i++) {
            unsetenv(names[i]);
        }
    } while (n == 64);
}

/* Writes text to a new temp file; returns its malloc'd path. */
static char *temp_config(const char *text)
{
    char *path = strdup("/tmp/chatd-unit-config-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) {
        free(path);
        return NULL;
    }
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len) {
        close(fd);
        unlink(path);
        free(path);
        return NULL;
    }
    close(fd);
    return path;
}

static void drop_config(char *path)
{
    if (path != NULL) {
        unlink(path);
        free(path);
    }
}

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])) - 1)

/* Loads with a clean environment; returns config_load's result. */
static int load(config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
    int exit_now = -1;
    err[0] = '\0';
    int rc = config_load(cfg, argc, argv, &exit_now, err, errlen);
    if (rc == 0 && exit_now != 0) {
        printf("    unexpected exit_now=%d\n", exit_now);
        return 99;
    }
    return rc;
}

/* Expects argv to fail, with an error message containing needle. */
static void expect_error(int argc, char **argv, const char *needle, const char *file, int line)
{
    config_t *cfg = malloc(sizeof(*cfg));
    char err[512];
    int rc = load(cfg, argc, argv, err, sizeof(err));
    unit_check_int(rc, -1, file, line, "config_load fails");
    if (rc == -1 && !unit_check(strstr(err, needle) != NULL, file, line, "error mentions the cause")) {
        printf("    err: \"%s\", wanted \"%s\"\n", err, needle);
    }
    free(cfg);
}
#define EXPECT_ERROR(argv, needle) expect_error(ARGC(argv), (argv), (needle), __FILE__, __LINE__)

TEST(defaults)
{
    clear_env();
    config_t *cfg = malloc(sizeof(*cfg));
    memset(cfg, 0x5a, sizeof(*cfg));
    char err[256];
    char *argv[] = { "chatd", NULL };
    REQUIRE_EQ_INT(load(cfg, ARGC(argv), argv, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 8080);
    CHECK_STR_EQ(cfg->bind, "127.0.0.1");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK_EQ_INT(cfg->workers, ncpu > 0 ? ncpu : 1);
    CHECK_STR_EQ(cfg->redis_url, "redis://127.0.0.1:6379");
    CHECK_STR_EQ(cfg->mongo_uri, "");
    CHECK_STR_EQ(cfg->jwt_secret, "");
    CHECK_EQ_INT(cfg->heartbeat, 25);
    CHECK_STR_EQ(cfg->config_file, "");
    CHECK_STR_EQ(cfg->pidfile, "");
    CHECK_STR_EQ(cfg->log_file, "");
    CHECK_STR_EQ(cfg->log_level, "info");
    CHECK_EQ_INT(cfg->max_message, 65536);
    CHECK_EQ_INT(cfg->max_content, 16384);
    CHECK_EQ_INT(cfg->rate, 20);
    CHECK_EQ_INT(cfg->burst, 40);
    CHECK_EQ_INT(cfg->recovery_window, 1000);
    CHECK_EQ_INT(cfg->dedup_window, 86400);
    CHECK_EQ_INT(cfg->outbound_limit, 4 << 20);
    CHECK_EQ_INT(cfg->member_events, 1000);
    CHECK_EQ_INT(cfg->max_rooms, 100);
    CHECK_EQ_INT(cfg->max_conns_per_ip, 0);
    CHECK_EQ_INT(cfg->handshake_timeout, 10);
    CHECK_EQ_INT(cfg->shutdown_timeout, 30);
    free(cfg);
}

TEST(argv_forms)
{
    clear_env();
    config_t *cfg = malloc(sizeof(*cfg));
    char err[256];
    char *a1[] = { "chatd", "--port", "9000", NULL };
    REQUIRE_EQ_INT(load(cfg, ARGC(a1), a1, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 9000);

    char *a2[] = { "chatd", "--port=9001", NULL };
    REQUIRE_EQ_INT(load(cfg, ARGC(a2), a2, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 9001);

    char *a3[] = { "chatd", "--redis-url=redis://r:1/0", "--jwt-secret", "s3cret=x", "--bind=0.0.0.0",
                   "--workers", "3", "--max-content=100", "--log-level", "debug", "--port=0", NULL };
    REQUIRE_EQ_INT(load(cfg, ARGC(a3), a3, err, sizeof(err)), 0);
    CHECK_STR_EQ(cfg->redis_url, "redis://r:1/0");
    CHECK_STR_EQ(cfg->jwt_secret, "s3cret=x");
    CHECK_STR_EQ(cfg->bind, "0.0.0.0");
    CHECK_EQ_INT(cfg->workers, 3);
    CHECK_EQ_INT(cfg->max_content, 100);
    CHECK_STR_EQ(cfg->log_level, "debug");
    CHECK_EQ_INT(cfg->port, 0);
    CHECK_EQ_INT(cfg->heartbeat, 25);       /* untouched */

    /* The last occurrence wins; '=' may carry an empty string. */
    char *a4[] = { "chatd", "--port", "1", "--port=2", "--mongo-uri=", NULL };
    REQUIRE_EQ_INT(load(cfg, ARGC(a4), a4, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 2);
    CHECK_STR_EQ(cfg->mongo_uri, "");
    free(cfg);
}

TEST(env_variables)
{
    clear_env();
    config_t *cfg = malloc(sizeof(*cfg));
    char err[256];
    char *argv[] = { "chatd", NULL };
    setenv("CHATD_PORT", "9100", 1);
    setenv("CHATD_REDIS_URL", "redis://env-host:6380", 1);
    setenv("CHATD_JWT_SECRET", "from-env", 1);
    setenv("CHATD_MAX_CONNS_PER_IP", "7", 1);
    REQUIRE_EQ_INT(load(cfg, ARGC(argv), argv, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 9100);
    CHECK_STR_EQ(cfg->redis_url, "redis://env-host:6380");
    CHECK_STR_EQ(cfg->jwt_secret, "from-env");
    CHECK_EQ_INT(cfg->max_conns_per_ip, 7);
    CHECK_EQ_INT(cfg->heartbeat, 25);

    setenv("CHATD_PORT", "nope", 1);
    CHECK_EQ_INT(load(cfg, ARGC(argv), argv, err, sizeof(err)), -1);
    CHECK(strstr(err, "CHATD_PORT") != NULL);
    setenv("CHATD_PORT", "70000", 1);
    CHECK_EQ_INT(load(cfg, ARGC(argv), argv, err, sizeof(err)), -1);
    setenv("CHATD_PORT", "", 1);
    CHECK_EQ_INT(load(cfg, ARGC(argv), argv, err, sizeof(err)), -1);
    clear_env();
    free(cfg);
}

TEST(precedence_file_env_argv)
{
    clear_env();
    char *path = temp_config("port = 7000\nheartbeat = 11\nrate = 5\n");
    REQUIRE(path != NULL);
    config_t *cfg = malloc(sizeof(*cfg));
    char err[512];

    char *a_file[] = { "chatd", "--config", path, NULL };
    CHECK_EQ_INT(load(cfg, ARGC(a_file), a_file, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 7000);
    CHECK_EQ_INT(cfg->heartbeat, 11);
    CHECK_STR_EQ(cfg->config_file, path);

    setenv("CHATD_PORT", "7100", 1);
    setenv("CHATD_RATE", "6", 1);
    CHECK_EQ_INT(load(cfg, ARGC(a_file), a_file, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 7100);          /* env over file */
    CHECK_EQ_INT(cfg->rate, 6);
    CHECK_EQ_INT(cfg->heartbeat, 11);       /* file still applies */

    char *a_all[] = { "chatd", "--port=7200", "--config", path, NULL };
    CHECK_EQ_INT(load(cfg, ARGC(a_all), a_all, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 7200);          /* argv over env (and before --config) */
    CHECK_EQ_INT(cfg->rate, 6);
    CHECK_EQ_INT(cfg->heartbeat, 11);

    /* The file named by CHATD_CONFIG, too. */
    clear_env();
    setenv("CHATD_CONFIG", path, 1);
    char *a_none[] = { "chatd", NULL };
    CHECK_EQ_INT(load(cfg, ARGC(a_none), a_none, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 7000);
    CHECK_EQ_INT(cfg->heartbeat, 11);

    /* --config beats CHATD_CONFIG. */
    char *other = temp_config("port = 7300\n");
    REQUIRE(other != NULL);
    char *a_other[] = { "chatd", "--config=x", NULL };
    a_other[1] = malloc(strlen(other) + 16);
    sprintf(a_other[1], "--config=%s", other);
    CHECK_EQ_INT(load(cfg, ARGC(a_other), a_other, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->port, 7300);
    CHECK_EQ_INT(cfg->heartbeat, 25);
    free(a_other[1]);

    clear_env();
    drop_config(other);
    drop_config(path);
    free(cfg);
}

TEST(file_syntax)
{
    clear_env();
    char *path = temp_config(
        "# a comment\n"
        "\n"
        "   \t \n"
        "   # an indented comment\n"
        "port=7001\n"
        "  bind   =   0.0.0.0   \n"
        "redis_url = \"redis://quoted:1\"\n"
        "jwt-secret = \"has spaces and = sign\"\n"
        "log_file = /var/log/chatd.log\n"
        "MAX_CONTENT = 1000\n"
        "mongo_uri = \"\"\n"
        "pidfile = \"unbalanced\n"
        "member_events = 0\n"
        "\r\n"
        "shutdown_timeout = 5\r\n"
        "files_dir = /srv/files   # a comment after a value\n"
        "log_level = \"warn\" # and after a quoted one\n"
        "ice_servers = [{\"urls\": \"stun:a#b\"}]\n"
        "tls_cert = /etc/a#b.pem\n"
        "tls_key = /etc/k.pem\n");
    REQUIRE(path != NULL);
    config_t *cfg = malloc(sizeof(*cfg));
    char err[512];
    char *argv[] = { "chatd", "--config", path, NULL };
    int rc = load(cfg, ARGC(argv), argv, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, 0)) {
        printf("    err: %s\n", err);
    } else {
        CHECK_EQ_INT(cfg->port, 7001);
        CHECK_STR_EQ(cfg->bind, "0.0.0.0");
        CHECK_STR_EQ(cfg->redis_url, "redis://quoted:1");
        CHECK_STR_EQ(cfg->jwt_secret, "has spaces and = sign");
        CHECK_STR_EQ(cfg->log_file, "/var/log/chatd.log");
        CHECK_EQ_INT(cfg->max_content, 1000);
        CHECK_STR_EQ(cfg->mongo_uri, "");
        CHECK_STR_EQ(cfg->pidfile, "\"unbalanced");
        CHECK_EQ_INT(cfg->member_events, 0);
        CHECK_EQ_INT(cfg->shutdown_timeout, 5);
        CHECK_STR_EQ(cfg->files_dir, "/srv/files");
        CHECK_STR_EQ(cfg->log_level, "warn");
        CHECK_STR_EQ(cfg->tls_cert, "/etc/a#b.pem");
        CHECK_STR_EQ(cfg->ice_servers, "[{\"urls\": \"stun:a#b\"}]");
    }
    drop_config(path);
    free(cfg);
}

/* Expects the file text to fail with an error containing needle. */
static void expect_file_error(const char *text, const char *needle, const char *file, int line)
{
    char *path = temp_config(text);
    if (!unit_check(path != NULL, file, line, "temp file")) {
        return;
    }
    char *argv[] = { "chatd", "--config", path, NULL };
    char full[600];
    snprintf(full, sizeof(full), "%s%s", path, needle);
    expect_error(ARGC(argv), argv, full, file, line);
    drop_config(path);
}
#define EXPECT_FILE_ERROR(text, needle) expect_file_error((text), (needle), __FILE__, __LINE__)

TEST(file_errors_name_the_line)
{
    clear_env();
    EXPECT_FILE_ERROR("port = 1\nbogus = 2\n", ":2: unknown key 'bogus'");
    EXPECT_FILE_ERROR("# c\n\nport = abc\n", ":3:");
    EXPECT_FILE_ERROR("# c\n\nport = abc\n", ":3: port must be an integer from 0 to 65535, not 'abc'");
    EXPECT_FILE_ERROR("port = 12abc\n", ":1:");
    EXPECT_FILE_ERROR("port = \n", ":1:");
    EXPECT_FILE_ERROR("port = 1.5\n", ":1:");
    EXPECT_FILE_ERROR("heartbeat = 10\nport = 99999\n", ":2:");
    EXPECT_FILE_ERROR("\n\n\n\njust words\n", ":5: expected 'key = value'");
    EXPECT_FILE_ERROR("config = /etc/other.conf\n", ":1: unknown key 'config'");
    /* A comment needs a space before its '#' (values may hold '#'). */
    EXPECT_FILE_ERROR("port = 9000#not a comment\n", ":1:");
    EXPECT_FILE_ERROR("= 5\n", ":1: unknown key ''");
}

TEST(file_missing)
{
    clear_env();
    char *argv[] = { "chatd", "--config", "/tmp/chatd-unit-no-such-file.conf", NULL };
    EXPECT_ERROR(argv, "cannot open config file /tmp/chatd-unit-no-such-file.conf");
    setenv("CHATD_CONFIG", "/tmp/chatd-unit-no-such-file.conf", 1);
    char *none[] = { "chatd", NULL };
    EXPECT_ERROR(none, "cannot open");
    clear_env();
}

TEST(out_of_range)
{
    clear_env();
    char *p1[] = { "chatd", "--port", "65536", NULL };
    EXPECT_ERROR(p1, "port must be an integer from 0 to 65535");
    char *p2[] = { "chatd", "--port=-1", NULL };
    EXPECT_ERROR(p2, "--port");
    char *p3[] = { "chatd", "--port=99999999999999999999", NULL };
    EXPECT_ERROR(p3, "port");
    char *p4[] = { "chatd", "--port=4294975488", NULL };     /* 2^32 + 8192: no truncation */
    EXPECT_ERROR(p4, "port");
    char *w[] = { "chatd", "--workers", "0", NULL };
    EXPECT_ERROR(w, "workers");
    char *w2[] = { "chatd", "--workers", "257", NULL };
    EXPECT_ERROR(w2, "workers");
    char *h[] = { "chatd", "--heartbeat=0", NULL };
    EXPECT_ERROR(h, "heartbeat");
    char *m[] = { "chatd", "--max-message=255", NULL };
    EXPECT_ERROR(m, "max-message");
    char *o[] = { "chatd", "--outbound-limit=4095", NULL };
    EXPECT_ERROR(o, "outbound-limit");
    char *c[] = { "chatd", "--max-conns-per-ip=-1", NULL };
    EXPECT_ERROR(c, "max-conns-per-ip");
    char *b[] = { "chatd", "--port", " 80", "--port", "80x", NULL };
    EXPECT_ERROR(b, "port");
    /* content larger than a message */
    char *mc[] = { "chatd", "--max-content=70000", NULL };
    EXPECT_ERROR(mc, "max-content");
    char *ok[] = { "chatd", "--max-content=70000", "--max-message=70000", "--port=65535", NULL };
    config_t *cfg = malloc(sizeof(*cfg));
    char err[256];
    CHECK_EQ_INT(load(cfg, ARGC(ok), ok, err, sizeof(err)), 0);
    CHECK_EQ_INT(cfg->max_content, 70000);
    CHECK_EQ_INT(cfg->port, 65535);
    free(cfg);
    /* log level */
    char *ll[] = { "chatd", "--log-level=loud", NULL };
    EXPECT_ERROR(ll, "log-level");
    /* a string longer than its field */
    char big[600];
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char *bind[] = { "chatd", "--bind", big, NULL };
    EXPECT_ERROR(bind, "too long");
}

TEST(unknown_options)
{
    clear_env();
    char *u[] = { "chatd", "--nope", "1", NULL };
    EXPECT_ERROR(u, "unknown option '--nope'");
    char *u2[] = { "chatd", "--nope=1", NULL };
    EXPECT_ERROR(u2, "unknown option");
    char *u3[] = { "chatd", "-p", "80", NULL };
    EXPECT_ERROR(u3, "unexpected argument '-p'");
    char *u4[] = { "chatd", "positional", NULL };
    EXPECT_ERROR(u4, "unexpected argument");
    char *u5[] = { "chatd", "--port", NULL };
    EXPECT_ERROR(u5, "needs a value");
    char *u6[] = { "chatd", "--por=1", NULL };
    EXPECT_ERROR(u6, "unknown option");
    char *u7[] = { "chatd", "--porta=1", NULL };
    EXPECT_ERROR(u7, "unknown option");
}

/* Runs config_load with stdout captured into out. */
static int load_captured(config_t *cfg, int argc, char **argv, int *exit_now, char *out,
                         size_t outlen)
{
    char err[256];
    char path[] = "/tmp/chatd-unit-stdout-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        return 98;
    }
    fflush(stdout);
    int saved = dup(1);
    dup2(fd, 1);
    int rc = config_load(cfg, argc, argv, exit_now, err, sizeof(err));
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    ssize_t n = pread(fd, out, outlen - 1, 0);
    out[n > 0 ? n : 0] = '\0';
    close(fd);
    unlink(path);
    return rc;
}

TEST(check_config)
{
    clear_env();
    config_t *cfg = malloc(sizeof(*cfg));
    char *out = malloc(8192);
    int exit_now = 0;
    /* Valid: says so and exits, with the options applied. */
    char *ok[] = { "chatd", "--check-config", "--port", "9", "--ice-servers", "[{\"urls\":\"stun:x\"}]", NULL };
    CHECK_EQ_INT(load_captured(cfg, ARGC(ok), ok, &exit_now, out, 8192), 0);
    CHECK_EQ_INT(exit_now, CONFIG_CHECK_ONLY);
    CHECK_STR_EQ(out, "");
    CHECK_EQ_INT(cfg->port, 9);
    /* Invalid: the same error as a start would give, nothing printed. */
    char *bad[] = { "chatd", "--port", "x", "--check-config", NULL };
    exit_now = 0;
    CHECK_EQ_INT(load_captured(cfg, ARGC(bad), bad, &exit_now, out, 8192), -1);
    CHECK_EQ_INT(exit_now, 0);
    CHECK_STR_EQ(out, "");
    char *ice[] = { "chatd", "--check-config", "--ice-servers", "[{\"url\":\"stun:x\"}]", NULL };
    CHECK_EQ_INT(load_captured(cfg, ARGC(ice), ice, &exit_now, out, 8192), -1);
    /* TLS settings that cannot work are refused before any file is read. */
    char *half[] = { "chatd", "--tls-cert", "/x.pem", NULL };
    CHECK_EQ_INT(load_captured(cfg, ARGC(half), half, &exit_now, out, 8192), -1);
    char *port_only[] = { "chatd", "--tls-port", "8443", NULL };
    CHECK_EQ_INT(load_captured(cfg, ARGC(port_only), port_only, &exit_now, out, 8192), -1);
    char *same[] = { "chatd", "--port", "8443", "--tls-port", "8443", "--tls-cert", "/x", "--tls-key", "/y", NULL };
    CHECK_EQ_INT(load_captured(cfg, ARGC(same), same, &exit_now, out, 8192), -1);
    char *tls[] = { "chatd", "--tls-port", "0", "--tls-cert", "/x", "--tls-key", "/y", NULL };
    CHECK_EQ_INT(load_captured(cfg, ARGC(tls), tls, &exit_now, out, 8192), 0);
    CHECK_EQ_INT(cfg->tls_port, 0);
    CHECK_STR_EQ(cfg->tls_cert, "/x");
    free(out);
    free(cfg);
}

TEST(help_and_version_exit_now)
{
    clear_env();
    config_t *cfg = malloc(sizeof(*cfg));
    char *out = malloc(8192);
    const char *flags[] = { "--help", "-h", "--version" };
    for (size_t i = 0; i < 3; i++) {
        char *argv[] = { "chatd", "--port", "1", (char *)flags[i], NULL };
        int exit_now = 0;
        CHECK_EQ_INT(load_captured(cfg, ARGC(argv), argv, &exit_now, out, 8192), 0);
        CHECK_EQ_INT(exit_now, 1);
        if (i < 2) {
            CHECK(strstr(out, "Usage: chatd") != NULL);
            CHECK(strstr(out, "--port") != NULL);
            CHECK(strstr(out, "--redis-url") != NULL);
            CHECK(strstr(out, "CHATD_") != NULL);
        } else {
            CHECK_STR_EQ(out, "chatd " CHATD_VERSION "\n");
        }
    }
    /* Even next to an option that would fail. */
    char *bad[] = { "chatd", "--nope", "--version", NULL };
    int exit_now = 0;
    CHECK_EQ_INT(load_captured(cfg, ARGC(bad), bad, &exit_now, out, 8192), 0);
    CHECK_EQ_INT(exit_now, 1);
    /* and exit_now is cleared by a normal load, which prints nothing */
    char *none[] = { "chatd", NULL };
    CHECK_EQ_INT(load_captured(cfg, ARGC(none), none, &exit_now, out, 8192), 0);
    CHECK_EQ_INT(exit_now, 0);
    CHECK_STR_EQ(out, "");
    free(out);
    free(cfg);
}

/* The master's "only the certificate changed" test rests on this. */
TEST(config_equal_compares_settings)
{
    clear_env();
    config_t *a = malloc(sizeof(*a)), *b = malloc(sizeof(*b));
    char err[256];
    char *one[] = { "chatd", "--port", "9", "--tls-cert", "/c", "--tls-key", "/k", NULL };
    CHECK_EQ_INT(load(a, ARGC(one), one, err, sizeof(err)), 0);
    CHECK_EQ_INT(load(b, ARGC(one), one, err, sizeof(err)), 0);
    CHECK(config_equal(a, b));
    /* Bytes past a string's end are not settings. */
    memset(b->tls_cert + 3, 'x', 10);
    CHECK(config_equal(a, b));
    char *other[] = { "chatd", "--port", "9", "--tls-cert", "/c", "--tls-key", "/k", "--rate", "7", NULL };
    CHECK_EQ_INT(load(b, ARGC(other), other, err, sizeof(err)), 0);
    CHECK(!config_equal(a, b));
    char *moved[] = { "chatd", "--port", "9", "--tls-cert", "/c2", "--tls-key", "/k", NULL };
    CHECK_EQ_INT(load(b, ARGC(moved), moved, err, sizeof(err)), 0);
    CHECK(!config_equal(a, b));
    free(a);
    free(b);
}

int main(void)
{
    int rc = unit_main();
    clear_env();
    return rc;
}
