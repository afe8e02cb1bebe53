/*
 * fatal.c — fatal errors (pm_set_fatal_handler, pm_fatal_error) and the allocation-free
 * writer that reports them (pm_report_*).
 *
 * What it owns. The installed fatal handler (one pointer, read with acquire so a handler
 * installed by one thread is seen whole by another) and the text CPython prints for a fatal
 * error. Nothing else in alloc/ prints a fatal error itself.
 *
 * The writer. A report is written when the heap may be corrupt, so it must not use the
 * heap: no malloc, no stdio (fprintf may allocate its buffer, and takes the stream lock,
 * which a thread that died mid-printf could hold). pm_report formats into a fixed buffer
 * on the caller's stack and hands it to write(2):
 *
 *   pm_report { fd, used, buf[2048] }   append ──> buf ──(full or flush)──> write(fd)
 *
 * Each formatter reproduces the one printf conversion CPython uses for that field (%zu,
 * %02x, glibc's %p), so the text is byte for byte CPython's. A debug-hook block report is
 * at most about 1 KiB, so it leaves in one write(2): two threads reporting at once produce
 * two whole reports, not interleaved lines (CPython's fprintf makes no such promise).
 *
 * The default handler: what comes after "Fatal Python error: ...". CPython 3.11 prints
 *
 *     Fatal Python error: _PyMem_DebugRawFree: bad trailing pad byte
 *     Python runtime state: initialized
 *     <empty line>
 *     Current thread 0x00007f... (most recent call first):
 *       File "<string>", line 1 in <module>
 *     <empty line>
 *     Extension modules: _testcapi (total: 1)
 *
 * and aborts. Everything after the first line describes the Python interpreter (its
 * runtime state, the Python frames of each thread, the loaded extension modules). This
 * library has no interpreter, so it has none of those facts; printing made-up ones
 * ("initialized", "<no Python frame>") would mislead a reader and match nothing a tool
 * could rely on (the frames and addresses differ on every run). So the default handler
 * prints the "Fatal Python error:" line exactly and then calls abort(), as CPython does
 * (exit by SIGABRT, status 134 from a shell). CPython's own test suite (test_capi's
 * PyMemDebugTests) matches the output up to and including that line, so it matches ours.
 * An embedder that has an interpreter (CPython itself) installs a handler that calls its
 * own fatal-error function, which then prints all of the above.
 *
 * Handlers. pm_set_fatal_handler(h) makes every later fatal error call h(func, message)
 * instead of printing the line. h must not return (it may abort, exit, or longjmp out; the
 * debug hooks call it before changing anything, so a longjmp leaves the block as it was).
 * If it returns anyway, the default runs: a fatal error is never silently ignored.
 */
#include "alloc/internal/fatal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sync/sync.h"

/* ---- the writer ------------------------------------------------------------------------ */

void pm_report_init(pm_report *r, int fd) {
    r->fd = fd;
    r->used = 0;
}

void pm_report_flush(pm_report *r) {
    const char *at = r->buf;
    size_t left = r->used;
    while (left > 0) {
        ssize_t n = write(r->fd, at, left);
        if (n < 0) {
            if (errno == EINTR) continue;
            break; /* nowhere left to report a failing stderr */
        }
        at += n;
        left -= (size_t)n;
    }
    r->used = 0;
}

void pm_report_bytes(pm_report *r, const void *bytes, size_t n) {
    const char *from = bytes;
    while (n > 0) {
        if (r->used == sizeof r->buf) pm_report_flush(r);
        size_t chunk = sizeof r->buf - r->used;
        if (chunk > n) chunk = n;
        memcpy(r->buf + r->used, from, chunk);
        r->used += chunk;
        from += chunk;
        n -= chunk;
    }
}

void pm_report_str(pm_report *r, const char *s) {
    pm_report_bytes(r, s, strlen(s));
}

void pm_report_char(pm_report *r, char c) {
    pm_report_bytes(r, &c, 1);
}

void pm_report_size(pm_report *r, size_t value) {
    char digits[24];
    size_t at = sizeof digits;
    do {
        digits[--at] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    pm_report_bytes(r, digits + at, sizeof digits - at);
}

static const char hex_digits[] = "0123456789abcdef";

void pm_report_hex_byte(pm_report *r, unsigned char byte) {
    char text[2] = {hex_digits[byte >> 4], hex_digits[byte & 0xf]};
    pm_report_bytes(r, text, sizeof text);
}

void pm_report_pointer(pm_report *r, const void *p) {
    uintptr_t value = (uintptr_t)p;
    if (value == 0) {
        pm_report_str(r, "(nil)");
        return;
    }
    char digits[2 * sizeof value];
    size_t at = sizeof digits;
    while (value != 0) {
        digits[--at] = hex_digits[value & 0xf];
        value >>= 4;
    }
    pm_report_str(r, "0x");
    pm_report_bytes(r, digits + at, sizeof digits - at);
}

/* ---- fatal errors ---------------------------------------------------------------------- */

static void *fatal_handler; /* pm_fatal_handler_fn, or NULL for the default */

typedef void (*pm_fatal_handler_fn)(const char *func, const char *message);

void pm_set_fatal_handler(void (*handler)(const char *func, const char *message)) {
    pm_atomic_store_ptr_release(&fatal_handler, (const void *)(uintptr_t)handler);
}

void pm_fatal_error_n(const char *func, const char *message, size_t length) {
    void *installed = pm_atomic_load_ptr_acquire(&fatal_handler);
    if (installed != NULL) {
        pm_fatal_handler_fn handler = (pm_fatal_handler_fn)(uintptr_t)installed;
        /* A C string for the handler: NUL bytes (a NUL API id) spelled out. 4x covers the
         * worst case; messages are short, so cut rather than allocate. */
        char text[256];
        size_t used = 0;
        for (size_t i = 0; i < length && used + 5 <= sizeof text; i++) {
            if (message[i] == '\0') {
                memcpy(text + used, "\\x00", 4);
                used += 4;
            } else {
                text[used++] = message[i];
            }
        }
        text[used] = '\0';
        handler(func, text);
        /* It returned: fall through to the default, a fatal error never passes silently. */
    }
    pm_report report;
    pm_report_init(&report, STDERR_FILENO);
    pm_report_str(&report, "Fatal Python error: ");
    if (func != NULL) {
        pm_report_str(&report, func);
        pm_report_str(&report, ": ");
    }
    pm_report_bytes(&report, message, length);
    pm_report_char(&report, '\n');
    pm_report_flush(&report);
    abort();
}

void pm_fatal_error(const char *func, const char *message) {
    pm_fatal_error_n(func, message, strlen(message));
}
