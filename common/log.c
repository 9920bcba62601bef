#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/*
 * Process-wide by nature: a process has one log. It is written before fork
 * and only read afterwards, except on USR1 where the owning process reopens.
 */
static struct {
    int fd;
    log_level_t level;
    char path[4096];
} log_state = { 2, LOG_INFO, "" };

static const char *const log_names[] = { "debug", "info", "warn", "error" };

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, log_names[i]) == 0) {
            return i;
        }
    }
    return -1;
}

static int log_open_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    return fd == -1 ? -errno : fd;
}

int log_open(const char *path, log_level_t level)
{
    log_state.level = level;
    if (path == NULL || path[0] == '\0') {
        log_state.path[0] = '\0';
        return 0;
    }
    int fd = log_open_file(path);
    if (fd < 0) {
        return fd;
    }
    if (log_state.fd != 2) {
        close(log_state.fd);
    }
    log_state.fd = fd;
    snprintf(log_state.path, sizeof(log_state.path), "%s", path);
    return 0;
}

int log_reopen(void)
{
    if (log_state.path[0] == '\0') {
        return 0;
    }
    int fd = log_open_file(log_state.path);
    if (fd < 0) {
        return fd;
    }
    if (log_state.fd != 2) {
        close(log_state.fd);
    }
    log_state.fd = fd;
    return 0;
}

void log_set_level(log_level_t level)
{
    log_state.level = level;
}

int log_enabled(log_level_t level)
{
    return level >= log_state.level;
}

void log_write(log_level_t level, const char *fmt, ...)
{
    if (level < log_state.level) {
        return;
    }
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s pid=%d ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), log_names[level], (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2) {
        len = sizeof(line) - 2;
    }
    line[len++] = '\n';
    /* A failed log write has nowhere to be reported; the line is dropped. */
    ssize_t w = write(log_state.fd, line, len);
    (void)w;
}
