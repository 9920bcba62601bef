/*
 * worker: one pre-forked process. It owns a fresh libuv loop, the timers,
 * the signals and the stop, and it is the one place that wires the three
 * wings together:
 *
 *   worker ──> chat ──> net   (transport: conns, HTTP, WebSocket, static files)
 *                  └──> data  (Redis bus and store, MongoDB archive)
 *
 * Calls go down by name; events come up only through the handler tables
 * worker_run() sets: net reports connections to chat and server requests
 * (/metrics, /healthz, a conn freed) to the worker; data reports Redis
 * traffic to chat. Nothing is shared with other workers except through
 * Redis and the master's metrics page.
 */
#ifndef CHATD_WORKER_H
#define CHATD_WORKER_H

#include <sys/types.h>

#include "../common/config.h"
#include "../common/metrics.h"
#include "net/tls.h"

/*
 * Runs a worker until it is told to stop. listen_fd is the listening
 * socket on --port (speaking TLS when a certificate is configured without
 * --tls-port); tls_fd the one on --tls-port, or -1. pem is the certificate
 * the master checked (NULL without TLS). ready_fd gets one byte when the
 * worker accepts. Returns the process exit status.
 */
int worker_run(const config_t *cfg, int slot, int listen_fd, int tls_fd, const tls_pem_t *pem,
               int ready_fd, metrics_t *metrics, const char *prev_wid);

#endif
