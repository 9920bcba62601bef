#include "store.h"
#include "bus.h"
#include "hashslot.h"
#include "../../common/log.h"
#include "../../proto/proto.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/sha.h>

/* A worker's heartbeat goes to Redis every tick (1 s); this is how old it
 * may get before the worker counts as dead and its entries are reaped. */
#define STORE_DEAD_AFTER_MS 15000
#define STORE_REAP_EVERY_MS 5000
#define STORE_WORKERS_KEY "chatd:workers"
#define STORE_ARCHIVE_QUEUE "chatd:archive"
/* How many log entries an unread count looks at, at most (see
 * store_room_lua). */
#define STORE_UNREAD_SCAN_STR "2000"
/* Rooms a user's index keeps (the rooms request answers at most 500). */
#define STORE_USER_ROOMS_KEEP 500

/*
 * KEYS: seq, log, dedup, archive queue, archived cursor.
 * Every 64 messages it also forgets what the log has left behind: the
 * copies of deleted entries below its first entry, the recovery window
 * and what the archive holds (a deleted entry at the head of the log is
 * a hole, not the log's end), and the state records of messages below the
 * first entry whose events the archive holds (keys beside the log, in the
 * same slot).
 * ARGV: payload head ('{"room":"R","seq":'), tail, dedup window (s), log
 * cap, channel, "1" when the message has an id, "1" when archiving, room,
 * publish verb, "1" when the ack waits for replicas.
 * The dedup entry is checked first so a resend never takes a new seq.
 * With the archive, a room whose counter is missing (a new room, or Redis
 * lost its data) answers {-1}: the worker seeds the counter from MongoDB's
 * highest seq and sends again. The recent log is then trimmed only below
 * what MongoDB has stored, and never below the recovery window.
 * When the ack waits for replicas nothing is published or queued for the
 * archive here: the commit script does that once the replicas hold the
 * message. A resend then
 * rewrites its dedup entry, so that the WAIT that follows covers the
 * original write too.
 */
static const char store_send_lua[] =
    "local d = ARGV[6] == '1' and redis.call('GET', KEYS[3])\n"
    "if d then\n"
    "  if ARGV[10] == '1' then redis.call('SET', KEYS[3], d, 'KEEPTTL') end\n"
    "  local s, t = string.match(d, '^(%d+):(%d+)$')\n"
    "  return {tonumber(s), tonumber(t), 1}\n"
    "end\n"
    "local archive = ARGV[7] == '1'\n"
    "if archive and redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0} end\n"
    "local seq = redis.call('INCR', KEYS[1])\n"
    "local tm = redis.call('TIME')\n"
    "local ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"
    "local us = tm[1] .. string.format('%06d', tonumber(tm[2]))\n"
    "local p = ARGV[1] .. seq .. ',\"ts\":' .. string.format('%d', ms) .. ',' .. ARGV[2]\n"
    "if archive then\n"
    "  redis.call('XADD', KEYS[2], seq .. '-1', 'm', p)\n"
    "  if ARGV[10] ~= '1' then\n"
    "    local fresh = redis.call('EXISTS', KEYS[4]) == 0\n"
    "    redis.call('XADD', KEYS[4], '*', 'r', ARGV[8], 'm', p)\n"
    "    if fresh then redis.pcall('XGROUP', 'CREATE', KEYS[4], 'archivers', '0') end\n"
    "  end\n"
    "  local done = tonumber(redis.call('GET', KEYS[5]) or '0')\n"
    "  local keep = math.min(done + 1, seq - tonumber(ARGV[4]) + 1)\n"
    "  if keep > 1 then redis.call('XTRIM', KEYS[2], 'MINID', '~', keep .. '-0') end\n"
    "else\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-1', 'm', p)\n"
    "end\n"
    "if ARGV[6] == '1' then\n"
    "  redis.call('SET', KEYS[3], seq .. ':' .. string.format('%d', ms), 'EX', ARGV[3])\n"
    "end\n"
    "if seq % 64 == 0 then\n"
    "  local base = string.sub(KEYS[2], 1, -4)\n"
    "  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]\n"
    "  if first then\n"
    "    local f = tonumber(string.match(first[1], '^(%d+)'))\n"
    "    local done = archive and tonumber(redis.call('GET', KEYS[5]) or '0') or f\n"
    "    local floor = math.min(f, seq - tonumber(ARGV[4]) + 1, done + 1)\n"
    "    redis.call('ZREMRANGEBYSCORE', base .. 'gone', '-inf', '(' .. floor)\n"
    "    for _, t in ipairs(redis.call('ZRANGEBYSCORE', base .. 'sti', '-inf', '(' .. f, 'LIMIT', 0, 64)) do\n"
    "      local raw = redis.call('HGET', base .. 'st', t)\n"
    "      local last = 0\n"
    "      if raw then for _, v in ipairs(cjson.decode(raw).v or {}) do if v > last then last = v end end end\n"
    "      if last <= done then\n"
    "        redis.call('HDEL', base .. 'st', t)\n"
    "        redis.call('ZREM', base .. 'sti', t)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if ARGV[10] ~= '1' then\n"
    "  redis.call(ARGV[9], ARGV[5], 'C' .. seq .. ' ' .. us .. ' ' .. p)\n"
    "end\n"
    "return {seq, ms, 0}\n";

/*
 * After WAIT confirmed that the replicas hold every write up to seq:
 * KEYS durable mark, log, archive queue. ARGV seq, channel, publish verb,
 * "1" when archiving, room. Raises the room's durable mark, below which
 * readers may see messages, and publishes the message when it raised it.
 * A commit that finds the mark already higher publishes nothing: the later
 * message that raised it was published, and its receivers fetch the ones
 * before it from the log. The messages the mark passes go to the archive
 * queue here, not in the send script, so MongoDB never gets a message a
 * failover could still take back (a mark lost in a failover makes some go
 * twice: the archive's inserts are idempotent).
 */
static const char store_commit_lua[] =
    "local s = tonumber(ARGV[1])\n"
    "local d = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "if s <= d then return d end\n"
    "redis.call('SET', KEYS[1], s)\n"
    "local es = redis.call('XRANGE', KEYS[2], (d + 1) .. '-0', s .. '-1')\n"
    "if ARGV[4] == '1' and #es > 0 then\n"
    "  local fresh = redis.call('EXISTS', KEYS[3]) == 0\n"
    "  for _, e in ipairs(es) do redis.call('XADD', KEYS[3], '*', 'r', ARGV[5], unpack(e[2])) end\n"
    "  if fresh then redis.pcall('XGROUP', 'CREATE', KEYS[3], 'archivers', '0') end\n"
    "end\n"
    "local last = es[#es]\n"
    "if last and last[1] == s .. '-1' then\n"
    "  local tm = redis.call('TIME')\n"
    "  local us = tm[1] .. string.format('%06d', tonumber(tm[2]))\n"
    "  local f = last[2]\n"
    "  if f[3] == 't' then\n"
    "    redis.call(ARGV[3], ARGV[2], 'E' .. s .. ' ' .. us .. ' ' .. f[4] .. ' ' .. f[2])\n"
    "  else\n"
    "    redis.call(ARGV[3], ARGV[2], 'C' .. s .. ' ' .. us .. ' ' .. f[2])\n"
    "  end\n"
    "end\n"
    "return s\n";

/*
 * Every read of the log. KEYS durable mark, seq, log, deleted entries
 * (zset), message states (hash). ARGV mode: 'f' (entries from ARGV[2] to
 * ARGV[3], -1 = newest, at most ARGV[4]), 'h' (history: up to ARGV[4]
 * chat messages below ARGV[2], -1 = newest, newest first, each with its
 * state record) or 'l' (none); ARGV[5] '1' when acks wait for replicas:
 * then only what is below the durable mark may be seen.
 * A deleted message and its edits are no longer in the stream: scrubbed
 * copies of them ("<type> <payload>", scored by seq) fill the holes.
 * Returns {durable, seq or -1 when the room has no counter, entries
 * {seq, type, payload[, state]}, the lowest seq looked at, 1 when the log
 * has nothing below it}.
 */
static const char store_read_lua[] =
    "local top = tonumber(redis.call('GET', KEYS[2]) or '-1')\n"
    "local d = top\n"
    "if ARGV[5] == '1' then d = tonumber(redis.call('GET', KEYS[1]) or '0') end\n"
    "local holes = redis.call('EXISTS', KEYS[4]) == 1\n"
    "local function entry(e)\n"
    "  local f, t, m = e[2], 'chat', nil\n"
    "  for i = 1, #f, 2 do\n"
    "    if f[i] == 'm' then m = f[i + 1] elseif f[i] == 't' then t = f[i + 1] end\n"
    "  end\n"
    "  return {tonumber(string.match(e[1], '^(%d+)')), t, m}\n"
    "end\n"
    "local function fill(es, lo, hi, rev, n)\n"
    "  local out = {}\n"
    "  for _, e in ipairs(es) do out[#out + 1] = entry(e) end\n"
    "  if not holes then return out end\n"
    "  local z\n"
    "  if rev then z = redis.call('ZREVRANGEBYSCORE', KEYS[4], hi, lo, 'WITHSCORES', 'LIMIT', 0, n)\n"
    "  else z = redis.call('ZRANGEBYSCORE', KEYS[4], lo, hi, 'WITHSCORES', 'LIMIT', 0, n) end\n"
    "  if #z == 0 then return out end\n"
    "  for i = 1, #z, 2 do\n"
    "    local sp = string.find(z[i], ' ', 1, true)\n"
    "    out[#out + 1] = {tonumber(z[i + 1]), string.sub(z[i], 1, sp - 1), string.sub(z[i], sp + 1)}\n"
    "  end\n"
    "  if rev then table.sort(out, function(x, y) return x[1] > y[1] end)\n"
    "  else table.sort(out, function(x, y) return x[1] < y[1] end) end\n"
    "  while #out > n do out[#out] = nil end\n"
    "  return out\n"
    "end\n"
    "if ARGV[1] == 'f' then\n"
    "  local a, to, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "  if to < 0 or to > d then to = d end\n"
    "  if to < a then return {d, top, {}, a, 0} end\n"
    "  local es = redis.call('XRANGE', KEYS[3], a .. '-0', to .. '-1', 'COUNT', n)\n"
    "  local hi = to\n"
    "  if #es == n then hi = tonumber(string.match(es[#es][1], '^(%d+)')) end\n"
    "  return {d, top, fill(es, a, hi, false, n), a, 0}\n"
    "elseif ARGV[1] == 'h' then\n"
    "  local up, n = tonumber(ARGV[2]) - 1, tonumber(ARGV[4])\n"
    "  if up < 0 or up > d then up = d end\n"
    "  local out, low, ended = {}, up + 1, 0\n"
    "  local k = n * 2 + 16\n"
    "  while #out < n do\n"
    "    if up < 1 then ended = 1 break end\n"
    "    local es = redis.call('XREVRANGE', KEYS[3], up .. '-1', '-', 'COUNT', k)\n"
    "    local lo = 1\n"
    "    if #es == k then lo = tonumber(string.match(es[#es][1], '^(%d+)')) end\n"
    "    local got = fill(es, lo, up, true, k)\n"
    "    if #got == 0 then ended = 1 break end\n"
    "    for _, e in ipairs(got) do\n"
    "      low = e[1]\n"
    "      if e[2] == 'chat' then\n"
    "        e[4] = redis.call('HGET', KEYS[5], e[1])\n"
    "        out[#out + 1] = e\n"
    "        if #out == n then break end\n"
    "      end\n"
    "    end\n"
    "    if #out < n and #es < k then ended = 1 break end\n"
    "    up = low - 1\n"
    "  end\n"
    "  return {d, top, out, low, ended}\n"
    "end\n"
    "return {d, top, {}, 0, 0}\n";

/*
 * A room event (edit, delete, reaction) on a message in the log. KEYS:
 * seq, log, dedup, archive queue, archived cursor, message states, deleted
 * entries, durable mark. ARGV: payload head, tail, dedup window, log cap,
 * channel, "1" when the request has an id, "1" when archiving, room,
 * publish verb, "1" when the ack waits for replicas, kind, user, target,
 * "1" when the user is an admin, emoji, "1" for on.
 * An edit's tail may hold the byte 1 as its attachments: the message's
 * current ones go there (an edit that names none keeps them).
 * ARGV[17] and ARGV[18], when not empty, are the target's payload and
 * state as the archive has them, for a target older than the log. The
 * archive's state is taken only when Redis keeps none: a state record is
 * dropped only once MongoDB holds all its events, so one still here is
 * the newer (a message leaves the log once MongoDB has it, while events
 * on it may still be on their way there).
 * Answers {seq, ts, duplicate} as the send script does, or {-2} when the
 * target is not a message of the room (or is deleted), {-3} when the user
 * may not do this to it, {-4} when it has 20 distinct emoji already, {-5}
 * when the target is older than the log and only the archive knows it: the
 * caller reads it there and sends again with it. Such a message's payload
 * is kept in its state record ('o') from then on.
 * The state record of a message (KEYS[6], field seq) is what history
 * folds in: c/a the edited content, e the edit's ts, d deleted, r the
 * reactions [{e = emoji, u = {{user, seq, ts}, ...}}], o the seq and ts
 * of each (emoji, user) reaction taken back, v the seqs of its events.
 * A delete takes the message and each of its events out of the stream
 * and keeps content-free copies in KEYS[7], so no read finds the content
 * again. With the archive, an event's entry also carries the message
 * ('o') and its state ('s') after the event, from which the archive
 * rewrites its document.
 */
static const char store_event_lua[] =
    "local dd = ARGV[6] == '1' and redis.call('GET', KEYS[3])\n"
    "if dd then\n"
    "  if ARGV[10] == '1' then redis.call('SET', KEYS[3], dd, 'KEEPTTL') end\n"
    "  local s, t = string.match(dd, '^(%d+):(%d+)$')\n"
    "  return {tonumber(s), tonumber(t), 1}\n"
    "end\n"
    "local target = tonumber(ARGV[13])\n"
    "local top = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "if ARGV[10] == '1' then top = tonumber(redis.call('GET', KEYS[8]) or '0') end\n"
    "if target > top then return {-2, 0, 0} end\n"
    "local raw = redis.call('HGET', KEYS[6], target)\n"
    "local st = raw and cjson.decode(raw) or nil\n"
    "if st and st.d then return {-2, 0, 0} end\n"
    "local orig, inlog\n"
    "local found = redis.call('XRANGE', KEYS[2], target .. '-1', target .. '-1')\n"
    "if #found > 0 then\n"
    "  if found[1][2][3] == 't' then return {-2, 0, 0} end\n"
    "  orig, inlog = found[1][2][2], true\n"
    "elseif st and type(st.o) == 'string' then\n"
    "  orig = st.o\n"
    "else\n"
    "  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]\n"
    "  local below = not first or target < tonumber(string.match(first[1], '^(%d+)'))\n"
    "  if not below or ARGV[7] ~= '1' then return {-2, 0, 0} end\n"
    "  if ARGV[17] == '' then return {-5, 0, 0} end\n"
    "  orig, st = ARGV[17], st or cjson.decode(ARGV[18])\n"
    "  st.o = orig\n"
    "end\n"
    "st = st or {}\n"
    "local msg = cjson.decode(orig)\n"
    "local kind, user, emoji = ARGV[11], ARGV[12], ARGV[15]\n"
    "if kind == 'edit' and msg.sender ~= user then return {-3, 0, 0} end\n"
    "if kind == 'delete' and msg.sender ~= user and ARGV[14] ~= '1' then return {-3, 0, 0} end\n"
    "local ri, ui\n"
    "if kind == 'reaction' then\n"
    "  if type(st.r) ~= 'table' then st.r = {} end\n"
    "  for i, x in ipairs(st.r) do if x.e == emoji then ri = i end end\n"
    "  if ri then for i, u in ipairs(st.r[ri].u) do if u[1] == user then ui = i end end end\n"
    "  if ARGV[16] == '1' and ui then return {st.r[ri].u[ui][2], st.r[ri].u[ui][3], 1} end\n"
    "  if ARGV[16] ~= '1' and not ui then\n"
    "    local o = type(st.o) == 'table' and st.o[emoji .. '\\n' .. user]\n"
    "    if o then return {o[1], o[2], 1} end\n"
    "    return {target, msg.ts, 1}\n"
    "  end\n"
    "  if ARGV[16] == '1' and not ri and #st.r >= 20 then return {-4, 0, 0} end\n"
    "end\n"
    "local seq = redis.call('INCR', KEYS[1])\n"
    "local tm = redis.call('TIME')\n"
    "local ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"
    "local us = tm[1] .. string.format('%06d', tonumber(tm[2]))\n"
    "local tail = ARGV[2]\n"
    "local keep = string.find(tail, '\\1', 1, true)\n"
    "if kind == 'edit' and keep then\n"
    "  local cur = st.a or msg.attachments or {}\n"
    "  local aj = '[]'\n"
    "  if type(cur) == 'table' and #cur > 0 then aj = cjson.encode(cur) end\n"
    "  tail = string.sub(tail, 1, keep - 1) .. aj .. string.sub(tail, keep + 1)\n"
    "end\n"
    "local p = ARGV[1] .. seq .. ',\"ts\":' .. string.format('%d', ms) .. ',' .. tail\n"
    "if type(st.v) ~= 'table' then st.v = {} end\n"
    "if kind == 'edit' then\n"
    "  local ev = cjson.decode(p)\n"
    "  st.c, st.a, st.e, st.k = ev.content, ev.attachments, ms, ev.e2e\n"
    "elseif kind == 'reaction' then\n"
    "  if ARGV[16] == '1' then\n"
    "    if not ri then table.insert(st.r, {e = emoji, u = {}}) ri = #st.r end\n"
    "    table.insert(st.r[ri].u, {user, seq, ms})\n"
    "    if type(st.o) == 'table' then st.o[emoji .. '\\n' .. user] = nil end\n"
    "  else\n"
    "    table.remove(st.r[ri].u, ui)\n"
    "    if #st.r[ri].u == 0 then table.remove(st.r, ri) end\n"
    "    if type(st.o) ~= 'table' then st.o = {} end\n"
    "    st.o[emoji .. '\\n' .. user] = {seq, ms}\n"
    "  end\n"
    "else\n"
    "  local function gone(e, extra)\n"
    "    local cid = e.cid and (',\"cid\":' .. cjson.encode(e.cid)) or ''\n"
    "    return '{\"room\":' .. cjson.encode(e.room) .. ',\"seq\":' .. string.format('%d', e.seq) ..\n"
    "      ',\"ts\":' .. string.format('%d', e.ts) .. ',\"sender\":' .. cjson.encode(e.sender) .. extra ..\n"
    "      ',\"content\":\"\",\"attachments\":[],\"deleted\":true' .. cid .. '}'\n"
    "  end\n"
    "  orig = gone(msg, '')\n"
    "  if inlog then\n"
    "    redis.call('XDEL', KEYS[2], target .. '-1')\n"
    "    redis.call('ZADD', KEYS[7], target, 'chat ' .. orig)\n"
    "  end\n"

    "  for _, es in ipairs(st.v) do\n"
    "    local x = redis.call('XRANGE', KEYS[2], es .. '-1', es .. '-1')\n"
    "    if #x > 0 then\n"
    "      local f, t, m = x[1][2], nil, nil\n"
    "      for i = 1, #f, 2 do if f[i] == 'm' then m = f[i + 1] elseif f[i] == 't' then t = f[i + 1] end end\n"
    "      if t == 'edit' then m = gone(cjson.decode(m), ',\"target\":' .. target) end\n"
    "      redis.call('XDEL', KEYS[2], es .. '-1')\n"
    "      redis.call('ZADD', KEYS[7], es, t .. ' ' .. m)\n"
    "    end\n"
    "  end\n"
    "  st = {d = 1, v = {}}\n"
    "end\n"
    "table.insert(st.v, seq)\n"
    "local sj = cjson.encode(st)\n"
    "redis.call('HSET', KEYS[6], target, sj)\n"
    "redis.call('ZADD', KEYS[6] .. 'i', target, target)\n"
    "local archive = ARGV[7] == '1'\n"
    "local fields = {'m', p, 't', kind}\n"
    "if archive then\n"
    "  fields[5], fields[6], fields[7], fields[8] = 'o', orig, 's', sj\n"
    "  redis.call('XADD', KEYS[2], seq .. '-1', unpack(fields))\n"
    "  if ARGV[10] ~= '1' then\n"
    "    local fresh = redis.call('EXISTS', KEYS[4]) == 0\n"
    "    redis.call('XADD', KEYS[4], '*', 'r', ARGV[8], unpack(fields))\n"
    "    if fresh then redis.pcall('XGROUP', 'CREATE', KEYS[4], 'archivers', '0') end\n"
    "  end\n"
    "  local done = tonumber(redis.call('GET', KEYS[5]) or '0')\n"
    "  local keep = math.min(done + 1, seq - tonumber(ARGV[4]) + 1)\n"
    "  if keep > 1 then redis.call('XTRIM', KEYS[2], 'MINID', '~', keep .. '-0') end\n"
    "else\n"
    "  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-1', unpack(fields))\n"
    "end\n"
    "if ARGV[6] == '1' then\n"
    "  redis.call('SET', KEYS[3], seq .. ':' .. string.format('%d', ms), 'EX', ARGV[3])\n"
    "end\n"
    "if ARGV[10] ~= '1' then\n"
    "  redis.call(ARGV[9], ARGV[5], 'E' .. seq .. ' ' .. us .. ' ' .. kind .. ' ' .. p)\n"
    "end\n"
    "return {seq, ms, 0}\n";

/* A write with no effect (the durable mark set to itself), so that a WAIT
 * after it covers every write before it on this node. KEYS durable mark,
 * seq. Returns the room's seq. */
static const char store_touch_lua[] =
    "redis.call('SET', KEYS[1], redis.call('GET', KEYS[1]) or '0')\n"
    "return tonumber(redis.call('GET', KEYS[2]) or '0')\n";

/*
 * Presence. Per room R: chatd:{R}:u counts, per user, the workers that
 * hold a connection of that user in R; chatd:{R}:h:W lists the users
 * worker W holds there. Per worker W: chatd:w:{W} lists the rooms W has
 * entries in (its own slot), and the zset chatd:workers holds every
 * worker's last heartbeat. Every script touches the keys of one room only,
 * so each runs on the one node that owns the room's slot.
 *
 * KEYS: users hash, this worker's holder set. ARGV: user, member-events,
 * channel, frame, joined (1/0), publish verb. SADD/SREM make it
 * idempotent, so it also serves to re-assert presence after an outage.
 * Both answer how many users the worker holds in the room now (a join
 * that is already held answers 0).
 */
static const char store_member_lua[] =
    "local limit = tonumber(ARGV[2])\n"
    "if ARGV[5] == '1' then\n"
    "  if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end\n"
    "  local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)\n"
    "  if n == 1 and redis.call('HLEN', KEYS[1]) <= limit then\n"
    "    redis.call(ARGV[6], ARGV[3], 'X' .. ARGV[1] .. '\\n' .. ARGV[4])\n"
    "  end\n"
    "  return redis.call('SCARD', KEYS[2])\n"
    "end\n"
    "if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return redis.call('SCARD', KEYS[2]) end\n"
    "local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)\n"
    "if n <= 0 then\n"
    "  redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "  if redis.call('HLEN', KEYS[1]) + 1 <= limit then\n"
    "    redis.call(ARGV[6], ARGV[3], 'X' .. ARGV[1] .. '\\n' .. ARGV[4])\n"
    "  end\n"
    "end\n"
    "return redis.call('SCARD', KEYS[2])\n";

/* KEYS: users hash, a dead worker's holder set in that room. ARGV: room,
 * member-events, channel, publish verb. Takes back what the worker held
 * and announces the users who are gone. */
static const char store_reap_room_lua[] =
    "local limit = tonumber(ARGV[2])\n"
    "local users = redis.call('SMEMBERS', KEYS[2])\n"
    "for _, user in ipairs(users) do\n"
    "  local n = redis.call('HINCRBY', KEYS[1], user, -1)\n"
    "  if n <= 0 then\n"
    "    redis.call('HDEL', KEYS[1], user)\n"
    "    if redis.call('HLEN', KEYS[1]) + 1 <= limit then\n"
    "      local f = cjson.encode({type = 'member', payload = {room = ARGV[1], user = user, event = 'leave'}})\n"
    "      redis.call(ARGV[4], ARGV[3], 'X' .. user .. '\\n' .. f)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', KEYS[2])\n"
    "return #users\n";

/* One Redis only, for workers of chatd before Redis Cluster support (a
 * USR2 upgrade runs old and new side by side): they kept "room\nuser"
 * entries in chatd:w:<wid>, keys of many rooms, which only a lone Redis
 * lets one script touch. ARGV: the dead worker's id, member-events. */
static const char store_reap_legacy_lua[] =
    "local set = 'chatd:w:' .. ARGV[1]\n"
    "local limit = tonumber(ARGV[2])\n"
    "for _, e in ipairs(redis.call('SMEMBERS', set)) do\n"
    "  local nl = string.find(e, '\\n', 1, true)\n"
    "  if nl then\n"
    "    local room = string.sub(e, 1, nl - 1)\n"
    "    local user = string.sub(e, nl + 1)\n"
    "    local h = 'chatd:{' .. room .. '}:u'\n"
    "    local n = redis.call('HINCRBY', h, user, -1)\n"
    "    if n <= 0 then\n"
    "      redis.call('HDEL', h, user)\n"
    "      if redis.call('HLEN', h) + 1 <= limit then\n"
    "        local f = cjson.encode({type = 'member', payload = {room = room, user = user, event = 'leave'}})\n"
    "        redis.call('PUBLISH', 'chatd:{' .. room .. '}', 'X' .. user .. '\\n' .. f)\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', set)\n"
    "return 1\n";

/*
 * Where a user stands in a room. KEYS: seq, durable mark, read cursors,
 * log. ARGV: user, "1" when acks wait for replicas, the user's name as
 * chat payloads spell it (a JSON string). Returns {the room's seq, the
 * user's read cursor, unread, ts of the room's last event (0 for none)}.
 * Unread counts the messages above the cursor that others sent and that
 * are not deleted (deleted ones are no longer in the log) by reading the
 * log from the cursor on: up to 100 of them, among at most
 * STORE_UNREAD_SCAN_STR entries. Counting on read keeps every send free of
 * bookkeeping for it.
 */
static const char store_room_lua[] =
    "local d = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
    "if ARGV[2] == '1' then d = tonumber(redis.call('GET', KEYS[2]) or '0') end\n"
    "local r = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')\n"
    "if r > d then r = d end\n"
    "local n, seen, from = 0, 0, r + 1\n"
    "local mine = ',\"sender\":' .. ARGV[3] .. ','\n"
    "while n < 100 and seen < " STORE_UNREAD_SCAN_STR " and from <= d do\n"
    "  local es = redis.call('XRANGE', KEYS[4], from .. '-0', d .. '-1', 'COUNT', 200)\n"
    "  if #es == 0 then break end\n"
    "  for _, e in ipairs(es) do\n"
    "    local f = e[2]\n"
    "    if f[3] ~= 't' then\n"
    "      local at = string.find(f[2], ',\"sender\":', 1, true)\n"
    "      if not at or string.sub(f[2], at, at + #mine - 1) ~= mine then n = n + 1 end\n"
    "      if n == 100 then break end\n"
    "    end\n"
    "  end\n"
    "  seen = seen + #es\n"
    "  from = tonumber(string.match(es[#es][1], '^(%d+)')) + 1\n"
    "end\n"
    "local ts = 0\n"
    "if d > 0 then\n"
    "  local e = redis.call('XREVRANGE', KEYS[4], d .. '-1', '-', 'COUNT', 1)[1]\n"
    "  if e then ts = tonumber(string.match(e[2][2], '\"ts\":(%d+)') or '0') end\n"
    "end\n"
    "return {d, r, n, ts}\n";

/*
 * A read receipt. KEYS: read cursors, seq, durable mark, presence. ARGV:
 * user, seq, "1" when acks wait for replicas, member-events limit,
 * channel, publish verb, room. The cursor only moves forward, and never
 * past the room's (durable) seq. A moved cursor is published to the room
 * as an ephemeral frame for everyone but the reader's own connections
 * (they hear it on the user's channel), while the room is small enough
 * for member events. Returns {1 when it moved, the cursor}.
 */
static const char store_read_cursor_lua[] =
    "local d = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "if ARGV[3] == '1' then d = tonumber(redis.call('GET', KEYS[3]) or '0') end\n"
    "local s = tonumber(ARGV[2])\n"
    "if s > d then s = d end\n"
    "local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')\n"
    "if s <= cur then return {0, cur} end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], s)\n"
    "if redis.call('HLEN', KEYS[4]) <= tonumber(ARGV[4]) then\n"
    "  local f = '{\"type\":\"receipt\",\"payload\":{\"room\":' .. cjson.encode(ARGV[7]) ..\n"
    "    ',\"user\":' .. cjson.encode(ARGV[1]) .. ',\"seq\":' .. s .. '}}'\n"
    "  redis.call(ARGV[6], ARGV[5], 'X' .. ARGV[1] .. '\\n' .. f)\n"
    "end\n"
    "return {1, s}\n";

/* A user's rooms. KEYS: the index. ARGV: room, keep. Marks room as
 * touched now and forgets the longest untouched beyond keep. */
static const char store_user_room_lua[] =
    "local tm = redis.call('TIME')\n"
    "redis.call('ZADD', KEYS[1], tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000), ARGV[1])\n"
    "redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)\n"
    "return 1\n";

/* KEYS: the worker registry. ARGV: dead-after (ms). Up to 10 workers whose
 * heartbeat is older, by Redis's clock. */
static const char store_dead_lua[] =
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000\n"
    "return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, 10)\n";

/* KEYS: the worker registry. ARGV: wid. */
static const char store_heartbeat_lua[] =
    "local t = redis.call('TIME')\n"
    "redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000, ARGV[1])\n";

/*
 * The scripts run by EVALSHA: Redis then neither receives nor hashes the
 * script's text on every message. Their SHA-1s are computed once per
 * process (store_init) and never change after, and every new command
 * connection loads them first (store_on_node_up). A Redis that forgot them
 * while connected (SCRIPT FLUSH) answers NOSCRIPT, and the call is sent
 * again once as EVAL, which also loads it; calls in flight at that moment
 * may then be stored in another order than sent (never lost or doubled).
 */
enum {
    STORE_SEND, STORE_EVENT, STORE_COMMIT, STORE_READ, STORE_TOUCH, STORE_MEMBER, STORE_REAP_ROOM,
    STORE_DEAD, STORE_HEARTBEAT, STORE_REAP_LEGACY, STORE_ROOM, STORE_READ_CURSOR, STORE_USER_ROOM,
    STORE_NSCRIPTS
};

static struct {
    const char *lua;
    char sha[41];
} store_scripts[STORE_NSCRIPTS] = {
    [STORE_SEND] = { store_send_lua, "" },
    [STORE_EVENT] = { store_event_lua, "" },
    [STORE_COMMIT] = { store_commit_lua, "" },
    [STORE_READ] = { store_read_lua, "" },
    [STORE_TOUCH] = { store_touch_lua, "" },
    [STORE_MEMBER] = { store_member_lua, "" },
    [STORE_REAP_ROOM] = { store_reap_room_lua, "" },
    [STORE_DEAD] = { store_dead_lua, "" },
    [STORE_HEARTBEAT] = { store_heartbeat_lua, "" },
    [STORE_REAP_LEGACY] = { store_reap_legacy_lua, "" },
    [STORE_ROOM] = { store_room_lua, "" },
    [STORE_READ_CURSOR] = { store_read_cursor_lua, "" },
    [STORE_USER_ROOM] = { store_user_room_lua, "" },
};

/*
 * In a cluster the archive queue is split by slot: the send script may
 * only touch keys of the room's slot. store_slot_tags[s] is a short text
 * that hashes to slot s; the queue of slot s is "chatd:aq:{<tag>}". Found
 * once per process by counting in base 36 until every slot has one
 * (about 170,000 tries), and never changed after.
 */
static char store_slot_tags[HASHSLOT_COUNT][8];

static void store_init_tags(void)
{
    if (store_slot_tags[0][0] != '\0') {
        return;
    }
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    size_t found = 0;
    for (unsigned long i = 0; found < HASHSLOT_COUNT; i++) {
        char t[8];
        size_t n = 0;
        unsigned long v = i;
        do {
            t[n++] = digits[v % 36];
            v /= 36;
        } while (v != 0 && n < sizeof(t) - 1);
        unsigned slot = hashslot_of(t, n);
        if (store_slot_tags[slot][0] == '\0') {
            memcpy(store_slot_tags[slot], t, n);
            store_slot_tags[slot][n] = '\0';
            found++;
        }
    }
}

size_t store_slot_queue(unsigned slot, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "chatd:aq:{%s}", store_slot_tags[slot & (HASHSLOT_COUNT - 1)]);
    return n < 0 ? 0 : (size_t)n;
}

size_t store_queue_key(const bus_t *b, const char *room, char *out, size_t outlen)
{
    if (!bus_is_cluster(b)) {
        int n = snprintf(out, outlen, "%s", STORE_ARCHIVE_QUEUE);
        return n < 0 ? 0 : (size_t)n;
    }
    char chan[200];
    size_t len = store_channel(room, chan, sizeof(chan));
    return store_slot_queue(hashslot_of(chan, len), out, outlen);
}

void store_init(int cluster)
{
    if (cluster) {
        store_init_tags();
    }
    for (int i = 0; i < STORE_NSCRIPTS; i++) {
        if (store_scripts[i].sha[0] != '\0') {
            continue;
        }
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)store_scripts[i].lua, strlen(store_scripts[i].lua), md);
        for (int k = 0; k < SHA_DIGEST_LENGTH; k++) {
            snprintf(store_scripts[i].sha + 2 * k, 3, "%02x", md[k]);
        }
    }
}

/* One command on its way. The raw callback (rcb) sees the connection the
 * reply came on, which a WAIT must follow; cb sees the reply only. */
typedef void store_raw_cb_t(redisAsyncContext *ac, void *arg, redisReply *r);

typedef struct {
    store_cb_t *cb;             /* may be NULL */
    store_raw_cb_t *rcb;        /* used instead of cb when set */
    void *arg;
    bus_t *bus;
    int script;                 /* the script an EVALSHA ran, or -1 */
    int argc;                   /* the EVALSHA's arguments after the SHA, owned */
    const char **argv;
    size_t *lens;
    int durable;                /* goes on the durable link (sends and their WAITs) */
} store_call_t;

#define STORE_MAX_ARGS 64

static int store_send_call(store_call_t *call, const char *key, int argc, const char **argv,
                           const size_t *lens);

/* Sends the call's script as cmd (EVALSHA with the SHA-1, or EVAL with the
 * text) followed by its kept arguments. Returns 0 when sent. */
static int store_send_script(store_call_t *call, const char *cmd, const char *script, size_t slen)
{
    const char *argv[STORE_MAX_ARGS];
    size_t lens[STORE_MAX_ARGS];
    argv[0] = cmd;
    lens[0] = strlen(cmd);
    argv[1] = script;
    lens[1] = slen;
    memcpy(argv + 2, call->argv, (size_t)call->argc * sizeof(*argv));
    memcpy(lens + 2, call->lens, (size_t)call->argc * sizeof(*lens));
    return store_send_call(call, NULL, call->argc + 2, argv, lens);
}

/* Sends an EVALSHA call again as EVAL (once). Returns 0 when sent. */
static int store_resend_eval(store_call_t *call)
{
    const char *lua = store_scripts[call->script].lua;
    call->script = -1;
    return store_send_script(call, "EVAL", lua, strlen(lua));
}

static void store_call_free(store_call_t *call)
{
    free(call->argv);       /* argv, lens and their bytes are one block */
    free(call);
}

static void store_on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    store_call_t *call = privdata;
    redisReply *r = reply;
    if (r != NULL && r->type == REDIS_REPLY_ERROR && call->script >= 0 &&
        strncmp(r->str, "NOSCRIPT", 8) == 0) {
        if (store_resend_eval(call) == 0) {
            return;
        }
        r = NULL;       /* Redis went away meanwhile */
    }
    /* BUSYGROUP is the expected answer when another worker made the
     * archive's consumer group first. */
    if (r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        log_warn("event=redis_error err=\"%.*s\"", (int)r->len, r->str);
    }
    if (call->rcb != NULL) {
        call->rcb(ac, call->arg, r);
    } else if (call->cb != NULL) {
        call->cb(call->arg, r);
    }
    store_call_free(call);
}

/* A call is routed by its key: the first key of a script (after numkeys),
 * argv[1] of a plain command, unless the caller named one. */
static int store_send_call(store_call_t *call, const char *key, int argc, const char **argv,
                           const size_t *lens)
{
    if (key != NULL) {
        return bus_command(call->bus, key, strlen(key), store_on_reply, call, argc, argv, lens);
    }
    int is_script = lens[0] >= 4 && (strncmp(argv[0], "EVAL", 4) == 0);
    int k = is_script ? 3 : 1;
    if (argc <= k) {
        return -1;
    }
    if (call->durable) {
        return bus_command_durable(call->bus, argv[k], lens[k], store_on_reply, call, argc, argv, lens);
    }
    return bus_command(call->bus, argv[k], lens[k], store_on_reply, call, argc, argv, lens);
}

int store_call_key(bus_t *b, const char *key, store_cb_t *cb, void *arg, int argc,
                   const char **argv, const size_t *lens)
{
    if (argc < 2) {
        return -1;
    }
    if (cb == NULL) {
        const char *k = key != NULL ? key : argv[1];
        return bus_command(b, k, key != NULL ? strlen(key) : lens[1], NULL, NULL, argc, argv, lens);
    }
    store_call_t *call = calloc(1, sizeof(*call));
    if (call == NULL) {
        return -1;
    }
    call->cb = cb;
    call->arg = arg;
    call->bus = b;
    call->script = -1;
    if (store_send_call(call, key, argc, argv, lens) != 0) {
        free(call);
        return -1;
    }
    return 0;
}

int store_call(bus_t *b, store_cb_t *cb, void *arg, int argc,
               const char **argv, const size_t *lens)
{
    return store_call_key(b, NULL, cb, arg, argc, argv, lens);
}

/*
 * Runs one of store_scripts by EVALSHA; argv is what follows the script
 * (numkeys, keys, arguments), and the first key routes it. cb or rcb may
 * be given (or neither). Returns 0 when sent, -1 when Redis is unavailable
 * (no callback runs).
 */
static int store_eval_raw(bus_t *b, int script, int durable, store_cb_t *cb, store_raw_cb_t *rcb,
                          void *arg, int argc, const char **argv, const size_t *lens)
{
    if (argc + 2 > STORE_MAX_ARGS || argc < 2) {
        return -1;
    }
    size_t bytes = 0;
    for (int i = 0; i < argc; i++) {
        bytes += lens[i];
    }
    /* The arguments are kept (one block) for a resend as EVAL. */
    store_call_t *call = calloc(1, sizeof(*call));
    char *block = malloc((size_t)argc * (sizeof(char *) + sizeof(size_t)) + bytes + 1);
    if (call == NULL || block == NULL) {
        free(call);
        free(block);
        return -1;
    }
    call->cb = cb;
    call->rcb = rcb;
    call->arg = arg;
    call->bus = b;
    call->script = script;
    call->durable = durable;
    call->argc = argc;
    call->argv = (const char **)block;
    call->lens = (size_t *)(block + (size_t)argc * sizeof(char *));
    char *p = block + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    for (int i = 0; i < argc; i++) {
        memcpy(p, argv[i], lens[i]);
        call->argv[i] = p;
        call->lens[i] = lens[i];
        p += lens[i];
    }
    if (store_send_script(call, "EVALSHA", store_scripts[script].sha, 40) != 0) {
        store_call_free(call);
        return -1;
    }
    return 0;
}

/* Runs a script whose arguments are all NUL-terminated strings; durable:
 * on the durable link. */
static int store_evalv_on(bus_t *b, int durable, int script, store_cb_t *cb, store_raw_cb_t *rcb,
                          void *arg, int argc, const char **argv)
{
    size_t lens[STORE_MAX_ARGS];
    if (argc > STORE_MAX_ARGS) {
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        lens[i] = strlen(argv[i]);
    }
    return store_eval_raw(b, script, durable, cb, rcb, arg, argc, argv, lens);
}

static int store_evalv(bus_t *b, int script, store_cb_t *cb, store_raw_cb_t *rcb, void *arg,
                       int argc, const char **argv)
{
    return store_evalv_on(b, 0, script, cb, rcb, arg, argc, argv);
}

size_t store_channel(const char *room, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "chatd:{%s}", room);
    return n < 0 ? 0 : (size_t)n;
}

static void store_key(char *out, size_t outlen, const char *room, const char *suffix)
{
    snprintf(out, outlen, "chatd:{%s}:%s", room, suffix);
}

static int store_waits(const bus_t *b)
{
    return bus_env(b)->cfg->ack_replicas > 0;
}

/* ------------------------------------------------------------ send */

typedef struct {
    bus_t *bus;
    store_send_cb_t *cb;
    void *arg;
    store_ack_t ack;
    char room[];
} store_send_t;

static int store_commit(bus_t *b, const char *room, int64_t seq, store_cb_t *cb, void *arg)
{
    char kd[160], klog[160], chan[160], kqueue[200], v[24];
    store_key(kd, sizeof(kd), room, "durable");
    store_key(klog, sizeof(klog), room, "log");
    store_channel(room, chan, sizeof(chan));
    store_queue_key(b, room, kqueue, sizeof(kqueue));
    snprintf(v, sizeof(v), "%" PRId64, seq);
    const char *argv[] = { "3", kd, klog, kqueue, v, chan, bus_publish_verb(b),
                           bus_env(b)->cfg->mongo_uri[0] != '\0' ? "1" : "0", room };
    /* After a send it is fire and forget: a commit lost with its node is
     * redone by the next commit of the room, or by the next reader that
     * finds the mark behind. */
    return store_evalv_on(b, 1, STORE_COMMIT, cb, NULL, arg, 9, argv);
}

static void store_send_done(store_send_t *st, int status)
{
    st->cb(st->arg, status, &st->ack);
    free(st);
}

static void store_on_durable(void *arg, int ok)
{
    store_send_t *st = arg;
    if (!ok) {
        store_send_done(st, STORE_NOT_DURABLE);
        return;
    }
    store_commit(st->bus, st->room, st->ack.seq, NULL, NULL);
    store_send_done(st, STORE_OK);
}

static void store_on_sent(redisAsyncContext *ac, void *arg, redisReply *r)
{
    store_send_t *st = arg;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER ||
        r->element[2]->type != REDIS_REPLY_INTEGER) {
        store_send_done(st, STORE_UNAVAILABLE);
        return;
    }
    st->ack.seq = r->element[0]->integer;
    st->ack.ts = r->element[1]->integer;
    st->ack.duplicate = r->element[2]->integer != 0;
    if (st->ack.seq < 0) {
        /* The scripts' refusals: see store_send_lua and store_event_lua. */
        store_send_done(st, st->ack.seq == -1 ? STORE_NO_COUNTER : st->ack.seq == -2 ? STORE_NOT_FOUND
                            : st->ack.seq == -3 ? STORE_FORBIDDEN : st->ack.seq == -4 ? STORE_TOO_MANY
                            : STORE_IN_ARCHIVE);
        return;
    }
    if (!store_waits(st->bus)) {
        store_send_done(st, STORE_OK);
        return;
    }
    const config_t *cfg = bus_env(st->bus)->cfg;
    if (bus_wait(st->bus, ac, cfg->ack_replicas, cfg->ack_timeout, store_on_durable, st) != 0) {
        store_send_done(st, STORE_NOT_DURABLE);
    }
}

/* What the send and event scripts share: their first ten arguments and
 * keys, then the event's own. */
static int store_submit(bus_t *b, const char *room, const char *sender, const char *id,
                        const char *tail, const store_event_t *ev, store_send_cb_t *cb, void *arg)
{
    char kseq[160], klog[160], chan[160], head[200], win[24], cap[24];
    store_key(kseq, sizeof(kseq), room, "seq");
    store_key(klog, sizeof(klog), room, "log");
    store_channel(room, chan, sizeof(chan));
    snprintf(head, sizeof(head), "{\"room\":\"%s\",\"seq\":", room);
    snprintf(win, sizeof(win), "%d", bus_env(b)->cfg->dedup_window);
    snprintf(cap, sizeof(cap), "%d", bus_env(b)->cfg->recovery_window);
    /* The sender's length goes first so that no (sender, id) pair can
     * spell another's key. Without an id there is nothing to dedup. */
    char kdedup[400];
    snprintf(kdedup, sizeof(kdedup), "chatd:{%s}:d:%zu:%s:%s", room, strlen(sender), sender,
             id != NULL ? id : "");
    char karch[160], kqueue[200], kstate[160], kgone[160], kdur[160], target[24];
    store_key(karch, sizeof(karch), room, "archived");
    store_key(kstate, sizeof(kstate), room, "st");
    store_key(kgone, sizeof(kgone), room, "gone");
    store_key(kdur, sizeof(kdur), room, "durable");
    store_queue_key(b, room, kqueue, sizeof(kqueue));
    size_t rlen = strlen(room);
    store_send_t *st = malloc(sizeof(*st) + rlen + 1);
    if (st == NULL) {
        return -1;
    }
    st->bus = b;
    st->cb = cb;
    st->arg = arg;
    memset(&st->ack, 0, sizeof(st->ack));
    memcpy(st->room, room, rlen + 1);
    const char *archiving = bus_env(b)->cfg->mongo_uri[0] != '\0' ? "1" : "0";
    const char *waits = store_waits(b) ? "1" : "0";
    int rc;
    if (ev == NULL) {
        const char *argv[] = { "5", kseq, klog, kdedup, kqueue, karch,
                               head, tail, win, cap, chan, id != NULL ? "1" : "0", archiving, room,
                               bus_publish_verb(b), waits };
        rc = store_evalv_on(b, store_waits(b), STORE_SEND, NULL, store_on_sent, st, 16, argv);
    } else {
        snprintf(target, sizeof(target), "%" PRId64, ev->target);
        const char *argv[] = { "8", kseq, klog, kdedup, kqueue, karch, kstate, kgone, kdur,
                               head, tail, win, cap, chan, id != NULL ? "1" : "0", archiving, room,
                               bus_publish_verb(b), waits, ev->kind, sender, target,
                               ev->admin ? "1" : "0", ev->emoji != NULL ? ev->emoji : "",
                               ev->on ? "1" : "0", ev->seed_msg != NULL ? ev->seed_msg : "",
                               ev->seed_state != NULL ? ev->seed_state : "{}" };
        rc = store_evalv_on(b, store_waits(b), STORE_EVENT, NULL, store_on_sent, st, 27, argv);
    }
    if (rc != 0) {
        free(st);
        return -1;
    }
    return 0;
}

int store_send(bus_t *b, const char *room, const char *sender, const char *id,
               const char *tail, store_send_cb_t *cb, void *arg)
{
    return store_submit(b, room, sender, id, tail, NULL, cb, arg);
}

int store_event(bus_t *b, const char *room, const char *sender, const char *id, const char *tail,
                const store_event_t *ev, store_send_cb_t *cb, void *arg)
{
    return store_submit(b, room, sender, id, tail, ev, cb, arg);
}

/* ------------------------------------------------------------ reads */

/*
 * Every read of the log goes through the read script, which fills the
 * holes a delete left with content-free copies. With --ack-replicas it
 * sees only what is below the room's durable mark. When the room's counter is above the
 * mark (a commit was lost with its node, or a sender's wait timed out and
 * the replicas caught up later) and the read wants what is above, the
 * mark is healed first: a no-op write, a WAIT after it (which covers every
 * message before it), then a commit up to the counter.
 */
enum { STORE_READ_FWD, STORE_READ_HIST, STORE_READ_LAST };

typedef struct {
    bus_t *bus;
    store_cb_t *cb;
    void *arg;
    int kind;
    int healed;
    int64_t a, z;
    long count;
    int64_t top;
    char room[];
} store_read_t;

static int store_read_send(store_read_t *rd);

static void store_read_done(store_read_t *rd, redisReply *r)
{
    rd->cb(rd->arg, r);
    free(rd);
}

static void store_on_committed(void *arg, redisReply *r)
{
    store_read_t *rd = arg;
    /* The read goes after the commit's answer: it is on the other link. */
    if (r == NULL || r->type != REDIS_REPLY_INTEGER || store_read_send(rd) != 0) {
        store_read_done(rd, NULL);
    }
}

static void store_on_healed(void *arg, int ok)
{
    store_read_t *rd = arg;
    if (!ok || store_commit(rd->bus, rd->room, rd->top, store_on_committed, rd) != 0) {
        store_read_done(rd, NULL);
    }
}

static void store_on_touched(redisAsyncContext *ac, void *arg, redisReply *r)
{
    store_read_t *rd = arg;
    const config_t *cfg = bus_env(rd->bus)->cfg;
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        store_read_done(rd, NULL);
        return;
    }
    rd->top = r->integer;
    if (bus_wait(rd->bus, ac, cfg->ack_replicas, cfg->ack_timeout, store_on_healed, rd) != 0) {
        store_read_done(rd, NULL);
    }
}

static void store_on_read(void *arg, redisReply *r)
{
    store_read_t *rd = arg;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 5 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER ||
        r->element[2]->type != REDIS_REPLY_ARRAY) {
        store_read_done(rd, NULL);
        return;
    }
    int64_t durable = r->element[0]->integer, top = r->element[1]->integer;
    int wants_above = rd->kind == STORE_READ_LAST ||
                      (rd->kind == STORE_READ_FWD && (rd->z < 0 || rd->z > durable)) ||
                      (rd->kind == STORE_READ_HIST && (rd->a < 0 || rd->a - 1 > durable));
    if (store_waits(rd->bus) && top > durable && wants_above && !rd->healed) {
        rd->healed = 1;
        char kd[160], kseq[160];
        store_key(kd, sizeof(kd), rd->room, "durable");
        store_key(kseq, sizeof(kseq), rd->room, "seq");
        const char *argv[] = { "2", kd, kseq };
        if (store_evalv_on(rd->bus, 1, STORE_TOUCH, NULL, store_on_touched, rd, 3, argv) != 0) {
            store_read_done(rd, NULL);
        }
        return;
    }
    if (rd->kind == STORE_READ_FWD) {
        store_read_done(rd, r->element[2]);
        return;
    }
    if (rd->kind == STORE_READ_HIST) {
        store_read_done(rd, r);
        return;
    }
    /* Shaped as GET's answer: nil for a room without a counter. */
    char text[24];
    redisReply last = { .type = REDIS_REPLY_NIL };
    if (top >= 0) {
        int n = snprintf(text, sizeof(text), "%" PRId64, durable < top ? durable : top);
        last.type = REDIS_REPLY_STRING;
        last.str = text;
        last.len = (size_t)n;
    }
    store_read_done(rd, &last);
}

static int store_read_send(store_read_t *rd)
{
    char kd[160], kseq[160], klog[160], kgone[160], kstate[160], a[24], z[24], n[24];
    store_key(kd, sizeof(kd), rd->room, "durable");
    store_key(kseq, sizeof(kseq), rd->room, "seq");
    store_key(klog, sizeof(klog), rd->room, "log");
    store_key(kgone, sizeof(kgone), rd->room, "gone");
    store_key(kstate, sizeof(kstate), rd->room, "st");
    snprintf(a, sizeof(a), "%" PRId64, rd->a);
    snprintf(z, sizeof(z), "%" PRId64, rd->z);
    snprintf(n, sizeof(n), "%ld", rd->count);
    const char *mode = rd->kind == STORE_READ_FWD ? "f" : rd->kind == STORE_READ_HIST ? "h" : "l";
    const char *argv[] = { "5", kd, kseq, klog, kgone, kstate, mode, a, z, n,
                           store_waits(rd->bus) ? "1" : "0" };
    return store_evalv(rd->bus, STORE_READ, store_on_read, NULL, rd, 11, argv);
}

static int store_read(bus_t *b, int kind, const char *room, int64_t a, int64_t z, long count,
                      store_cb_t *cb, void *arg)
{
    size_t rlen = strlen(room);
    store_read_t *rd = calloc(1, sizeof(*rd) + rlen + 1);
    if (rd == NULL) {
        return -1;
    }
    rd->bus = b;
    rd->cb = cb;
    rd->arg = arg;
    rd->kind = kind;
    rd->a = a;
    rd->z = z;
    rd->count = count;
    memcpy(rd->room, room, rlen + 1);
    if (store_read_send(rd) != 0) {
        free(rd);
        return -1;
    }
    return 0;
}

int store_range(bus_t *b, const char *room, int64_t from, int64_t to, long count,
                store_cb_t *cb, void *arg)
{
    return store_read(b, STORE_READ_FWD, room, from, to, count, cb, arg);
}

int store_history(bus_t *b, const char *room, int64_t before, long count,
                  store_cb_t *cb, void *arg)
{
    return store_read(b, STORE_READ_HIST, room, before, -1, count, cb, arg);
}

int store_last_seq(bus_t *b, const char *room, store_cb_t *cb, void *arg)
{
    if (store_waits(b)) {
        return store_read(b, STORE_READ_LAST, room, 0, 0, 0, cb, arg);
    }
    char kseq[160];
    store_key(kseq, sizeof(kseq), room, "seq");
    const char *argv[] = { "GET", kseq };
    size_t lens[] = { 3, strlen(kseq) };
    return store_call(b, cb, arg, 2, argv, lens);
}

int store_seed_seq(bus_t *b, const char *room, int64_t seq, store_cb_t *cb, void *arg)
{
    char kseq[160], v[24];
    store_key(kseq, sizeof(kseq), room, "seq");
    snprintf(v, sizeof(v), "%" PRId64, seq);
    const char *argv[] = { "SET", kseq, v, "NX" };
    size_t lens[] = { 3, strlen(kseq), strlen(v), 2 };
    return store_call(b, cb, arg, 4, argv, lens);
}

/*
 * The archived cursor says MongoDB holds every entry of the room up to it:
 * below it the log is trimmed and message states are dropped, and an event
 * on such a message starts from MongoDB's copy. Several workers archive one
 * queue, each a batch of its own, and a later batch can be written before
 * an earlier one; raising the cursor to the later batch's seq would let an
 * event read a copy still missing the earlier batch's changes, and
 * MongoDB would keep that wrong state for good. So a cursor passes only
 * entries older than every entry still pending in the group (the floor):
 * everything below the floor is written, and the rest, delivered after
 * it, is newer. A room held back waits for its next batch, keeping a few
 * more entries in Redis meanwhile.
 * KEYS: the queue, then the cursors. ARGV: the group, then per entry its
 * cursor's index in KEYS, its queue id and its seq.
 */
static const char store_archived_lua[] =
    "local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1])\n"
    "if not ok then return 0 end\n"
    "local fms, fsq\n"
    "if p[1] > 0 then fms, fsq = string.match(p[2], '^(%d+)-(%d+)$') end\n"
    "fms, fsq = tonumber(fms), tonumber(fsq)\n"
    "local top = {}\n"
    "for i = 2, #ARGV - 2, 3 do\n"
    "  local k, s = tonumber(ARGV[i]), tonumber(ARGV[i + 2])\n"
    "  local ms, sq = string.match(ARGV[i + 1], '^(%d+)-(%d+)$')\n"
    "  ms, sq = tonumber(ms), tonumber(sq)\n"
    "  local below = not fms or ms < fms or (ms == fms and sq < fsq)\n"
    "  if below and s > (top[k] or 0) then top[k] = s end\n"
    "end\n"
    "for k, s in pairs(top) do\n"
    "  if tonumber(redis.call('GET', KEYS[k]) or '0') < s then redis.call('SET', KEYS[k], s) end\n"
    "end\n"
    "return 0\n";

int store_set_archived(bus_t *b, const char *queue, const store_archived_t *e, size_t n)
{
    /* EVAL, script, numkeys, queue, a cursor per room, group, 3 per entry. */
    size_t cap = 5 + n + 3 * n;
    const char **argv = calloc(cap, sizeof(*argv));
    size_t *lens = calloc(cap, sizeof(*lens));
    char (*keys)[160] = calloc(n > 0 ? n : 1, sizeof(*keys));
    char (*nums)[2][24] = calloc(n > 0 ? n : 1, sizeof(*nums));
    size_t *kidx = calloc(n > 0 ? n : 1, sizeof(*kidx));
    int rc = -1;
    if (argv == NULL || lens == NULL || keys == NULL || nums == NULL || kidx == NULL) {
        goto done;
    }
    /* One cursor key per distinct room; an entry names its own by index. */
    size_t nkeys = 0, nent = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].room[0] == '\0') {
            continue;       /* an unreadable entry: no room to advance */
        }
        size_t k = 0;
        while (k < nkeys && strcmp(e[kidx[k]].room, e[i].room) != 0) {
            k++;
        }
        if (k == nkeys) {
            kidx[nkeys] = i;
            store_key(keys[nkeys], sizeof(keys[nkeys]), e[i].room, "archived");
            nkeys++;
        }
        snprintf(nums[nent][0], sizeof(nums[nent][0]), "%zu", k + 2);     /* KEYS[1] is the queue */
        snprintf(nums[nent][1], sizeof(nums[nent][1]), "%" PRId64, e[i].seq);
        nent++;
    }
    if (nkeys == 0) {
        rc = 0;
        goto done;
    }
    char numkeys[24];
    snprintf(numkeys, sizeof(numkeys), "%zu", nkeys + 1);
    size_t argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = store_archived_lua;
    argv[argc++] = numkeys;
    argv[argc++] = queue;
    for (size_t k = 0; k < nkeys; k++) {
        argv[argc++] = keys[k];
    }
    argv[argc++] = "archivers";
    nent = 0;
    for (size_t i = 0; i < n; i++) {
        if (e[i].room[0] == '\0') {
            continue;
        }
        argv[argc++] = nums[nent][0];
        argv[argc++] = e[i].id;
        argv[argc++] = nums[nent][1];
        nent++;
    }
    for (size_t i = 0; i < argc; i++) {
        lens[i] = strlen(argv[i]);
    }
    rc = store_call_key(b, queue, NULL, NULL, (int)argc, argv, lens);
done:
    free(argv);
    free(lens);
    free(keys);
    free(nums);
    free(kidx);
    return rc;
}

int store_presence(bus_t *b, const char *room, store_cb_t *cb, void *arg)
{
    char ku[160];
    store_key(ku, sizeof(ku), room, "u");
    const char *argv[] = { "HKEYS", ku };
    size_t lens[] = { 5, strlen(ku) };
    return store_call(b, cb, arg, 2, argv, lens);
}

/* ---------------------------------------------------------- presence */

static void store_holder_key(const bus_t *b, const char *room, char *out, size_t outlen)
{
    snprintf(out, outlen, "chatd:{%s}:h:%s", room, bus_env(b)->wid);
}

static void store_index_key(const char *wid, char *out, size_t outlen)
{
    snprintf(out, outlen, "chatd:w:{%s}", wid);
}

/* The room goes into a worker's index before any entry is made there, so
 * a reaper that finds the worker dead finds the entry too; it leaves the
 * index only after a leave confirmed that the worker holds nobody there.
 * A join that made the worker's first entry in the room (the only kind a
 * removal can race) adds the room again from its reply. */
static void store_index(bus_t *b, const char *room, int add)
{
    char kw[200];
    store_index_key(bus_env(b)->wid, kw, sizeof(kw));
    const char *argv[] = { add ? "SADD" : "SREM", kw, room };
    size_t lens[] = { 4, strlen(kw), strlen(room) };
    bus_command(b, kw, lens[1], NULL, NULL, 3, argv, lens);
}

typedef struct {
    bus_t *bus;
    int joined;
    char room[];
} store_member_t;

static void store_on_member(void *arg, redisReply *r)
{
    store_member_t *sm = arg;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER) {
        if (sm->joined && r->integer == 1) {
            store_index(sm->bus, sm->room, 1);
        } else if (!sm->joined && r->integer == 0) {
            store_index(sm->bus, sm->room, 0);
        }
    }
    free(sm);
}

void store_member(bus_t *b, const char *room, const char *user, int joined)
{
    char ku[160], kh[320], chan[160], limit[24];
    store_key(ku, sizeof(ku), room, "u");
    store_holder_key(b, room, kh, sizeof(kh));
    store_channel(room, chan, sizeof(chan));
    snprintf(limit, sizeof(limit), "%d", bus_env(b)->cfg->member_events);
    size_t rlen = strlen(room);
    store_member_t *sm = malloc(sizeof(*sm) + rlen + 1);
    char *frame = proto_encode_member(room, user, joined);
    if (sm == NULL || frame == NULL) {
        free(sm);
        free(frame);
        return;
    }
    sm->bus = b;
    sm->joined = joined;
    memcpy(sm->room, room, rlen + 1);
    if (joined) {
        store_index(b, room, 1);
    }
    const char *argv[] = { "2", ku, kh, user, limit, chan, frame, joined ? "1" : "0", bus_publish_verb(b) };
    if (store_evalv(b, STORE_MEMBER, store_on_member, NULL, sm, 9, argv) != 0) {
        /* Redis is down: presence is re-asserted when it returns. */
        log_debug("event=presence_deferred room=%s user=%s", room, user);
        free(sm);
    }
    free(frame);
}

void store_typing(bus_t *b, const char *room, const char *user, int active)
{
    char chan[160];
    store_channel(room, chan, sizeof(chan));
    char *frame = proto_encode_typing(room, user, active);
    if (frame == NULL) {
        return;
    }
    buf_t msg = { 0 };
    if (buf_append(&msg, "X", 1) == 0 && buf_append(&msg, user, strlen(user)) == 0 &&
        buf_append(&msg, "\n", 1) == 0 && buf_append(&msg, frame, strlen(frame)) == 0) {
        const char *verb = bus_publish_verb(b);
        const char *argv[] = { verb, chan, msg.data };
        size_t lens[] = { strlen(verb), strlen(chan), msg.len };
        bus_command(b, chan, lens[1], NULL, NULL, 3, argv, lens);
    }
    buf_free(&msg);
    free(frame);
}

/* ------------------------------------------------ users: rooms, receipts */

size_t store_user_channel(const char *user, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "chatd:u:{%s}", user);
    return n < 0 || (size_t)n >= outlen ? 0 : (size_t)n;
}

void store_user_publish(bus_t *b, const char *user, const char *msg, size_t len)
{
    char chan[128];
    size_t clen = store_user_channel(user, chan, sizeof(chan));
    const char *verb = bus_publish_verb(b);
    const char *argv[] = { verb, chan, msg };
    size_t lens[] = { strlen(verb), clen, len };
    if (clen > 0) {
        bus_command(b, chan, clen, NULL, NULL, 3, argv, lens);
    }
}

int store_user_publish_counted(bus_t *b, const char *user, const char *msg, size_t len,
                               store_cb_t *cb, void *arg)
{
    char chan[128];
    size_t clen = store_user_channel(user, chan, sizeof(chan));
    const char *verb = bus_publish_verb(b);
    const char *argv[] = { verb, chan, msg };
    size_t lens[] = { strlen(verb), clen, len };
    return clen > 0 ? store_call(b, cb, arg, 3, argv, lens) : -1;
}

static void store_user_key_name(const char *user, char *out, size_t outlen)
{
    snprintf(out, outlen, "chatd:k:{%s}", user);
}

int store_set_user_key(bus_t *b, const char *user, const char *key, store_cb_t *cb, void *arg)
{
    char k[128];
    store_user_key_name(user, k, sizeof(k));
    const char *argv[] = { "SET", k, key };
    size_t lens[] = { 3, strlen(k), strlen(key) };
    return store_call(b, cb, arg, 3, argv, lens);
}

int store_get_user_key(bus_t *b, const char *user, store_cb_t *cb, void *arg)
{
    char k[128];
    store_user_key_name(user, k, sizeof(k));
    const char *argv[] = { "GET", k };
    size_t lens[] = { 3, strlen(k) };
    return store_call(b, cb, arg, 2, argv, lens);
}

static void store_room_keys_name(const char *room, const char *user, char *out, size_t outlen)
{
    char suffix[96];
    snprintf(suffix, sizeof(suffix), "rk:%s", user);
    store_key(out, outlen, room, suffix);
}

int store_put_room_key(bus_t *b, const char *room, const char *user, const char *entry,
                       store_cb_t *cb, void *arg)
{
    static const char script[] =
        "redis.call('LREM', KEYS[1], 0, ARGV[1])\n"
        "redis.call('RPUSH', KEYS[1], ARGV[1])\n"
        "redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)\n"
        "return 1\n";
    char k[256], max[16];
    store_room_keys_name(room, user, k, sizeof(k));
    snprintf(max, sizeof(max), "%d", STORE_ROOM_KEYS_MAX);
    const char *argv[] = { "EVAL", script, "1", k, entry, max };
    size_t lens[] = { 4, sizeof(script) - 1, 1, strlen(k), strlen(entry), strlen(max) };
    return store_call_key(b, k, cb, arg, 6, argv, lens);
}

int store_room_keys(bus_t *b, const char *room, const char *user, store_cb_t *cb, void *arg)
{
    char k[256];
    store_room_keys_name(room, user, k, sizeof(k));
    const char *argv[] = { "LRANGE", k, "0", "-1" };
    size_t lens[] = { 6, strlen(k), 1, 2 };
    return store_call(b, cb, arg, 4, argv, lens);
}

int store_room_state(bus_t *b, const char *room, const char *user, store_cb_t *cb, void *arg)
{
    char kseq[160], kd[160], krd[160], klog[160];
    store_key(kseq, sizeof(kseq), room, "seq");
    store_key(kd, sizeof(kd), room, "durable");
    store_key(krd, sizeof(krd), room, "rd");
    store_key(klog, sizeof(klog), room, "log");
    /* The sender field of a chat payload is cJSON's spelling of the name. */
    cJSON *name = cJSON_CreateString(user);
    char *spelled = name != NULL ? cJSON_PrintUnformatted(name) : NULL;
    cJSON_Delete(name);
    if (spelled == NULL) {
        return -1;
    }
    const char *argv[] = { "4", kseq, kd, krd, klog, user, store_waits(b) ? "1" : "0", spelled };
    int rc = store_evalv(b, STORE_ROOM, cb, NULL, arg, 8, argv);
    free(spelled);
    return rc;
}

int store_read_cursor(bus_t *b, const char *room, const char *user, int64_t seq, store_cb_t *cb, void *arg)
{
    char krd[160], kseq[160], kd[160], ku[160], chan[160], v[24], limit[24];
    store_key(krd, sizeof(krd), room, "rd");
    store_key(kseq, sizeof(kseq), room, "seq");
    store_key(kd, sizeof(kd), room, "durable");
    store_key(ku, sizeof(ku), room, "u");
    store_channel(room, chan, sizeof(chan));
    snprintf(v, sizeof(v), "%" PRId64, seq);
    snprintf(limit, sizeof(limit), "%d", bus_env(b)->cfg->member_events);
    const char *argv[] = { "4", krd, kseq, kd, ku, user, v, store_waits(b) ? "1" : "0", limit, chan,
                           bus_publish_verb(b), room };
    return store_evalv(b, STORE_READ_CURSOR, cb, NULL, arg, 12, argv);
}

static void store_user_key(char *out, size_t outlen, const char *user)
{
    snprintf(out, outlen, "chatd:ur:{%s}", user);
}

void store_user_room(bus_t *b, const char *user, const char *room)
{
    char key[128], keep[16];
    store_user_key(key, sizeof(key), user);
    snprintf(keep, sizeof(keep), "%d", STORE_USER_ROOMS_KEEP);
    const char *argv[] = { "1", key, room, keep };
    store_evalv(b, STORE_USER_ROOM, NULL, NULL, NULL, 4, argv);
}

int store_user_rooms(bus_t *b, const char *user, store_cb_t *cb, void *arg)
{
    char key[128], last[16];
    store_user_key(key, sizeof(key), user);
    snprintf(last, sizeof(last), "%d", STORE_USER_ROOMS_KEEP - 1);
    const char *argv[] = { "ZREVRANGE", key, "0", last };
    size_t lens[] = { 9, strlen(key), 1, strlen(last) };
    return store_call(b, cb, arg, 4, argv, lens);
}

int store_entry(const redisReply *e, store_entry_t *out)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
        e->element[1]->type != REDIS_REPLY_STRING || e->element[2]->type != REDIS_REPLY_STRING ||
        e->element[0]->integer <= 0) {
        return -1;
    }
    out->seq = e->element[0]->integer;
    out->type = e->element[1]->str;
    out->payload = e->element[2]->str;
    out->len = e->element[2]->len;
    out->state = NULL;
    out->slen = 0;
    if (e->elements > 3 && e->element[3]->type == REDIS_REPLY_STRING) {
        out->state = e->element[3]->str;
        out->slen = e->element[3]->len;
    }
    return 0;
}

int store_history_reply(const redisReply *r, const redisReply **entries, int64_t *lowest, int *ended)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 5 ||
        r->element[2]->type != REDIS_REPLY_ARRAY || r->element[3]->type != REDIS_REPLY_INTEGER ||
        r->element[4]->type != REDIS_REPLY_INTEGER) {
        return -1;
    }
    *entries = r->element[2];
    *lowest = r->element[3]->integer;
    *ended = r->element[4]->integer != 0;
    return 0;
}

/* ----------------------------------------------------------- reaping */

/*
 * A dead worker's entries are taken back room by room: its index lists
 * the rooms, one script per room undoes what it held there, and only
 * when every room answered are its index and registry entry dropped. A
 * reaper that dies halfway leaves both, and the next one starts over;
 * every step is idempotent.
 */
typedef struct {
    bus_t *bus;
    int pending;
    int failed;
    char wid[128];
} store_reap_t;

static void store_reap_finish(store_reap_t *rp)
{
    if (!rp->failed) {
        char kw[200];
        store_index_key(rp->wid, kw, sizeof(kw));
        const char *del[] = { "DEL", kw };
        size_t dlen[] = { 3, strlen(kw) };
        bus_command(rp->bus, kw, dlen[1], NULL, NULL, 2, del, dlen);
        const char *zrem[] = { "ZREM", STORE_WORKERS_KEY, rp->wid };
        size_t zlen[] = { 4, strlen(STORE_WORKERS_KEY), strlen(rp->wid) };
        bus_command(rp->bus, STORE_WORKERS_KEY, zlen[1], NULL, NULL, 3, zrem, zlen);
        log_info("event=reaped wid=%s", rp->wid);
    }
    free(rp);
}

static void store_on_room_reaped(void *arg, redisReply *r)
{
    store_reap_t *rp = arg;
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        rp->failed = 1;
    }
    if (--rp->pending == 0) {
        store_reap_finish(rp);
    }
}

static void store_on_index(void *arg, redisReply *r)
{
    store_reap_t *rp = arg;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        free(rp);
        return;
    }
    char limit[24];
    snprintf(limit, sizeof(limit), "%d", bus_env(rp->bus)->cfg->member_events);
    rp->pending = 1;    /* held until every room's script is sent */
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len == 0 || e->len > 128) {
            continue;
        }
        char room[160], ku[200], kh[360], chan[200];
        snprintf(room, sizeof(room), "%.*s", (int)e->len, e->str);
        store_key(ku, sizeof(ku), room, "u");
        snprintf(kh, sizeof(kh), "chatd:{%s}:h:%s", room, rp->wid);
        store_channel(room, chan, sizeof(chan));
        const char *argv[] = { "2", ku, kh, room, limit, chan, bus_publish_verb(rp->bus) };
        if (store_evalv(rp->bus, STORE_REAP_ROOM, store_on_room_reaped, NULL, rp, 7, argv) == 0) {
            rp->pending++;
        } else {
            rp->failed = 1;
        }
    }
    if (--rp->pending == 0) {
        store_reap_finish(rp);
    }
}

static void store_reap(bus_t *b, const char *wid)
{
    store_reap_t *rp = calloc(1, sizeof(*rp));
    if (rp == NULL) {
        return;
    }
    rp->bus = b;
    snprintf(rp->wid, sizeof(rp->wid), "%s", wid);
    if (!bus_is_cluster(b)) {
        char limit[24], kold[200];
        snprintf(limit, sizeof(limit), "%d", bus_env(b)->cfg->member_events);
        snprintf(kold, sizeof(kold), "chatd:w:%s", wid);
        /* Routed by the old set's key: there is only one node. */
        const char *legacy[] = { "1", kold, wid, limit };
        store_evalv(b, STORE_REAP_LEGACY, NULL, NULL, NULL, 4, legacy);
    }
    char kw[200];
    store_index_key(wid, kw, sizeof(kw));
    const char *argv[] = { "SMEMBERS", kw };
    size_t lens[] = { 8, strlen(kw) };
    if (store_call(b, store_on_index, rp, 2, argv, lens) != 0) {
        free(rp);
    }
}

static void store_on_dead(void *arg, redisReply *r)
{
    bus_t *b = arg;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type == REDIS_REPLY_STRING && e->len < 128) {
            char wid[128];
            snprintf(wid, sizeof(wid), "%.*s", (int)e->len, e->str);
            log_info("event=reap_dead_worker wid=%s", wid);
            store_reap(b, wid);
        }
    }
}

static void store_heartbeat(bus_t *b)
{
    const char *argv[] = { "1", STORE_WORKERS_KEY, bus_env(b)->wid };
    store_evalv(b, STORE_HEARTBEAT, NULL, NULL, NULL, 3, argv);
}

void store_on_node_up(bus_t *b, redisAsyncContext *ac)
{
    /* The scripts are loaded before anything else runs on this connection:
     * commands on one connection run in order, so no EVALSHA sent after
     * this can miss them. Without it, the first chats after a (re)connect
     * would all answer NOSCRIPT, and their one-by-one EVAL resends could
     * overtake each other, storing one sender's messages out of the order
     * it sent them. */
    for (int i = 0; i < STORE_NSCRIPTS; i++) {
        const char *argv[] = { "SCRIPT", "LOAD", store_scripts[i].lua };
        size_t lens[] = { 6, 4, strlen(store_scripts[i].lua) };
        bus_command_node(b, ac, NULL, NULL, 3, argv, lens);
    }
}

void store_tick(bus_t *b)
{
    static const int ticks_per_reap = STORE_REAP_EVERY_MS / 1000;
    if (!bus_ready(b, STORE_WORKERS_KEY, strlen(STORE_WORKERS_KEY))) {
        return;
    }
    if (bus_prev_wid(b)[0] != '\0') {
        log_info("event=reap_predecessor wid=%s", bus_prev_wid(b));
        store_reap(b, bus_prev_wid(b));
        bus_forget_prev_wid(b);
    }
    store_heartbeat(b);
    /* Derived from the loop clock, so the tick keeps no counter. */
    uint64_t sec = uv_now(bus_env(b)->loop) / 1000;
    if (sec % (uint64_t)ticks_per_reap == (uint64_t)bus_env(b)->slot % (uint64_t)ticks_per_reap) {
        char dead_after[24];
        snprintf(dead_after, sizeof(dead_after), "%d", STORE_DEAD_AFTER_MS);
        const char *argv[] = { "1", STORE_WORKERS_KEY, dead_after };
        store_evalv(b, STORE_DEAD, store_on_dead, NULL, b, 3, argv);
    }
}
