/*
 * files: file sharing over plain HTTP beside the WebSocket (protocol 1.1,
 * "Files"). POST /files?room=R streams the body into the file store as it
 * arrives, reading no faster than the store writes; GET /files/<id>
 * streams a file (or one byte range of it) back, reading no faster than
 * the client takes it. Identity is the upgrade's (?token=, ?user= in
 * development, or Authorization: Bearer) and the rights are the room's,
 * as for a join (room_allowed). The size limit (--max-file) is applied to
 * Content-Length before any byte of the body is read, and again to the
 * bytes as they come, chunked bodies included. A body that stalls, a
 * client that leaves, a store that fails: the upload is removed whole.
 */
#ifndef CHATD_FILES_H
#define CHATD_FILES_H

#include "../../common/config.h"
#include "../../common/metrics.h"
#include "../data/filestore.h"
#include "../net/conn.h"

typedef struct files_s {
    const config_t *cfg;
    filestore_t *store;         /* NULL: every request is answered 503 */
    metrics_slot_t *metrics;    /* this worker's slot */
    uint64_t transfers;         /* uploads and downloads under way */
} files_t;

void files_init(files_t *fl, const config_t *cfg, filestore_t *store, metrics_slot_t *metrics);

/* Answers or takes over a request for /files or /files/...; returns 0 for
 * any other path. */
int files_http(files_t *fl, conn_t *c, const char *path, const char *query);

#endif
