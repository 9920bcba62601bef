#include "mongo.h"
#include "../../common/log.h"

#include <stdio.h>

/* mongo-c-driver's own log, into chatd's: warnings and errors only (its
 * default handler prints every monitor retry to stdout). Called on the
 * driver's threads; log_write is one write(2) per line. */
static void mongo_on_log(mongoc_log_level_t level, const char *domain, const char *message,
                         void *user_data)
{
    (void)user_data;
    if (level <= MONGOC_LOG_LEVEL_ERROR) {
        log_error("event=mongoc domain=%s msg=\"%s\"", domain, message);
    } else if (level == MONGOC_LOG_LEVEL_WARNING) {
        log_warn("event=mongoc domain=%s msg=\"%s\"", domain, message);
    }
}

mongoc_client_pool_t *mongo_pool_open(const char *uri_text, mongoc_uri_t **uri, char *db, size_t dblen)
{
    mongoc_log_set_handler(mongo_on_log, NULL);
    mongoc_init();
    bson_error_t err;
    *uri = mongoc_uri_new_with_error(uri_text, &err);
    if (*uri == NULL) {
        log_error("event=bad_mongo_uri err=\"%s\"", err.message);
        mongoc_cleanup();
        return NULL;
    }
    /* Fail fast while MongoDB is away: callers retry or answer 503. */
    if (!mongoc_uri_has_option(*uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(*uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, 2000);
    }
    if (!mongoc_uri_has_option(*uri, MONGOC_URI_CONNECTTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(*uri, MONGOC_URI_CONNECTTIMEOUTMS, 2000);
    }
    if (!mongoc_uri_has_option(*uri, MONGOC_URI_SOCKETTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(*uri, MONGOC_URI_SOCKETTIMEOUTMS, 10000);
    }
    const char *name = mongoc_uri_get_database(*uri);
    snprintf(db, dblen, "%s", name != NULL && name[0] != '\0' ? name : "chatd");
    mongoc_client_pool_t *pool = mongoc_client_pool_new_with_error(*uri, &err);
    if (pool == NULL) {
        log_error("event=mongo_pool_failed err=\"%s\"", err.message);
        mongoc_uri_destroy(*uri);
        *uri = NULL;
        mongoc_cleanup();
        return NULL;
    }
    mongoc_client_pool_set_error_api(pool, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_pool_set_appname(pool, "chatd");
    return pool;
}

void mongo_pool_close(mongoc_client_pool_t *pool, mongoc_uri_t *uri)
{
    if (pool == NULL) {
        return;
    }
    mongoc_client_pool_destroy(pool);
    mongoc_uri_destroy(uri);
    mongoc_cleanup();
}
