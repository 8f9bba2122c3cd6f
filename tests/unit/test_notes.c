/* Unit tests of common/notes (the conversation in a note) and common/fp. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fp.h"
#include "notes.h"

static void append_then_native_gives_back_own_text(void **state)
{
    char *n1 = notes_append("Customer asks for a reboot.", "from client 7, task 12",
                            "Done on our side.\nPlease check.");
    assert_non_null(n1);
    assert_string_equal(n1, "Customer asks for a reboot.\n\n"
                            "--- remotetask: from client 7, task 12 ---\n"
                            "Done on our side.\nPlease check.\n"
                            "--- remotetask: end ---");
    char *native = notes_native(n1);
    assert_string_equal(native, "Customer asks for a reboot.");
    free(native);
    /* Text written after the block is native again, separated by a newline. */
    size_t len = strlen(n1);
    char *n2 = malloc(len + 32);
    memcpy(n2, n1, len);
    strcpy(n2 + len, "\nThanks, works now & = + %");
    native = notes_native(n2);
    assert_string_equal(native, "Customer asks for a reboot.\nThanks, works now & = + %");
    free(native);
    free(n2);
    free(n1);
}

static void native_of_plain_and_empty(void **state)
{
    char *n = notes_native(NULL);
    assert_string_equal(n, "");
    free(n);
    n = notes_native("line 1\nline 2\n");
    assert_string_equal(n, "line 1\nline 2\n");
    free(n);
    /* A block at the very start, and an unterminated one running to the end. */
    n = notes_native("--- remotetask: from x ---\nabc\n--- remotetask: end ---\nmine");
    assert_string_equal(n, "\nmine");
    free(n);
    n = notes_native("mine\n\n--- remotetask: from x ---\nabc\nno end");
    assert_string_equal(n, "mine");
    free(n);
    /* CRLF lines from a browser are blocks too. */
    n = notes_native("a\r\n\r\n--- remotetask: from x ---\r\nb\r\n--- remotetask: end ---\r\nc");
    assert_string_equal(n, "a\r\n\r\nc");
    free(n);
}

static void origin_is_found_exactly(void **state)
{
    char origin[NOTES_ORIGIN_MAX + 1];
    notes_origin_forward(origin, sizeof(origin), "7", 1234);
    assert_string_equal(origin, "from client 7, task 1234");
    char *n = notes_append("", origin, "");
    assert_string_equal(n, "--- remotetask: from client 7, task 1234 ---\n--- remotetask: end ---");
    assert_true(notes_has_origin(n, origin));
    assert_false(notes_has_origin(n, "from client 7, task 123"));
    assert_false(notes_has_origin(n, "from client 7, task 12345"));
    assert_false(notes_has_origin("from client 7, task 1234", origin));
    free(n);
    assert_null(notes_append("", "two\nlines", "x"));
}

static void new_part_after_applied_prefix(void **state)
{
    char fp[FP_HEX_LEN + 1];
    int edited;
    const char *native = "first\n\nsecond";
    fp_of_mem(native, 5, fp);
    assert_int_equal(notes_new_part(native, 5, fp, &edited), 7);
    assert_int_equal(edited, 0);
    assert_int_equal(notes_new_part(native, strlen(native), "x", &edited), 0);
    assert_int_equal(edited, 1);
    assert_int_equal(notes_new_part(native, 0, "", &edited), 0);
    assert_int_equal(edited, 0);
    fp_of_mem(native, strlen(native), fp);
    assert_int_equal(notes_new_part(native, strlen(native), fp, &edited), strlen(native));
    assert_int_equal(notes_new_part("short", 100, fp, &edited), 0);
    assert_int_equal(edited, 1);
}

static void fingerprints_separate_fields(void **state)
{
    struct fp a, b;
    char ha[FP_HEX_LEN + 1], hb[FP_HEX_LEN + 1];
    fp_init(&a);
    fp_add_str(&a, "ab");
    fp_add_str(&a, "c");
    fp_init(&b);
    fp_add_str(&b, "a");
    fp_add_str(&b, "bc");
    fp_hex(&a, ha);
    fp_hex(&b, hb);
    assert_int_equal(strlen(ha), FP_HEX_LEN);
    assert_string_not_equal(ha, hb);
    fp_init(&b);
    fp_add_str(&b, "ab");
    fp_add_str(&b, "c");
    fp_hex(&b, hb);
    assert_string_equal(ha, hb);
}

static void fingerprint_sets(void **state)
{
    char set[128] = "";
    char v[32];
    assert_int_equal(fp_set_put(set, sizeof(set), "name", "abc"), 0);
    assert_int_equal(fp_set_put_int(set, sizeof(set), "status", 2), 0);
    assert_int_equal(fp_set_put(set, sizeof(set), "name", "def"), 0);
    assert_string_equal(set, "status=2;name=def");
    assert_int_equal(fp_set_get(set, "name", v, sizeof(v)), 0);
    assert_string_equal(v, "def");
    assert_int_equal(fp_set_get_int(set, "status", -1), 2);
    assert_int_equal(fp_set_get_int(set, "missing", -1), -1);
    assert_int_equal(fp_set_get(set, "nam", v, sizeof(v)), -1);
    assert_int_equal(fp_set_put(set, sizeof(set), "bad;key", "x"), -1);
    assert_int_equal(fp_set_put(set, sizeof(set), "k", "a=b"), -1);
    char small[12] = "";
    assert_int_equal(fp_set_put(small, sizeof(small), "name", "0123456789"), -1);
    assert_string_equal(small, "");
    /* Deleting a key takes every pair of it (and empty pairs), and only
     * that key: "state" is not "statex". */
    char many[128] = "state=a;statex=1;;state=;name=n;state=b";
    assert_int_equal(fp_set_del(many, "state"), 3);
    assert_string_equal(many, "statex=1;name=n");
    assert_int_equal(fp_set_del(many, "state"), 0);
    assert_string_equal(many, "statex=1;name=n");
    assert_int_equal(fp_set_del(many, "name"), 1);
    assert_int_equal(fp_set_del(many, "statex"), 1);
    assert_string_equal(many, "");
    /* Stepping through a set: empty pairs passed over, one without '='
     * given with an empty key, a value cut to its buffer. */
    const char *walk = ";a=1;;junk;b=23456";
    char k[8], w[4];
    const char *p = fp_set_next(walk, k, sizeof(k), w, sizeof(w));
    assert_non_null(p);
    assert_string_equal(k, "a");
    assert_string_equal(w, "1");
    p = fp_set_next(p, k, sizeof(k), w, sizeof(w));
    assert_non_null(p);
    assert_string_equal(k, "");
    p = fp_set_next(p, k, sizeof(k), w, sizeof(w));
    assert_non_null(p);
    assert_string_equal(k, "b");
    assert_string_equal(w, "234");
    assert_null(fp_set_next(p, k, sizeof(k), w, sizeof(w)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(append_then_native_gives_back_own_text),
        cmocka_unit_test(native_of_plain_and_empty),
        cmocka_unit_test(origin_is_found_exactly),
        cmocka_unit_test(new_part_after_applied_prefix),
        cmocka_unit_test(fingerprints_separate_fields),
        cmocka_unit_test(fingerprint_sets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
