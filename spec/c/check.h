/* check.h — the C tests' one assertion: counts passes and failures and
 * names a failure's line, so each test ends with "name: N passed, N failed"
 * (the line .ci/run adds up). */
#ifndef MICROML_SPEC_CHECK_H
#define MICROML_SPEC_CHECK_H
#include <stdio.h>

static int passed, failed;
#define CHECK(cond, what)                                                     \
  do {                                                                        \
    if (cond) passed++;                                                       \
    else { failed++; printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, what); }  \
  } while (0)

#endif
