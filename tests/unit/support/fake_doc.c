#include "fake_doc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fake_doc_form_get(const char *body, const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key);
    const char *p = body;
    while (p && *p) {
        if (strncmp(p, key, kl) == 0 && p[kl] == '=') {
            const char *v = p + kl + 1;
            size_t o = 0;
            while (*v && *v != '&' && o + 1 < outlen) {
                if (*v == '%' && v[1] && v[2]) {
                    char hex[3] = {v[1], v[2], 0};
                    out[o++] = (char)strtol(hex, NULL, 16);
                    v += 3;
                } else {
                    out[o++] = *v++;
                }
            }
            out[o] = '\0';
            return 0;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    out[0] = '\0';
    return -1;
}

void fake_doc_text(json_t *obj, const char *key, const char *value)
{
    json_object_set_new(obj, key, json_pack("{s:s}", "$", value));
}

void fake_doc_long(json_t *obj, const char *key, long value)
{
    char s[32];
    snprintf(s, sizeof s, "%ld", value);
    fake_doc_text(obj, key, s);
}

json_t *fake_doc_error(const char *type, const char *object, const char *msg)
{
    return json_pack("{s:s,s:s,s:{s:s}}", "$type", type, "$object", object, "msg", "$", msg);
}

json_t *fake_doc_arrays(json_t *doc, const char *key)
{
    json_t *out = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(doc, k, v)
    {
        if (strcmp(k, "elem") == 0 && json_is_array(v)) {
            json_t *rows = json_array();
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) json_array_append_new(rows, fake_doc_arrays(e, key));
            json_object_set_new(out, k, rows);
        } else if (json_is_object(v) && json_object_get(v, "$") && (!key || strcmp(k, key) == 0)) {
            json_object_set_new(out, k, json_pack("[O]", v));
        } else {
            json_object_set(out, k, v);
        }
    }
    return out;
}
