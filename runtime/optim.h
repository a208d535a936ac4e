/* optim.h — (placeholder; its owner fills it in). Included by microml.h. */
#ifndef MICROML_OPTIM_H
#define MICROML_OPTIM_H
#include "microml.h"
#endif
