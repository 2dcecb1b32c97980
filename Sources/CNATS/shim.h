#ifndef HANGAR_CNATS_SHIM_H
#define HANGAR_CNATS_SHIM_H
#include <nats/nats.h>
#endif
