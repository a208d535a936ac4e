/* linalg.h — (placeholder; its owner fills it in). Included by microml.h. */
#ifndef MICROML_LINALG_H
#define MICROML_LINALG_H
#include "microml.h"
#endif
