/* combine.h — (placeholder; its owner fills it in). Included by microml.h. */
#ifndef MICROML_COMBINE_H
#define MICROML_COMBINE_H
#include "microml.h"
#endif
