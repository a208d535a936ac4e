/* reduce.h — (placeholder; its owner fills it in). Included by microml.h. */
#ifndef MICROML_REDUCE_H
#define MICROML_REDUCE_H
#include "microml.h"
#endif
