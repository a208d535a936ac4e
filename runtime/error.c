/* error.c — the runtime's error channel: one message per thread.
 * Functions fail by returning NULL / -1 after mm_set_error(); the Lua
 * bindings turn the message into a Lua error.  Nothing aborts. */
#include <stdarg.h>
#include <stdio.h>

#include "microml.h"

static _Thread_local char errbuf[1024];

const char *mm_error(void) { return errbuf[0] ? errbuf : "unknown error"; }

void mm_set_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(errbuf, sizeof errbuf, fmt, ap);
  va_end(ap);
}
