/*
 * hashslot: which of Redis Cluster's 16384 slots a key lives in. Cluster
 * hashes the text between the key's first '{' and the next '}' when that
 * is not empty (the hash tag), else the whole key, with CRC16-XMODEM. Every
 * room key chatd makes carries the room as its hash tag, so a room's keys
 * and channel share one slot.
 */
#ifndef CHATD_HASHSLOT_H
#define CHATD_HASHSLOT_H

#include <stddef.h>
#include <stdint.h>

#define HASHSLOT_COUNT 16384

/* The slot of key (len bytes, need not end in NUL). */
unsigned hashslot_of(const char *key, size_t len);

/* CRC16-XMODEM of len bytes (the checksum the slot is taken from). */
uint16_t hashslot_crc16(const char *p, size_t len);

#endif
