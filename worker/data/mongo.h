/*
 * mongo: what the data wing's MongoDB users share: one way to read the
 * --mongo-uri (with chatd's timeouts where the URI sets none) into a
 * client pool, and mongo-c-driver's log routed into chatd's. Each user
 * (the archive, the file store) keeps its own pool, so a slow upload
 * never holds a client the archive's writes need.
 */
#ifndef CHATD_MONGO_H
#define CHATD_MONGO_H

#include <stddef.h>

#include <mongoc/mongoc.h>

/*
 * Opens a pool for uri_text and names its database in db ("chatd" when
 * the URI names none). Returns the pool with its parsed URI in *uri (both
 * the caller's, released by mongo_pool_close), or NULL (logged).
 */
mongoc_client_pool_t *mongo_pool_open(const char *uri_text, mongoc_uri_t **uri, char *db, size_t dblen);

void mongo_pool_close(mongoc_client_pool_t *pool, mongoc_uri_t *uri);

#endif
