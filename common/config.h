/*
 * config: every setting of chatd, from defaults, the config file, the
 * environment (CHATD_<NAME>) and the command line, in that order of rising
 * precedence. A config_t is a plain value (no pointers), so the master can
 * keep the old one when a reload fails and workers inherit it across fork.
 */
#ifndef CHATD_CONFIG_H
#define CHATD_CONFIG_H

#include <stddef.h>

#define CHATD_VERSION "0.1.0"

typedef struct config_s {
    int port;
    char bind[256];
    int workers;
    char redis_url[512];
    char redis_cluster[1024];   /* seed nodes; "" = one Redis at redis_url */
    int ack_replicas;           /* replicas holding a message before its ack */
    int ack_timeout;            /* ms to wait for them */
    char mongo_uri[1024];
    char jwt_secret[512];
    int heartbeat;              /* seconds between server pings */
    char config_file[1024];
    char pidfile[1024];
    char log_file[1024];
    char log_level[16];
    int max_message;            /* bytes, one WebSocket message */
    int max_content;            /* bytes, chat content */
    int rate;                   /* chat+typing per second */
    int burst;
    int recovery_window;        /* messages kept per room for since */
    int dedup_window;           /* seconds */
    int outbound_limit;         /* bytes queued to one client */
    int write_delay;            /* ms output may wait to leave in a bigger write; 0 = each loop iteration */
    int member_events;          /* room size up to which member events go */
    int max_rooms;              /* rooms one connection may join */
    int max_conns_per_ip;       /* 0 = unlimited */
    int handshake_timeout;      /* seconds to finish the HTTP upgrade */
    int shutdown_timeout;       /* seconds a graceful stop may take */
    int max_file;               /* bytes, one uploaded file */
    char files_dir[1024];       /* uploads without --mongo-uri */
    char ice_servers[4096];     /* JSON array of RTCIceServer, for welcome */
    int deflate;                /* negotiate permessage-deflate */
    char tls_cert[1024];        /* "" = no TLS */
    char tls_key[1024];
    int tls_port;               /* -1: TLS (if any) on port itself */
} config_t;

/* config_load's *exit_now for --check-config: the configuration loaded;
 * the caller checks what it names and then calls config_print_ok(). */
#define CONFIG_CHECK_ONLY 2

/*
 * Builds cfg from defaults, then the config file (--config or CHATD_CONFIG),
 * then CHATD_* variables, then argv. On --help or --version sets *exit_now
 * to 1 after printing. Returns 0, or -1 with a message in err.
 */
int config_load(config_t *cfg, int argc, char **argv, int *exit_now,
                char *err, size_t errlen);

/* Whether a and b hold the same settings. */
int config_equal(const config_t *a, const config_t *b);

/* Prints --check-config's verdict for a valid configuration. */
void config_print_ok(const config_t *cfg);

/* Prints the usage text to stdout. */
void config_usage(const char *prog);

#endif
