/*
 * billmgr_session.c - the BILLmanager client's credentials: how a call
 * carries them (authinfo=LOGIN:PASSWORD on every call, or auth=SESSION
 * from a func=auth login), the login the queue waits for in session mode,
 * the one re-login (shared by every call that finds the session expired)
 * and one retry of the call after it, and keeping the password and the
 * session id out of error texts and freed memory.
 */
#include <stdlib.h>
#include <string.h>

#include "billmgr_int.h"
#include "log.h"

/* ---- the credentials in a call ---- */

int billmgr_session_credentials(struct billmgr *bm, const struct billmgr_xfer *x, struct buf *body)
{
    int rc = 0;
    if (x->is_login) {
        rc |= billmgr_form_pair(body, "username", bm->login);
        rc |= billmgr_form_pair(body, "password", bm->password);
    } else if (bm->auth_session) {
        rc |= billmgr_form_pair(body, "auth", bm->session);
    } else {
        /* authinfo is LOGIN:PASSWORD, encoded as one value. */
        rc |= billmgr_form_pair(body, "authinfo", "");
        rc |= billmgr_urlencode(body, bm->login);
        rc |= buf_append(body, "%3A", 3);
        rc |= billmgr_urlencode(body, bm->password);
    }
    return rc;
}

/* ---- the session ---- */

/* Fails every queued call with the reason the login failed: none of them
 * can run without a session. */
static void billmgr_fail_queue(struct billmgr *bm, rt_status st, const struct billmgr_error *e)
{
    struct billmgr_error qe;
    billmgr_set_error(&qe, e->type, e->object, "login failed: %s", e->message);
    struct billmgr_xfers l = billmgr_xfers_take(&bm->queue);
    struct billmgr_xfer *x;
    while ((x = billmgr_xfers_pop(&l)) != NULL)
        billmgr_complete(bm, x, st, NULL, &qe, 0);
}

static void billmgr_login_done(struct billmgr *bm, struct billmgr_xfer *x, rt_status st,
                               json_t *doc, struct billmgr_error *e)
{
    bm->login_xfer = NULL;
    if (st == RT_OK) {
        json_t *auth = json_object_get(doc, "auth");
        const char *id = json_string_value(json_object_get(auth, "$id"));
        if (!id || !*id)
            id = billmgr_text(doc, "auth");
        if (id && *id) {
            billmgr_free_secret(bm->session);
            bm->session = strdup(id);
            if (bm->session) {
                bm->session_gen++;
                log_debug("billmgr: logged in to \"%s\" as \"%s\"", bm->url, bm->login);
            } else {
                billmgr_set_error(e, "transport", "", "out of memory");
                st = RT_RETRY;
            }
        } else {
            billmgr_set_error(e, "auth", "", "login answer carries no session id");
            st = RT_REJECT;
        }
    }
    json_decref(doc);
    billmgr_xfer_free(x);
    if (st != RT_OK) {
        log_debug("billmgr: login to \"%s\" as \"%s\" failed: %s", bm->url, bm->login, e->message);
        billmgr_fail_queue(bm, st, e);
    }
}

static void billmgr_start_login(struct billmgr *bm)
{
    struct billmgr_error e;
    struct billmgr_xfer *x = billmgr_xfer_new(bm, "auth", NULL);
    if (x) {
        x->is_login = 1;
        if (billmgr_xfer_start(bm, x) == 0) {
            bm->login_xfer = x;
            return;
        }
        billmgr_xfer_free(x);
    }
    /* Reported from billmgr_handle through the done list. */
    billmgr_set_error(&e, "transport", "", "cannot start the login: out of memory");
    struct billmgr_xfers l = billmgr_xfers_take(&bm->queue);
    while ((x = billmgr_xfers_pop(&l)) != NULL)
        billmgr_defer_failure(bm, x, RT_RETRY, &e);
}

int billmgr_session_ready(struct billmgr *bm)
{
    if (!bm->auth_session || bm->session)
        return 1;
    if (!bm->login_xfer)
        billmgr_start_login(bm);
    return 0;
}

int billmgr_session_answer(struct billmgr *bm, struct billmgr_xfer *x, rt_status st, json_t *doc,
                           struct billmgr_error *e)
{
    if (x->is_login) {
        billmgr_login_done(bm, x, st, doc, e);
        return 1;
    }
    if (st == RT_REJECT && bm->auth_session && !x->relogged && strcmp(e->type, "auth") == 0) {
        /* The session expired (or the server forgot it): log in again,
         * unless another call already did since this one started, and run
         * this call once more at the head of the queue. */
        x->relogged = 1;
        if (bm->session && x->session_gen == bm->session_gen) {
            billmgr_free_secret(bm->session);
            bm->session = NULL;
        }
        log_debug("billmgr: session expired during \"%s\", logging in again", x->func);
        billmgr_xfers_push_front(&bm->queue, x);
        return 1;
    }
    return 0;
}

/* ---- secrets out of texts and memory ---- */

void billmgr_free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

void billmgr_wipe_buf(struct buf *b)
{
    if (b->data)
        explicit_bzero(b->data, b->cap);
    buf_release(b);
}

/* Replaces every occurrence of secret in s (a NUL-terminated string in a
 * field of size bytes) with "***". A server may echo what it was sent in
 * its error text; this keeps the password and the session id out of the
 * error strings this module hands out. */
static void billmgr_scrub(char *s, size_t size, const char *secret)
{
    static const char mask[] = "***";
    size_t slen = secret ? strlen(secret) : 0;
    char *p = s;
    if (!slen)
        return;
    while ((p = strstr(p, secret)) != NULL) {
        size_t tail = strlen(p + slen);
        size_t room = size - (size_t)(p - s) - 1; /* bytes available from p */
        size_t mlen = sizeof(mask) - 1;
        if (mlen > room)
            mlen = room;
        if (mlen + tail > room)
            tail = room - mlen;
        memmove(p + mlen, p + slen, tail);
        memcpy(p, mask, mlen);
        p[mlen + tail] = '\0';
        p += mlen;
    }
}

/* Takes the credentials out of an error's texts. A server may echo what
 * it was sent, raw or URL-encoded as it travelled. */
void billmgr_scrub_secrets(struct billmgr *bm, struct billmgr_error *e)
{
    struct buf enc;
    buf_init(&enc, 4096);
    if (bm->password[0] && billmgr_urlencode(&enc, bm->password) == 0 &&
        strcmp(buf_cstr(&enc), bm->password) != 0) {
        billmgr_scrub(e->message, sizeof(e->message), buf_cstr(&enc));
        billmgr_scrub(e->object, sizeof(e->object), buf_cstr(&enc));
    }
    billmgr_wipe_buf(&enc);
    billmgr_scrub(e->message, sizeof(e->message), bm->password);
    billmgr_scrub(e->message, sizeof(e->message), bm->session);
    billmgr_scrub(e->object, sizeof(e->object), bm->password);
}
