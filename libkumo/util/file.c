/* Whole-file reads (file.h): a loop of fread calls into a buffer that doubles. */
#include "util/file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kumo_read_file(const char *path, char **text, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -errno;
	size_t n = 0, cap = 65536, got;
	char *buf = malloc(cap + 1);
	while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
		n += got;
		char *t = n == cap ? realloc(buf, (cap *= 2) + 1) : buf;
		if (!t)
			free(buf);
		buf = t;
	}
	int err = !buf ? -ENOMEM : ferror(f) ? -(errno ? errno : EIO) : 0;
	fclose(f);
	if (err < 0) {
		free(buf);
		return err;
	}
	buf[n] = '\0';
	*text = buf;
	*len = n;
	return 0;
}
