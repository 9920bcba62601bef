#include "search.h"
#include "history.h"
#include "room.h"
#include "../data/archive.h"
#include "../data/store.h"
#include "../../common/words.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Messages of the recent log read per page, and pages at most: a search
 * reads the newest 10,000 messages of the log at most, then goes on in the
 * archive (which has them all) or ends there. */
#define SEARCH_PAGE 100
#define SEARCH_PAGES 100

/* One search on its way: the query, the hits so far (payloads, newest
 * first, owned) and where the log was read down to. */
typedef struct {
    room_call_t *call;          /* conn, room, id; call->upto = the limit */
    words_t q;
    char *text;                 /* the query as sent */
    char **hits;
    size_t nhits;
    int pages;
} search_t;

static void search_free(search_t *s)
{
    for (size_t i = 0; i < s->nhits; i++) {
        free(s->hits[i]);
    }
    free(s->hits);
    words_free(&s->q);
    free(s->text);
    room_call_free(s->call);
    free(s);
}

static void search_answer(search_t *s)
{
    room_call_t *call = s->call;
    const char *id = call->has_id ? call->id : NULL;
    if (call->conn->state == CONN_WS) {
        history_send_page(call->conn, id, "results", call->room->name, s->text, s->hits, s->nhits,
                          (size_t)call->upto, 1);
    }
    search_free(s);
}

static void search_failed(search_t *s)
{
    room_call_t *call = s->call;
    if (call->conn->state == CONN_WS) {
        session_send_error(call->conn, call->has_id ? call->id : NULL, PROTO_E_UNAVAILABLE,
                           "search unavailable, retry");
    }
    search_free(s);
}

/* Takes text (a folded message payload) as a hit when it matches. 0, or -1
 * when memory ran out. */
static int search_consider(search_t *s, char *text)
{
    cJSON *m = cJSON_Parse(text);
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    int take = 0;
    if (cJSON_IsString(content) && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "deleted"))) {
        words_t w;
        if (words_of(content->valuestring, strlen(content->valuestring), &w) != 0) {
            cJSON_Delete(m);
            free(text);
            return -1;
        }
        take = words_match(&w, &s->q);
        words_free(&w);
    }
    cJSON_Delete(m);
    if (!take) {
        free(text);
        return 0;
    }
    s->hits[s->nhits++] = text;
    return 0;
}

static void search_on_archive(void *arg, char **found, int nfound)
{
    search_t *s = arg;
    if (nfound < 0) {
        if (s->nhits == 0) {
            search_failed(s);
            return;
        }
        /* What Redis had, with more: the client pages on (and the
         * archive is asked again) from the oldest hit. */
        s->call->upto = (int64_t)s->nhits - 1;
        search_answer(s);
        return;
    }
    size_t want = (size_t)s->call->upto + 1;
    for (int i = 0; i < nfound && s->nhits < want; i++) {
        /* The archive's texts stay its own: copied. */
        char *t = strdup(found[i]);
        if (t == NULL) {
            search_failed(s);
            return;
        }
        s->hits[s->nhits++] = t;
    }
    search_answer(s);
}

static int search_next(search_t *s, int64_t before);

static void search_on_log(void *arg, redisReply *reply)
{
    search_t *s = arg;
    room_call_t *call = s->call;
    chat_t *ch = call->room->chat;
    const redisReply *entries;
    int64_t lowest;
    int ended;
    if (call->conn->state != CONN_WS) {
        search_free(s);
        return;
    }
    if (store_history_reply(reply, &entries, &lowest, &ended) != 0) {
        search_failed(s);
        return;
    }
    size_t want = (size_t)call->upto + 1;
    for (size_t i = 0; i < entries->elements && s->nhits < want; i++) {
        store_entry_t e;
        char *text;
        if (store_entry(entries->element[i], &e) != 0 ||
            (text = proto_fold_message(e.payload, e.len, e.state, e.slen)) == NULL) {
            continue;
        }
        if (search_consider(s, text) != 0) {
            search_failed(s);
            return;
        }
    }
    if (s->nhits >= want || lowest <= 1) {
        search_answer(s);
        return;
    }
    if (!ended && ++s->pages < SEARCH_PAGES) {
        /* The log goes on below: its next page. */
        if (search_next(s, lowest) != 0) {
            search_failed(s);
        }
        return;
    }
    /* Below the log: the archive, which matches by its indexed words. */
    if (ch->archive != NULL &&
        archive_search(ch->archive, call->room->name, &s->q, lowest, (int)(want - s->nhits),
                       search_on_archive, s) == 0) {
        return;
    }
    search_answer(s);
}

static int search_next(search_t *s, int64_t before)
{
    return store_history(s->call->room->chat->bus, s->call->room->name, before, SEARCH_PAGE, search_on_log, s);
}

void search_request(conn_t *c, const proto_req_t *req)
{
    const char *id = req->has_id ? req->id : NULL;
    words_t q;
    if (words_of(req->q, strlen(req->q), &q) != 0) {
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    if (q.n == 0 || q.n > WORDS_QUERY_MAX) {
        int none = q.n == 0;
        words_free(&q);
        session_send_error(c, id, none ? PROTO_E_BAD_REQUEST : PROTO_E_TOO_LARGE,
                           none ? "'q' holds no word (letters or digits)" : "'q' has more than 10 words");
        return;
    }
    room_call_t *call = room_request_call(c, req);
    if (call == NULL) {
        words_free(&q);
        return;
    }
    search_t *s = calloc(1, sizeof(*s));
    char *text = strdup(req->q);
    char **hits = calloc((size_t)req->limit + 1, sizeof(*hits));
    if (s == NULL || text == NULL || hits == NULL) {
        free(s);
        free(text);
        free(hits);
        words_free(&q);
        room_call_free(call);
        session_send_error(c, id, PROTO_E_INTERNAL, "out of memory");
        return;
    }
    s->call = call;
    s->q = q;
    s->text = text;
    s->hits = hits;
    call->upto = req->limit;
    int64_t before = req->has_before ? req->before : -1;
    /* Ciphertext has no words; nothing before seq 1. */
    if (strncmp(req->room, "e2e:", 4) == 0 || before == 0) {
        search_answer(s);
        return;
    }
    if (search_next(s, before) != 0) {
        search_failed(s);
    }
}
