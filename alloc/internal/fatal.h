/*
 * fatal.h — fatal errors and the writer that reports them, for the library's own layers.
 *
 * A fatal error is reported when the heap may already be corrupt (a debug hook found a
 * smashed pad byte) or when the caller broke a contract (no GIL). So nothing here
 * allocates, takes a lock or uses stdio: a pm_report is a buffer on the caller's stack
 * that is written to a file descriptor with write(2) when it fills up or is flushed. A
 * report that fits the buffer (every debug-hook report does) leaves in a single write(2),
 * so reports from two threads do not interleave line by line.
 *
 * pm_fatal_error() hands (func, message) to the handler installed with
 * pm_set_fatal_handler() (alloc/pymalloc_mt.h), or, by default, prints CPython's line
 *
 *     Fatal Python error: <func>: <message>
 *
 * to stderr and aborts. It never returns: if a handler returns, the default runs.
 */
#ifndef PM_ALLOC_INTERNAL_FATAL_H
#define PM_ALLOC_INTERNAL_FATAL_H

#include <stddef.h>

#include "alloc/pymalloc_mt.h"

/* Internal symbols: hidden, like the rest of alloc/internal. */
#pragma GCC visibility push(hidden)

#ifdef __cplusplus
extern "C" { /* white-box tests are C++ */
#endif

/* Large enough for a whole debug-hook block report (about 1 KiB at most). */
#define PM_REPORT_BUFFER_SIZE 2048

typedef struct pm_report {
    int fd;
    size_t used;
    char buf[PM_REPORT_BUFFER_SIZE];
} pm_report;

void pm_report_init(pm_report *r, int fd);
/* Writes what is buffered (retrying short writes and EINTR; other errors are ignored:
 * there is nowhere left to report them). */
void pm_report_flush(pm_report *r);
void pm_report_bytes(pm_report *r, const void *bytes, size_t n);
void pm_report_str(pm_report *r, const char *s);
void pm_report_char(pm_report *r, char c);
/* printf's %zu. */
void pm_report_size(pm_report *r, size_t value);
/* printf's %02x. */
void pm_report_hex_byte(pm_report *r, unsigned char byte);
/* glibc's %p: "0x" and lowercase hex digits without leading zeros; "(nil)" for NULL. */
void pm_report_pointer(pm_report *r, const void *p);

/* The fatal error: `message` is `length` bytes and may hold a NUL byte (CPython prints a
 * stored API id as a raw byte, whatever it is). The default handler writes those bytes
 * exactly; a handler installed with pm_set_fatal_handler gets a C string in which each
 * NUL byte is spelled "\x00". */
__attribute__((noreturn, cold)) void pm_fatal_error_n(const char *func, const char *message,
                                                      size_t length);
__attribute__((noreturn, cold)) void pm_fatal_error(const char *func, const char *message);

#ifdef __cplusplus
}
#endif

#pragma GCC visibility pop

#endif /* PM_ALLOC_INTERNAL_FATAL_H */
