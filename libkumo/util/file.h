/* Reading a whole file into memory, for configuration files. */
#ifndef KUMO_UTIL_FILE_H
#define KUMO_UTIL_FILE_H

#include <stddef.h>

/* Reads path into *text (malloc'd, NUL-terminated, the caller frees it; "" for an empty
 * file) and its length into *len. Returns 0 or -errno (-ENOMEM included). */
int kumo_read_file(const char *path, char **text, size_t *len);

#endif
