/*
 * hangar-sandbox-agent: the first process of a stateful sandbox. See main.c for the design and
 * proto/hangar/v1/agent.proto for the protocol.
 */
#ifndef HANGAR_SANDBOX_AGENT_H
#define HANGAR_SANDBOX_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "hangar/v1/agent.pb-c.h"

/* A frame's body is at most this long (the 4-byte length not counted). */
#define AGENT_MAX_FRAME (4u * 1024 * 1024)
/* Command output goes out in chunks of at most this many bytes. */
#define AGENT_OUTPUT_CHUNK (64u * 1024)
/* A ReadFile answers with at most this many bytes. */
#define AGENT_READ_CHUNK (1024u * 1024)
/* Paths longer than this are refused. */
#define AGENT_MAX_PATH 4096

/* Result of decoding one frame body. */
typedef struct {
    /* The request, or NULL when the body is not one (then `error` says why). */
    Hangar__V1__AgentRequest *request;
    /* The request's id when it could be read, else 0. */
    uint64_t id;
    char error[160];
} AgentDecoded;

/*
 * Decodes one frame body (`length` bytes, at most AGENT_MAX_FRAME). Never crashes on any input:
 * the body is first walked as protobuf wire format, refusing strings with NUL bytes (protobuf-c
 * would silently cut them there), then unpacked by protobuf-c. Free the request with
 * agent_free_request.
 */
AgentDecoded agent_decode_frame(const uint8_t *body, size_t length);
void agent_free_request(Hangar__V1__AgentRequest *request);

/* Sends one event (blocking). */
void agent_send(const Hangar__V1__AgentEvent *event);
/* Sends the event answering `request_id` whose oneof is KIND (STARTED, OK…), `member` set to `value`. */
#define AGENT_SEND_EVENT(request_id, KIND, member, value)                                                  \
    do {                                                                                                   \
        Hangar__V1__AgentEvent agent_event_ = HANGAR__V1__AGENT_EVENT__INIT;                               \
        agent_event_.id = (request_id);                                                                    \
        agent_event_.kind_case = HANGAR__V1__AGENT_EVENT__KIND_##KIND;                                     \
        agent_event_.member = (value);                                                                     \
        agent_send(&agent_event_);                                                                         \
    } while (0)
/* Sends an Error event for request `id`. */
void agent_send_error(uint64_t id, Hangar__V1__AgentError__Code code, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
/* Sends an Error event built from errno: "`what` `path`: strerror". */
void agent_send_errno(uint64_t id, int error, const char *what, const char *path);
/* Sends an empty answer of the given kind (Ok, Pong). */
void agent_send_ok(uint64_t id);

/* File operations (files.c): each answers the request with one event. */
void agent_file_request(const Hangar__V1__AgentRequest *request);
/*
 * Normalises `path` into `out` (AGENT_MAX_PATH + 1 bytes): absolute (relative to the user's home),
 * no empty, "." or ".." components. 0 when fine; otherwise an Error was sent for `id`.
 */
int agent_normalise_path(uint64_t id, const char *path, char *out);

/* Directory watches (watch.c): at most this many at once. */
#define AGENT_MAX_WATCHES 8
/* Sets a watch of `path` (normalised) for `request` (a Watch): answers an empty AgentWatchEvents. */
void agent_watch_request(const Hangar__V1__AgentRequest *request, const char *path);
/* Ends a watch (an Unwatch request): its last batch, then Ok. */
void agent_unwatch_request(const Hangar__V1__AgentRequest *request);
/* The inotify descriptor of watch slot `index`, or -1 when the slot is free. */
int agent_watch_fd(int index);
/* Reads what watch slot `index`'s descriptor holds and sends it as batches. */
void agent_watch_drain(int index);
/* Ends every watch without a word (the node that asked for them hung up). */
void agent_watch_release_all(void);

#endif
