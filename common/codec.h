/*
 * codec.h - the body of every AMQP message: a msgpack map, version 1.
 *
 * Messages carry state, not deltas (docs/ARCHITECTURE.md, "The wire").
 * Every body is one msgpack map whose keys are short, fixed strings:
 *
 *   every kind  "v"       uint   always 1
 *               "kind"    str    "task" | "state" | "sync" | "sync_done"
 *               "client"  str    client id, 1..64 bytes
 *               "task"    int    source task id: > 0 for task and state,
 *                                0 for sync and sync_done
 *               "seq"     uint   per task, strictly increasing; >= 1 for
 *                                task and state, any value for sync and
 *                                sync_done
 *               "ts"      int    unix time in milliseconds when produced, >= 0
 *   task        "department" int target department id, > 0
 *               "name"    str    subject, <= 4 KiB
 *               "type"    str    task type intname, <= 128 bytes
 *               "note"    str    free text, <= 1 MiB
 *               "deadline" str   "" or "YYYY-MM-DD HH:MM:SS"
 *               "item"    str    description of the service, <= 4 KiB
 *               "account" str    description of the customer, <= 4 KiB
 *               "status"  int    0 opened, 1 in work, 2 closed
 *               "rev_seq" uint   OPTIONAL: the seq of the last state
 *                                message the client had applied to the
 *                                task when it read the task; absent (a
 *                                client older than this key) decodes as
 *                                0 = unknown
 *   state       "status"  int    0..2
 *               "performer_id" int  target staff id, 0 = none, >= 0
 *               "performer" str  display name, "" = none, <= 1 KiB
 *               "notes"   array of str, oldest first, <= 1000 entries of
 *                                <= 64 KiB each
 *               "fwd_seq" uint   OPTIONAL: the seq of the last task message
 *                                the server had applied to the task when it
 *                                read the state; absent (a server older
 *                                than this key) decodes as 0 = unknown
 *   sync        "id"      str    request id, 1..64 bytes
 *   sync_done   "id"      str    the id of the sync being answered
 *               "count"   uint   tasks published for that sync
 *
 * The encoder writes exactly these keys, in this order, with the shortest
 * msgpack encoding of each value, so that one message always gives the same
 * bytes. The decoder meets untrusted bytes and is written for them: it
 * reads the msgpack itself (never allocating from a declared count), caps
 * every length, ignores unknown keys (whatever they hold, within the
 * nesting and size caps), and rejects a missing, duplicated or ill-typed
 * required key, an integer out of range, text that is not UTF-8 or holds a
 * NUL byte, and anything after the map. Keys that belong to another kind
 * count as unknown keys. An optional key may be absent (it then reads as
 * its zero value), but when present it is checked like any other; the
 * encoder always writes it, so that a peer ignoring it still reads the
 * rest, and one message keeps one encoding. Encoder and decoder apply the same checks, so what
 * one accepts the other accepts too.
 */
#ifndef RT_CODEC_H
#define RT_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "rt.h"

#define CODEC_VERSION 1

/* Caps, in bytes unless said otherwise. */
#define CODEC_MAX_BODY       (4u * 1024 * 1024) /* whole encoded body */
#define CODEC_MAX_CLIENT     64
#define CODEC_MAX_ID         64
#define CODEC_MAX_NAME       4096
#define CODEC_MAX_TYPE       128
#define CODEC_MAX_DEADLINE   32
#define CODEC_MAX_ITEM       4096
#define CODEC_MAX_ACCOUNT    4096
#define CODEC_MAX_NOTE       (1024u * 1024)
#define CODEC_MAX_PERFORMER  1024
#define CODEC_MAX_NOTES      1000            /* entries in "notes" */
#define CODEC_MAX_NOTE_ENTRY 65536           /* bytes of one entry in "notes" */
#define CODEC_MAX_DEPTH      3               /* nested maps/arrays, the body being 1 */
#define CODEC_MAX_MAP_KEYS   64              /* pairs in any map */
#define CODEC_MAX_ARRAY      CODEC_MAX_NOTES /* elements in any array */

enum codec_kind {
    CODEC_TASK = 1,  /* client -> server: the forward fields of a source task */
    CODEC_STATE,     /* server -> client: status, performer, notes of a task */
    CODEC_SYNC,      /* client -> server: send me the state of all my tasks */
    CODEC_SYNC_DONE, /* server -> client: everything for sync "id" was sent */
};

/* The forward fields of a task (kind CODEC_TASK). */
struct codec_task {
    int64_t department; /* target department id */
    char *name;
    char *type;
    char *note;
    char *deadline; /* "" or "YYYY-MM-DD HH:MM:SS" */
    char *item;
    char *account;
    int status; /* 0..2, the source task's status */
    /* The seq of the last state message the client had applied to the task
     * when it read it, 0 = unknown. The server applies the status only from
     * a message that had seen the last state it published
     * (consumer/forward.c): an older one may carry a status the target's
     * own change has replaced. */
    uint64_t rev_seq;
};

/* What the target side did with a task (kind CODEC_STATE). */
struct codec_state {
    int status;           /* 0..2 */
    int64_t performer_id; /* 0 = none */
    char *performer;      /* display name, "" = none */
    char **notes;         /* nnotes entries, oldest first */
    size_t nnotes;
    /* The seq of the last task message the server had applied to the task
     * when it read this state, 0 = unknown. The client applies the status
     * only from a state that had seen its last confirmed task message
     * (consumer/reverse.c): an older one may carry a status the client's
     * own change is about to replace. */
    uint64_t fwd_seq;
};

/* A sync request (CODEC_SYNC) or its end marker (CODEC_SYNC_DONE). */
struct codec_sync {
    char *id;
    uint64_t count; /* sync_done only: tasks published for this sync */
};

/*
 * One message. Only the sub-struct of the message's kind is meaningful; the
 * others stay zeroed. For encoding, the strings are only read, so they may
 * be borrowed; a NULL string is encoded as "" (except that "client" and
 * "id" must be non-empty). A decoded message owns every string and the
 * notes array; codec_msg_release() frees them.
 */
struct codec_msg {
    int v; /* CODEC_VERSION after decode; ignored by encode */
    enum codec_kind kind;
    char *client;
    int64_t task;
    uint64_t seq;
    int64_t ts;
    struct codec_task fwd;    /* CODEC_TASK */
    struct codec_state state; /* CODEC_STATE */
    struct codec_sync sync;   /* CODEC_SYNC, CODEC_SYNC_DONE */
};

/* Zeroes *m and sets its version and kind. Nothing is allocated. */
void codec_msg_init(struct codec_msg *m, enum codec_kind kind);

/* Frees every string and the notes array of *m with free() and zeroes it.
 * Accepts a zeroed message and a NULL pointer. Only for messages whose
 * pointers are owned (e.g. filled by codec_decode). */
void codec_msg_release(struct codec_msg *m);

/*
 * Appends the encoded body of *m to out. Returns 0, or -1 with a reason in
 * err (always NUL-terminated when errlen > 0; err may be NULL) when a field
 * is out of range or over its cap, "client"/"id" is empty, text is not
 * UTF-8 or the kind is unknown, when the body would pass CODEC_MAX_BODY, or
 * when out's own cap or memory is exhausted. On -1, out is unchanged.
 */
int codec_encode(const struct codec_msg *m, struct buf *out, char *err, size_t errlen);

/*
 * Decodes one body of len bytes into *out, which needs no initialization.
 * Returns RT_OK with *out filled (the caller releases it with
 * codec_msg_release), or RT_REJECT with a reason in err naming the key
 * (e.g. `missing required key "seq"`, `key "name" is 70000 bytes, cap
 * 4096`, `unknown kind "foo"`, `version 2 not supported`) and *out zeroed,
 * nothing left allocated. Never RT_RETRY: the same bytes never get better.
 * Safe on any byte string, within the caps above.
 */
rt_status codec_decode(const void *data, size_t len, struct codec_msg *out, char *err,
                       size_t errlen);

/* The wire name of a kind ("task", ...), a static string; "unknown" for a
 * value outside the enum. */
const char *codec_kind_name(enum codec_kind kind);

/* Parses a wire name into *out. Returns 0, or -1 for anything else (NULL
 * included), leaving *out unchanged. */
int codec_kind_parse(const char *name, enum codec_kind *out);

/* 1 when a and b carry the same message: the common fields and the fields
 * of their kind are equal, a NULL string counting as ""; 0 otherwise. */
int codec_msg_equal(const struct codec_msg *a, const struct codec_msg *b);

#endif
