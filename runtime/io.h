/* io.h — (placeholder; its owner fills it in). Included by microml.h. */
#ifndef MICROML_IO_H
#define MICROML_IO_H
#include "microml.h"
#endif
