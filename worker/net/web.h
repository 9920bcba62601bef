/*
 * web: the browser client's static files under GET /.
 *
 * The files of one directory (worker/web in the source tree) are read into
 * memory once, by web_load() at worker start, so that answering a request
 * never touches the disk on the event loop. Only the exact names of the
 * loaded files are served ("/" is index.html); every other path, including
 * anything with "..", percent-encoding or a subdirectory, is left to the
 * caller's 404. The loaded files are process-wide state owned by this
 * module and live until web_unload().
 *
 * Every file but index.html is served as immutable, so a URL must never
 * name two different bodies: index.html's quoted "/name" references and
 * the scripts' module specifiers ("./name" or "/name" after `from`,
 * `import` or `import(`) get a "?v=<version>" stamp, where a script's
 * version covers every module it imports, directly or not.
 */
#ifndef CHATD_WEB_H
#define CHATD_WEB_H

typedef struct conn_s conn_t;

/* Error codes of web_load(), grouped apart from negative errno values. */
#define WEB_E_NODIR   -1001   /* no directory given or found */
#define WEB_E_NOINDEX -1002   /* the directory has no index.html */

/*
 * Loads the client's files from dir. A NULL dir means $CHATD_WEB_DIR when
 * set, else "<directory of /proc/self/exe>/../worker/web" when it exists
 * (the source tree), else ".../../share/chatd/web" (installed). Files directly
 * in dir whose names are plain ([A-Za-z0-9._-], no leading dot) with a
 * known extension (html, js, css, svg, png, ico, json) are loaded, each at
 * most 1 MiB; symlinks and subdirectories are skipped. Any earlier load is
 * replaced, on success only. Blocking: call it before the loop runs.
 * Returns the number of files loaded, or a negative errno or WEB_E_* code
 * (then the previous files, if any, stay).
 */
int web_load(const char *dir);

/* Releases the loaded files; web_serve() then answers nothing. */
void web_unload(void);

/*
 * Answers a GET or HEAD for path (without query) when it names a loaded
 * file, and returns 1; otherwise returns 0 and the caller answers 404.
 * If web_load() was never called, the first call loads the default
 * directory (one blocking read, logged), so the client works regardless.
 */
int web_serve(conn_t *c, const char *path);

#endif
