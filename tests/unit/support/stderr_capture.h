/*
 * stderr_capture.h - counting what a unit test logged (test support only):
 * stderr, where the log writes, goes to a temporary file between
 * stderr_capture_begin() and stderr_capture_end(), which writes what was
 * captured to stderr after all (the test's output shows it as if never
 * captured) and returns how many times a needle was written.
 *
 * One capture at a time; at most 64 KiB are counted. Failures to redirect
 * fail the test (cmocka): the test's thread only.
 */
#ifndef RT_STDERR_CAPTURE_H
#define RT_STDERR_CAPTURE_H

/* Sends stderr to a temporary file. */
void stderr_capture_begin(void);

/* Gives stderr back, shows what was captured, and returns how many times
 * needle occurs in it. */
int stderr_capture_end(const char *needle);

#endif
