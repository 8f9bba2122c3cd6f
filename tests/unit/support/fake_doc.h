/*
 * fake_doc.h - what the unit tests' BILLmanager stand-ins share: reading a
 * request's form body and writing answer documents in the API's shape
 * (text values as {"$": "..."}). Test support only.
 */
#ifndef RT_FAKE_DOC_H
#define RT_FAKE_DOC_H

#include <stddef.h>

#include <jansson.h>

/* Copies the value of key in a form body into out, %XX-decoded, cut to
 * outlen. Returns 0, or -1 (out = "") when the key is absent. */
int fake_doc_form_get(const char *body, const char *key, char *out, size_t outlen);

/* Sets obj.key to {"$": value}. */
void fake_doc_text(json_t *obj, const char *key, const char *value);

/* Sets obj.key to {"$": "<value in decimal>"}. */
void fake_doc_long(json_t *obj, const char *key, long value);

/* A new API error document {"$type": type, "$object": object, "msg":
 * {"$": msg}}, for an answer's "error". */
json_t *fake_doc_error(const char *type, const char *object, const char *msg);

/* A new copy of doc in which the text value ({"$": ...}) of key, or of
 * every key when key is NULL, is a one-element array of itself, in the
 * rows of its "elem" list too: the shape of a hostile answer (the
 * emulator's fields_arrays). doc is not changed. */
json_t *fake_doc_arrays(json_t *doc, const char *key);

#endif
