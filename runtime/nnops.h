/* nnops.h — (placeholder; its owner fills it in). Included by microml.h. */
#ifndef MICROML_NNOPS_H
#define MICROML_NNOPS_H
#include "microml.h"
#endif
