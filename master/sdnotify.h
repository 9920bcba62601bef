/*
 * sdnotify: systemd's readiness protocol (sd_notify(3)) without libsystemd:
 * one datagram of "KEY=value" lines to the socket named by $NOTIFY_SOCKET
 * (a path, or an abstract name written with a leading '@'). Under any other
 * supervisor the variable is unset and nothing is sent.
 */
#ifndef CHATD_SDNOTIFY_H
#define CHATD_SDNOTIFY_H

/* Sends state ("READY=1", "RELOADING=1", "STOPPING=1", "STATUS=..." lines).
 * Returns 1 when sent, 0 when there is no NOTIFY_SOCKET, -1 on failure
 * (errno set). */
int sdnotify_send(const char *state);

#endif
