// libnuma's public header; libnuma-dev provides it (scripts/setup.sh installs it).
#include <numa.h>
#include <numaif.h>
