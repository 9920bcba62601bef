/*
 * filestore: where uploaded files live, written and read piece by piece
 * so that no file is ever held whole in memory.
 *
 * With --mongo-uri the files go to GridFS (the bucket "fs" of the
 * archive's database), through mongo-c-driver's bucket upload stream on
 * libuv's thread pool, one job at a time per file; reads fetch the one
 * chunk document a range starts in. Without it they go to a directory
 * (--files-dir, created 0700): an upload grows as ".part-<id>" and
 * becomes "<id>" by one rename once complete and synced, its description
 * in a fixed-size header at the front of the same file, so a file is
 * either whole with its description or absent. Parts a crash left behind
 * are removed once they are an hour old (filestore_tick).
 *
 * Ids are 24 hex digits of 96 random bits: an ObjectId to GridFS, a file
 * name on disk, never a name the client chose. Callbacks run on the loop.
 */
#ifndef CHATD_FILESTORE_H
#define CHATD_FILESTORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "../../common/config.h"

#define FILESTORE_ID_LEN 24
#define FILESTORE_TEXT_MAX 255      /* a file's name and type */
#define FILESTORE_ROOM_MAX 132
#define FILESTORE_USER_MAX 64

/* Status of a callback besides 0. */
#define FILESTORE_ERROR -1          /* storage failed (logged) */
#define FILESTORE_NOT_FOUND -2

typedef struct filestore_s filestore_t;
typedef struct filestore_upload_s filestore_upload_t;
typedef struct filestore_file_s filestore_file_t;

typedef struct filestore_meta_s {
    char id[FILESTORE_ID_LEN + 1];
    char name[FILESTORE_TEXT_MAX + 1];
    char type[FILESTORE_TEXT_MAX + 1];
    char room[FILESTORE_ROOM_MAX + 1];
    char user[FILESTORE_USER_MAX + 1];
    int64_t size;
    int64_t ts;                 /* upload time, ms since the epoch */
} filestore_meta_t;

/* GridFS when cfg has a MongoDB URI, else cfg's directory (created when
 * missing). Returns NULL on failure (logged). */
filestore_t *filestore_new(uv_loop_t *loop, const config_t *cfg);

/* Once a minute is plenty: removes abandoned parts (directory only). */
void filestore_tick(filestore_t *fs);

/* Frees the store once no upload or file of it is open. */
void filestore_free(filestore_t *fs);

typedef void filestore_cb_t(void *arg, int status);

/*
 * Begins an upload described by meta (its id and ts are filled in here;
 * size is counted). Returns NULL when out of memory or out of MongoDB
 * clients.
 */
filestore_upload_t *filestore_upload_new(filestore_t *fs, const filestore_meta_t *meta);

/* The upload's id, and its description with the size so far. */
const char *filestore_upload_id(const filestore_upload_t *up);
const filestore_meta_t *filestore_upload_meta(const filestore_upload_t *up);

/* Appends len bytes, taking over data (malloc'ed; freed here). One write
 * at a time: cb(arg, 0 or FILESTORE_ERROR) once the bytes are stored.
 * Returns 0, or -1 when a write is already under way (data not taken). */
int filestore_upload_write(filestore_upload_t *up, char *data, size_t len, filestore_cb_t *cb,
                           void *arg);

/* Completes the upload: cb(arg, 0) once the file can be read, or
 * FILESTORE_ERROR (nothing stays). up is freed after cb. */
int filestore_upload_finish(filestore_upload_t *up, filestore_cb_t *cb, void *arg);

/* Gives the upload up: nothing of it stays, even when a finish under
 * way completes. No callback of it runs after this; up is freed once its
 * work in flight is over. */
void filestore_upload_abort(filestore_upload_t *up);

/* Opens file id for reading: cb gets 0 and the file, FILESTORE_NOT_FOUND
 * or FILESTORE_ERROR (then f is NULL). */
typedef void filestore_open_cb_t(void *arg, int status, filestore_file_t *f);
int filestore_open(filestore_t *fs, const char *id, filestore_open_cb_t *cb, void *arg);

const filestore_meta_t *filestore_file_meta(const filestore_file_t *f);

/* Reads up to max bytes at offset off (< size): cb gets n > 0 bytes,
 * valid during the call, or n < 0 on failure. One read at a time. */
typedef void filestore_read_cb_t(void *arg, ssize_t n, const char *data);
int filestore_read(filestore_file_t *f, int64_t off, size_t max, filestore_read_cb_t *cb, void *arg);

/* Closes f; a read in flight finishes without its callback. */
void filestore_close(filestore_file_t *f);

#endif
