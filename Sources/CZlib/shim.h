// zlib, for reading the gzip-compressed MNIST idx files; zlib1g-dev provides it.
#include <zlib.h>
