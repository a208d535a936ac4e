/* viz.h — (placeholder; its owner fills it in). Included by microml.h. */
#ifndef MICROML_VIZ_H
#define MICROML_VIZ_H
#include "microml.h"
#endif
