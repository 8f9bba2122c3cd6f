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

#endif
