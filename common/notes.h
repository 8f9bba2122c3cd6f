/*
 * notes.h - the conversation carried in a task's note field.
 *
 * BILLmanager's public API has no comments on tasks, so the note field
 * carries the conversation (the API contract, "Notes"; tests/sim/billsim.py
 * plays it). Each side keeps its own text, and the bridge appends what the
 * other side wrote as a block marked with its origin:
 *
 *     <text written on this side>
 *
 *     --- remotetask: from client 7, task 1234 ---
 *     <text written on the other side>
 *     --- remotetask: end ---
 *
 * The *native* text of a note is the note with every such block (and the
 * blank line the bridge put before it) removed: what people on this side
 * wrote. Only native text ever travels, so a block never goes back where it
 * came from, and a note written on either side reaches the other once.
 * A block's header names its origin; on the target the header of the
 * forward blocks ("from client C, task T") is also the marker by which a
 * redelivered create finds the task it already made.
 */
#ifndef RT_NOTES_H
#define RT_NOTES_H

#include <stddef.h>
#include <stdint.h>

/* The longest origin label notes_* accept. */
#define NOTES_ORIGIN_MAX 200

/* The native text of note (NULL counts as ""): a new malloc'd string the
 * caller frees, or NULL when memory ran out. A block whose end line is
 * missing (someone deleted it) runs to the end of the note. */
char *notes_native(const char *note);

/* note (NULL counts as "") with a block from origin holding text appended:
 * a new malloc'd string, or NULL when memory ran out or origin is longer
 * than NOTES_ORIGIN_MAX or holds a newline. */
char *notes_append(const char *note, const char *origin, const char *text);

/* 1 when note holds a block whose origin is exactly origin, else 0. */
int notes_has_origin(const char *note, const char *origin);

/* Writes the origin label of forward blocks: "from client C, task T". */
void notes_origin_forward(char *buf, size_t len, const char *client, int64_t task);

/* What of native is new, given that its first applied_len bytes were sent
 * before and had fingerprint applied_fp (fp.h): returns the offset where
 * the new text starts (past any newlines that only separate it), which is
 * strlen(native) when nothing is new. When the sent prefix is no longer
 * there (someone edited the middle), returns 0 and sets *edited to 1: the
 * whole text is new again. */
size_t notes_new_part(const char *native, size_t applied_len, const char *applied_fp,
                      int *edited);

#endif
