/*
 * linkset.h - the keys of the applied sets, and what is done with them.
 *
 * Two sets record what was applied to a task, each an fp set ("k=v;k=v",
 * common/fp.h, which alone reads and writes the format):
 *   - the link's applied set (store_link.applied, table links, on the
 *     server): what the forward applier (consumer/forward*) last wrote to
 *     the target task, plus the reverse publisher's (producer/statepub*)
 *     record of the target's state it last published;
 *   - the rev set (store_rev.applied, table rev, on the client): what the
 *     reverse applier (consumer/reverse*) last wrote to the source task,
 *     plus the relay's (producer/relay*) record of the status it forwarded.
 * Every key of either set is spelled here once, with who writes it and who
 * reads it, so that producer/ and consumer/ name the same key alike
 * without including each other. The sets are stored: a key renamed here
 * is a key every stored set loses, so the spellings never change.
 *
 * Beside the keys live the functions that edit a set as one unit: the
 * intent of a crash-safe note append (linkset_pend_*), which both appliers
 * use on their set, and what a forward apply keeps of the stored link set
 * (linkset_applied_merge). They are pure: fp sets in, an fp set out.
 */
#ifndef RT_LINKSET_H
#define RT_LINKSET_H

#include <stddef.h>
#include <stdint.h>

/* ---- the link's applied set (store_link.applied, server) -------------- */

/* Fingerprints of the target's name, type and deadline as last sent.
 * Written by the forward applier (forward_plan_make, forward_adopt_applied),
 * read by it to send only a field that changed. */
#define LINKSET_LINK_NAME     "name"
#define LINKSET_LINK_TYPE     "type"
#define LINKSET_LINK_DEADLINE "deadline"

/* The status the link records as the target's. Written by the forward
 * applier (the status it sent, or the one it kept over a stale message)
 * and by the reverse publisher (the target's own status, with the state it
 * published); read by the forward applier (forward_plan_make: a status
 * that changed; linkset_applied_merge: kept when not sent) and by the
 * reverse publisher (whether the state it publishes changed the status). */
#define LINKSET_LINK_STATUS "status"

/* The length and fingerprint of the native note already forwarded, and
 * the fingerprint of the service/account line. Written and read by the
 * forward applier (forward_plan_make, forward_adopt_applied). */
#define LINKSET_LINK_NOTE_LEN "note_len"
#define LINKSET_LINK_NOTE_FP  "note_fp"
#define LINKSET_LINK_ABOUT    "about"

/* The fingerprint of the state the reverse publisher last published.
 * Written and read by the reverse publisher (producer/statepub_view.c);
 * kept by every forward apply (linkset_applied_merge); removed by the
 * store's resync (common/store_links.c). */
#define LINKSET_LINK_STATE "state"

/* The seq of the last confirmed state that carried a status the target
 * changed itself. Written and read by the reverse publisher
 * (producer/statepub_pub.c); read by the forward applier: a task message
 * whose "rev_seq" is below it was read before the client applied that
 * change, so its status is stale (forward_plan_make); kept by every
 * forward apply. */
#define LINKSET_LINK_REV_PUB "rev_pub"

/* The forward seq ("fwd_seq") the last confirmed state had seen. Written
 * by the reverse publisher (producer/statepub_pub.c) and read by it
 * (producer/statepub_list.c: publish again once the link's last_seq has
 * passed it); kept by every forward apply. */
#define LINKSET_LINK_PUB_FWD "pub_fwd"

/* The set of a link whose create is under way (dst_task 0): "creating" is
 * 1 while a create may have made the task (a later delivery then looks for
 * it), 0 once a create surely failed; absent (a link written by an older
 * version) counts as 1. "after" is the highest target task id known for
 * the client when the create started: only tasks above it can be the one
 * it made. Written by the forward applier (consumer/forward_link.c), read
 * by it (consumer/forward_apply.c, consumer/forward_recover.c). */
#define LINKSET_LINK_CREATING "creating"
#define LINKSET_LINK_AFTER    "after"

/* ---- the rev set (store_rev.applied, client) --------------------------- */

/* The status known for the source task: the one the relay forwarded last,
 * or the one the reverse applier wrote. Written by the relay
 * (producer/relay_slot.c) and by the reverse applier (reverse_plan_status,
 * rev_slot_commit_set); read by both (the relay: whether the status
 * forwarded changed; the reverse applier: whether a state's status is
 * news). */
#define LINKSET_REV_STATUS "status"

/* The seq of the confirmed task message that last changed the status
 * forwarded. Written and read by the relay (producer/relay_slot.c); read
 * and kept by the reverse applier: a state that had seen it says what the
 * target did with that status (reverse_plan_status). */
#define LINKSET_REV_STATUS_SEQ "sseq"

/* The target's performer as last applied: its remote id, the fingerprint
 * of its name, and the local performer the reverse applier set for it
 * (0 = none). Written and read by the reverse applier (reverse_plan.c;
 * "pname" also tells that a state was ever applied). */
#define LINKSET_REV_PERFORMER "performer"
#define LINKSET_REV_PNAME     "pname"
#define LINKSET_REV_PLOCAL    "plocal"

/* The length and fingerprint of the target's notes already copied to the
 * source task. Written and read by the reverse applier (reverse_plan.c,
 * reverse_apply.c). */
#define LINKSET_REV_NOTES_LEN "notes_len"
#define LINKSET_REV_NOTES_FP  "notes_fp"

/* ---- crash-safe note appends (either set) -------------------------------
 *
 * An edit that appends a block to a task's note is the one write an
 * applier cannot repeat blindly: fields are set to values (writing one
 * twice is harmless), but the note is written as what it was plus a block,
 * so a second write adds the block twice. A daemon killed after such an
 * edit landed and before its outcome was committed would write it again
 * when the broker redelivers the message. So, before the edit, the owner
 * commits an intent into the fp set it keeps for the task
 * (linkset_pend_put): the message's seq, the length and fingerprint of the
 * whole note about to be written, and the fp set the edit produces (its
 * keys under LINKSET_PEND_PREFIX). The commit after the edit writes a set
 * without these keys. A message that finds an intent views the task first
 * (linkset_pend_landed) and plans against linkset_pend_base(): the set
 * after the pending edit when the note still starts with the note it
 * wrote (staff may have written after it), else the set before it. A new
 * intent is then built on that base, never on the unresolved one. Fields
 * the two sets disagree on are sent again, which is harmless; the note
 * block is not. */

/* The keys of an intent, in the link's applied set or in the rev set.
 * Written by the forward and the reverse appliers (linkset_pend_put), read
 * by them (linkset_pend_present, _landed, _base). */
#define LINKSET_PEND_SEQ    "pend_seq"
#define LINKSET_PEND_LEN    "pend_len"
#define LINKSET_PEND_FP     "pend_fp"
#define LINKSET_PEND_PREFIX "p."

/* 1 when the fp set holds an intent (LINKSET_PEND_LEN), else 0. */
int linkset_pend_present(const char *applied);

/* Writes into out (outlen bytes) the fp set applied (NULL = "") without any
 * intent key. Returns 0, or -1 when it does not fit (out is then ""). */
int linkset_pend_strip(const char *applied, char *out, size_t outlen);

/* Writes into out (outlen bytes) the intent of an edit for message seq
 * that writes note (the whole new note): applied (NULL = "") without any
 * older intent, plus LINKSET_PEND_SEQ, LINKSET_PEND_LEN and LINKSET_PEND_FP,
 * plus every key of after (the fp set the edit produces) whose value
 * differs from applied's, under LINKSET_PEND_PREFIX. Returns 0, or -1 when
 * the result does not fit in outlen or in STORE_APPLIED_MAX bytes (out is
 * then applied without an intent). */
int linkset_pend_put(const char *applied, const char *after, uint64_t seq, const char *note,
                     char *out, size_t outlen);

/* Tells whether the edit whose intent applied holds landed, from the
 * task's note as viewed now (NULL counts as ""): it did when the note
 * starts with the whole note that edit wrote. *seq (may be NULL) receives
 * the intent's seq (0 when there is none). Returns 1 (landed) or 0 (did
 * not land, or no intent). */
int linkset_pend_landed(const char *applied, const char *note, uint64_t *seq);

/* Writes into out (outlen bytes; may be applied itself) the fp set to plan
 * against: when landed, applied with the intent's keys moved back under
 * their own names (the set after the pending edit), else applied without
 * the intent (the set before it); either way without an intent. Returns 0,
 * or -1 when it does not fit (out is then ""). */
int linkset_pend_base(const char *applied, int landed, char *out, size_t outlen);

/* ---- what a forward apply keeps ----------------------------------------- */

/* The link's applied set once a forward apply lands: planned (the set the
 * plan produces), plus, when the target task is the one stored
 * (same_target), the stored LINKSET_LINK_STATUS (unless sends_status: the
 * reverse publisher records the target's own status there) and the stored
 * LINKSET_LINK_STATE, LINKSET_LINK_REV_PUB and LINKSET_LINK_PUB_FWD, which
 * are the reverse publisher's. Writes into out (outlen bytes, at least
 * STORE_APPLIED_MAX + 1); a key that does not fit is left out, with a
 * warning. */
void linkset_applied_merge(const char *stored, const char *planned, int sends_status,
                           int same_target, char *out, size_t outlen);

#endif
