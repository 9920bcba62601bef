/*
 * log: one line per event, "time level pid message key=value ...".
 *
 * The log is process state set once by log_open() before the loop starts;
 * a forked worker inherits the descriptor and reopens it on USR1 through
 * log_reopen(). Writes are a single write(2) per line so lines from
 * different processes appending to one file never interleave.
 */
#ifndef CHATD_LOG_H
#define CHATD_LOG_H

#include <stdarg.h>

typedef enum {
    LOG_DEBUG = 0,
    LOG_INFO,
    LOG_WARN,
    LOG_ERROR
} log_level_t;

/* Parses "debug", "info", "warn" or "error". Returns the level, or -1. */
int log_level_parse(const char *name);

/*
 * Directs the log to path (appending), or to stderr when path is NULL.
 * Returns 0, or -errno when the file cannot be opened (stderr stays).
 */
int log_open(const char *path, log_level_t level);

/* Reopens the log file after rotation. Returns 0 or -errno. */
int log_reopen(void);

/* Changes the minimum level written. */
void log_set_level(log_level_t level);

int log_enabled(log_level_t level);

void log_write(log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
