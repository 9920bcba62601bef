/*
 * web: the browser client's static files under GET /. Until the client
 * ships (its own issue), no path is served here and callers answer 404.
 */
#ifndef CHATD_WEB_H
#define CHATD_WEB_H

typedef struct conn_s conn_t;

/* Answers GET path when it names a client file; returns 1 if answered. */
int web_serve(conn_t *c, const char *path);

#endif
