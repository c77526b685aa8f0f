/* A strict TOML 1.0 reader (see toml.h). One recursive-descent pass over the input builds
 * the tree; every node, key and string is carved from an arena that the document owns, so
 * freeing never walks the tree, whatever its shape. Values are written back in inline
 * syntax by kumo_toml_render_value. */
#include "util/toml.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/json.h"

/* How a table or array came to exist decides what may later reopen or extend it
 * (TOML 1.0, "Table" and "Array of Tables"). */
enum {
	TAB_IMPLICIT = 1, /* made as a prefix of a [header]; one later [header] may define it */
	TAB_DEFINED = 2,  /* named by a [header] or [[header]]: never named again */
	TAB_DOTTED = 4,	  /* made by a dotted key: only dotted keys of the same section extend
			   * it, while a longer [header] may pass through it */
	TAB_INLINE = 8,	  /* { inline } table: closed once written */
	ARR_TABLES = 16,  /* array made by [[header]]: headers append to it and descend into its
			   * last element; other arrays are closed once written */
};

/* One key of a table. */
struct entry {
	const char *key; /* NUL-terminated arena copy; may contain NUL bytes */
	size_t klen;
	uint32_t hash;
	struct kumo_toml_value *val;
};

struct kumo_toml_value {
	uint8_t type;	/* enum kumo_toml_type */
	uint8_t flags;	/* TAB_* or ARR_TABLES */
	uint16_t depth; /* levels below the root (0); tables and arrays: <= KUMO_TOML_MAX_DEPTH */
	int line;	/* see kumo_toml_line() */
	union {
		struct {
			char *s; /* NUL-terminated */
			size_t len;
		} str; /* STRING, DATETIME */
		int64_t i;
		double f;
		bool b;
		struct {
			struct kumo_toml_value **items;
			size_t n, cap;
		} arr;
		struct {
			struct entry *ents; /* definition order */
			size_t n, cap;
			uint32_t *slots; /* open addressing: entry index + 1, 0 = empty */
			size_t nslots;	 /* power of two, or 0 while the table is small */
		} tab;
	} u;
};

/* Tables reaching this many keys get a hash index; smaller ones are searched linearly. */
#define INDEX_MIN 8

/* Arena chunks: the first is small so that tiny documents stay small, later ones double. */
#define CHUNK_FIRST 4096
#define CHUNK_MAX (1u << 20)
#define ARENA_ALIGN (sizeof(max_align_t))

struct chunk {
	struct chunk *next;
	size_t used, cap;
	max_align_t data[];
};

struct kumo_toml_doc {
	struct chunk *chunks; /* head is the one being filled */
	size_t next_cap;      /* size of the next regular chunk */
	struct kumo_toml_value *root;
};

/* Parser state for one kumo_toml_parse() call. */
struct parser {
	const char *start, *p, *end; /* the input and the cursor in it */
	struct kumo_toml_doc *doc;
	struct kumo_toml_error *err;
	struct kumo_toml_value *section; /* table that key/value lines go into */
	const char *lpos;		 /* line_at() cache: a position and its line */
	int lline;
	char *scratch; /* decoded string or cleaned number being built */
	size_t slen, scap;
	char keybuf[sizeof(((struct kumo_toml_error *)0)->key)]; /* key being defined */
	size_t keylen;
	char sectbuf[sizeof(((struct kumo_toml_error *)0)->key)]; /* current section's key */
	size_t sectlen;
	locale_t cloc; /* "C" numeric locale for strtod_l, made on the first float */
	int rc;	       /* 0, or the first error's code */
};

/* One part of a dotted key, decoded. */
struct keypart {
	const char *s; /* NUL-terminated arena copy */
	size_t len;
	uint32_t hash;
	const char *at; /* where it starts in the input */
};

struct keypath {
	size_t n;
	struct keypart part[KUMO_TOML_MAX_DEPTH];
};

/* ---- arena ---------------------------------------------------------------------------- */

static void *arena_alloc(struct kumo_toml_doc *d, size_t size)
{
	struct chunk *c = d->chunks;

	if (size > SIZE_MAX / 2)
		return NULL;
	size = (size + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
	if (size == 0)
		size = ARENA_ALIGN;
	if (c && c->cap - c->used >= size) {
		void *p = (unsigned char *)c->data + c->used;
		c->used += size;
		return p;
	}
	if (size > d->next_cap / 4 && c) {
		/* A large block gets a chunk of its own behind the head, so the head's free
		 * space is not thrown away. */
		struct chunk *big = malloc(sizeof(*big) + size);
		if (!big)
			return NULL;
		big->used = big->cap = size;
		big->next = c->next;
		c->next = big;
		return big->data;
	}
	size_t cap = d->next_cap > size ? d->next_cap : size;
	c = malloc(sizeof(*c) + cap);
	if (!c)
		return NULL;
	c->cap = cap;
	c->used = size;
	c->next = d->chunks;
	d->chunks = c;
	if (d->next_cap < CHUNK_MAX)
		d->next_cap *= 2;
	return c->data;
}

static char *arena_strdup(struct kumo_toml_doc *d, const char *s, size_t len)
{
	char *p = arena_alloc(d, len + 1);
	if (!p)
		return NULL;
	if (len)
		memcpy(p, s, len);
	p[len] = 0;
	return p;
}

/* ---- errors and positions ------------------------------------------------------------- */

/* Line of a position; positions are asked for mostly in increasing order, so the cache
 * makes the total cost linear in the input. */
static int line_at(struct parser *P, const char *at)
{
	const char *nl;

	if (at < P->lpos) {
		P->lpos = P->start;
		P->lline = 1;
	}
	while ((nl = memchr(P->lpos, '\n', (size_t)(at - P->lpos)))) {
		P->lline++;
		P->lpos = nl + 1;
	}
	P->lpos = at;
	return P->lline;
}

__attribute__((format(printf, 3, 4))) static int fail(struct parser *P, const char *at,
						      const char *fmt, ...)
{
	struct kumo_toml_error *e = P->err;
	const char *ls;
	va_list ap;
	int col = 1;

	if (P->rc)
		return P->rc;
	if (at > P->end)
		at = P->end;
	e->line = line_at(P, at);
	ls = P->lpos;
	while (ls > P->start && ls[-1] != '\n')
		ls--;
	for (; ls < at; ls++)
		if (((unsigned char)*ls & 0xC0) != 0x80)
			col++;
	e->col = col;
	memcpy(e->key, P->keybuf, P->keylen);
	e->key[P->keylen] = 0;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	P->rc = -EINVAL;
	return P->rc;
}

static int nomem(struct parser *P)
{
	if (P->rc)
		return P->rc;
	memset(P->err, 0, sizeof(*P->err));
	snprintf(P->err->msg, sizeof(P->err->msg), "out of memory");
	P->rc = -ENOMEM;
	return P->rc;
}

/* ---- characters ----------------------------------------------------------------------- */

static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static bool is_bare_key_char(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '_' ||
	       c == '-';
}

/* Characters of unquoted values: numbers, booleans, inf/nan, dates and times. */
static bool is_bare_value_char(int c)
{
	return is_bare_key_char(c) || c == '+' || c == '.' || c == ':';
}

/* Control characters TOML allows nowhere but as escapes (tab is allowed). */
static bool is_ctrl(int c)
{
	return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* Whether a key can be written without quotes. */
static bool is_bare_key(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!is_bare_key_char((unsigned char)s[i]))
			return false;
	return len > 0;
}

/* Byte c as it stands in a basic string: itself, \" or \\, or \u00XX for a control
 * character (tab included). Returns the length written to out (1 to 6). */
static size_t escape_byte(unsigned char c, char out[6])
{
	static const char hex[] = "0123456789ABCDEF";

	if (c == '"' || c == '\\') {
		out[0] = '\\';
		out[1] = (char)c;
		return 2;
	}
	if (is_ctrl(c) || c == '\t') {
		memcpy(out, "\\u00", 4);
		out[4] = hex[c >> 4];
		out[5] = hex[c & 15];
		return 6;
	}
	out[0] = (char)c;
	return 1;
}

/* Length of the well-formed UTF-8 sequence at s (shortest form, no surrogates, at most
 * U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *s, const unsigned char *e)
{
	unsigned c = s[0];
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		n = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		n = 3;
	else if (c >= 0xF0 && c <= 0xF4)
		n = 4;
	else
		return 0;
	if ((size_t)(e - s) < n)
		return 0;
	for (size_t i = 1; i < n; i++)
		if ((s[i] & 0xC0) != 0x80)
			return 0;
	if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) ||
	    (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] > 0x8F))
		return 0;
	return n;
}

static int peek(const struct parser *P)
{
	return P->p < P->end ? (unsigned char)*P->p : -1;
}

static bool starts_with(const struct parser *P, const char *s, size_t n)
{
	return (size_t)(P->end - P->p) >= n && memcmp(P->p, s, n) == 0;
}

static void skip_ws(struct parser *P)
{
	while (P->p < P->end && (*P->p == ' ' || *P->p == '\t'))
		P->p++;
}

/* Consumes a newline (LF or CRLF) if one is at the cursor; a lone CR is an error. */
static int eat_newline(struct parser *P, bool *ate)
{
	*ate = false;
	if (peek(P) == '\n') {
		P->p++;
		*ate = true;
	} else if (peek(P) == '\r') {
		if (P->end - P->p < 2 || P->p[1] != '\n')
			return fail(P, P->p, "carriage return not followed by line feed");
		P->p += 2;
		*ate = true;
	}
	return 0;
}

/* Skips a comment, if one is at the cursor, up to (not including) the end of its line. */
static int skip_comment(struct parser *P)
{
	if (peek(P) != '#')
		return 0;
	P->p++;
	while (P->p < P->end && *P->p != '\n' && *P->p != '\r') {
		unsigned char c = (unsigned char)*P->p;
		if (c >= 0x80) {
			size_t n =
			    utf8_len((const unsigned char *)P->p, (const unsigned char *)P->end);
			if (!n)
				return fail(P, P->p, "invalid UTF-8 in comment");
			P->p += n;
			continue;
		}
		if (is_ctrl(c))
			return fail(P, P->p, "control character U+%04X in comment", c);
		P->p++;
	}
	return 0;
}

/* After a value or a header: blanks, an optional comment, then a newline or the end. */
static int end_of_line(struct parser *P, const char *what)
{
	bool ate;
	int rc;

	skip_ws(P);
	if ((rc = skip_comment(P)))
		return rc;
	if (P->p >= P->end)
		return 0;
	if ((rc = eat_newline(P, &ate)))
		return rc;
	if (!ate)
		return fail(P, P->p, "expected end of line after %s", what);
	return 0;
}

/* Inside arrays: blanks, newlines and comments. */
static int skip_blank(struct parser *P)
{
	bool ate;
	int rc;

	for (;;) {
		skip_ws(P);
		if ((rc = skip_comment(P)) || (rc = eat_newline(P, &ate)))
			return rc;
		if (!ate)
			return 0;
	}
}

/* ---- key text for error messages ------------------------------------------------------ */

static void kb_putc(struct parser *P, char c)
{
	if (P->keylen < sizeof(P->keybuf) - 1)
		P->keybuf[P->keylen++] = c;
	P->keybuf[P->keylen] = 0;
}

/* Appends one key part, bare when it can be written bare and quoted otherwise. */
static void kb_append(struct parser *P, const char *s, size_t len)
{
	bool bare = is_bare_key(s, len);
	char e[6];

	if (P->keylen)
		kb_putc(P, '.');
	if (!bare)
		kb_putc(P, '"');
	for (size_t i = 0; i < len; i++)
		for (size_t k = 0, n = escape_byte((unsigned char)s[i], e); k < n; k++)
			kb_putc(P, e[k]);
	if (!bare)
		kb_putc(P, '"');
}

static void kb_truncate(struct parser *P, size_t len)
{
	P->keylen = len;
	P->keybuf[len] = 0;
}

/* ---- scratch buffer ------------------------------------------------------------------- */

static int scratch_put(struct parser *P, const char *s, size_t n)
{
	if (P->scap - P->slen < n + 1) {
		size_t cap = P->scap ? P->scap : 256;
		while (cap - P->slen < n + 1) {
			if (cap > SIZE_MAX / 2)
				return nomem(P);
			cap *= 2;
		}
		char *b = realloc(P->scratch, cap);
		if (!b)
			return nomem(P);
		P->scratch = b;
		P->scap = cap;
	}
	memcpy(P->scratch + P->slen, s, n);
	P->slen += n;
	P->scratch[P->slen] = 0;
	return 0;
}

static int scratch_putc(struct parser *P, char c)
{
	return scratch_put(P, &c, 1);
}

/* ---- nodes ---------------------------------------------------------------------------- */

static uint32_t hash_key(const char *s, size_t len)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 16777619u;
	}
	return h;
}

static struct kumo_toml_value *new_node(struct parser *P, enum kumo_toml_type type, unsigned depth,
					int line)
{
	struct kumo_toml_value *v = arena_alloc(P->doc, sizeof(*v));
	if (!v) {
		nomem(P);
		return NULL;
	}
	memset(v, 0, sizeof(*v));
	v->type = (uint8_t)type;
	v->depth = (uint16_t)depth;
	v->line = line;
	return v;
}

/* A new table or array at depth, or NULL (error set) when that is too deep. */
static struct kumo_toml_value *new_container(struct parser *P, enum kumo_toml_type type,
					     unsigned depth, uint8_t flags, const char *at)
{
	struct kumo_toml_value *v;

	if (depth > KUMO_TOML_MAX_DEPTH) {
		fail(P, at, "tables and arrays nested more than %d deep", KUMO_TOML_MAX_DEPTH);
		return NULL;
	}
	v = new_node(P, type, depth, line_at(P, at));
	if (v)
		v->flags = flags;
	return v;
}

static struct entry *tab_find(const struct kumo_toml_value *t, const char *key, size_t klen,
			      uint32_t hash)
{
	struct entry *ents = t->u.tab.ents;

	if (t->u.tab.nslots) {
		size_t mask = t->u.tab.nslots - 1;
		for (size_t i = hash & mask;; i = (i + 1) & mask) {
			uint32_t s = t->u.tab.slots[i];
			if (!s)
				return NULL;
			struct entry *e = &ents[s - 1];
			if (e->hash == hash && e->klen == klen && !memcmp(e->key, key, klen))
				return e;
		}
	}
	for (size_t i = 0; i < t->u.tab.n; i++)
		if (ents[i].hash == hash && ents[i].klen == klen && !memcmp(ents[i].key, key, klen))
			return &ents[i];
	return NULL;
}

static void slot_insert(uint32_t *slots, size_t nslots, uint32_t hash, size_t idx)
{
	size_t mask = nslots - 1;
	size_t i = hash & mask;

	while (slots[i])
		i = (i + 1) & mask;
	slots[i] = (uint32_t)(idx + 1);
}

/* Appends key (an arena string) to table t; the caller checked that it is absent. */
static int tab_add(struct parser *P, struct kumo_toml_value *t, const struct keypart *k,
		   struct kumo_toml_value *v)
{
	size_t n = t->u.tab.n;

	if (n == UINT32_MAX - 1)
		return nomem(P);
	if (n == t->u.tab.cap) {
		size_t cap = n ? 2 * n : 4;
		struct entry *ents = arena_alloc(P->doc, cap * sizeof(*ents));
		if (!ents)
			return nomem(P);
		if (n)
			memcpy(ents, t->u.tab.ents, n * sizeof(*ents));
		t->u.tab.ents = ents;
		t->u.tab.cap = cap;
	}
	t->u.tab.ents[n] = (struct entry){k->s, k->len, k->hash, v};
	t->u.tab.n = n + 1;
	if (n + 1 < INDEX_MIN)
		return 0;
	if ((n + 1) * 2 > t->u.tab.nslots) {
		/* Keep the load factor at most one half. */
		size_t nslots = t->u.tab.nslots ? 2 * t->u.tab.nslots : 4 * INDEX_MIN;
		uint32_t *slots = arena_alloc(P->doc, nslots * sizeof(*slots));
		if (!slots)
			return nomem(P);
		memset(slots, 0, nslots * sizeof(*slots));
		for (size_t i = 0; i <= n; i++)
			slot_insert(slots, nslots, t->u.tab.ents[i].hash, i);
		t->u.tab.slots = slots;
		t->u.tab.nslots = nslots;
	} else {
		slot_insert(t->u.tab.slots, t->u.tab.nslots, k->hash, n);
	}
	return 0;
}

static int arr_push(struct parser *P, struct kumo_toml_value *a, struct kumo_toml_value *v)
{
	size_t n = a->u.arr.n;

	if (n == a->u.arr.cap) {
		size_t cap = n ? 2 * n : 4;
		struct kumo_toml_value **items = arena_alloc(P->doc, cap * sizeof(*items));
		if (!items)
			return nomem(P);
		if (n)
			memcpy(items, a->u.arr.items, n * sizeof(*items));
		a->u.arr.items = items;
		a->u.arr.cap = cap;
	}
	a->u.arr.items[n] = v;
	a->u.arr.n = n + 1;
	return 0;
}

/* What an existing key holds, for messages. */
static const char *what_is(const struct kumo_toml_value *v)
{
	if (v->type == KUMO_TOML_ARRAY && (v->flags & ARR_TABLES))
		return "an array of tables";
	if (v->type == KUMO_TOML_TABLE && (v->flags & TAB_INLINE))
		return "an inline table";
	switch (v->type) {
	case KUMO_TOML_STRING:
		return "a string";
	case KUMO_TOML_INTEGER:
		return "an integer";
	case KUMO_TOML_FLOAT:
		return "a float";
	case KUMO_TOML_BOOL:
		return "a boolean";
	case KUMO_TOML_DATETIME:
		return "a date-time";
	case KUMO_TOML_ARRAY:
		return "an array";
	default:
		return "a table";
	}
}

/* ---- strings -------------------------------------------------------------------------- */

/* Copies a run of ordinary characters of a string into the scratch buffer, up to (not
 * including) the next byte that needs a closer look: a quote, a backslash, a control
 * character. Multi-byte UTF-8 is checked here. */
static int string_run(struct parser *P, char quote, bool escapes, const char *what)
{
	const char *s = P->p;

	while (P->p < P->end) {
		unsigned char c = (unsigned char)*P->p;
		if (c == (unsigned char)quote || (escapes && c == '\\') || is_ctrl(c))
			break;
		if (c >= 0x80) {
			size_t n =
			    utf8_len((const unsigned char *)P->p, (const unsigned char *)P->end);
			if (!n)
				return fail(P, P->p, "invalid UTF-8 in %s", what);
			P->p += n;
		} else {
			P->p++;
		}
	}
	return scratch_put(P, s, (size_t)(P->p - s));
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes the escape at the cursor (a backslash) into the scratch buffer. */
static int parse_escape(struct parser *P)
{
	const char *at = P->p;
	char out[4];
	uint32_t cp = 0;
	int ndig, c;

	if (P->end - P->p < 2)
		return fail(P, at, "unterminated escape sequence");
	c = (unsigned char)P->p[1];
	P->p += 2;
	switch (c) {
	case 'b':
		return scratch_putc(P, '\b');
	case 't':
		return scratch_putc(P, '\t');
	case 'n':
		return scratch_putc(P, '\n');
	case 'f':
		return scratch_putc(P, '\f');
	case 'r':
		return scratch_putc(P, '\r');
	case '"':
		return scratch_putc(P, '"');
	case '\\':
		return scratch_putc(P, '\\');
	case 'u':
		ndig = 4;
		break;
	case 'U':
		ndig = 8;
		break;
	default:
		if (c > 0x20 && c < 0x7f)
			return fail(P, at, "invalid escape sequence '\\%c'", c);
		return fail(P, at, "invalid escape sequence: backslash before byte 0x%02X", c);
	}
	for (int i = 0; i < ndig; i++) {
		int h = P->p < P->end ? hexval((unsigned char)*P->p) : -1;
		if (h < 0)
			return fail(P, at, "\\%c needs exactly %d hex digits", c, ndig);
		cp = cp << 4 | (uint32_t)h;
		P->p++;
	}
	if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return fail(P, at, "escape \\%c%0*X is not a Unicode scalar value", c, ndig, cp);
	if (cp < 0x80) {
		out[0] = (char)cp;
		return scratch_put(P, out, 1);
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3F));
		return scratch_put(P, out, 2);
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | cp >> 12);
		out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return scratch_put(P, out, 3);
	}
	out[0] = (char)(0xF0 | cp >> 18);
	out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
	out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return scratch_put(P, out, 4);
}

/* A single-line string, basic ("...") or literal ('...'), decoded into the scratch
 * buffer. The cursor is on the opening quote and ends after the closing one. */
static int parse_line_string(struct parser *P, char quote)
{
	const char *open = P->p;
	bool escapes = quote == '"';
	int rc;

	P->slen = 0;
	P->p++;
	for (;;) {
		if ((rc = string_run(P, quote, escapes, "string")))
			return rc;
		if (P->p >= P->end)
			return fail(P, open, "unterminated string");
		unsigned char c = (unsigned char)*P->p;
		if (c == (unsigned char)quote) {
			P->p++;
			return scratch_put(P, "", 0);
		}
		if (c == '\\') {
			if ((rc = parse_escape(P)))
				return rc;
			continue;
		}
		if (c == '\n' || c == '\r')
			return fail(P, open, "unterminated string (line ended before the quote)");
		return fail(P, P->p, "control character U+%04X in string", c);
	}
}

/* A multi-line string, basic ("""...""") or literal ('''...'''), decoded into the scratch
 * buffer; the cursor is on the opening quotes. A newline right after the opening quotes
 * is dropped; CRLF reads as LF. */
static int parse_ml_string(struct parser *P, char quote)
{
	const char *open = P->p;
	bool escapes = quote == '"';
	bool ate;
	int rc;

	P->slen = 0;
	P->p += 3;
	if ((rc = eat_newline(P, &ate)))
		return rc;
	for (;;) {
		if ((rc = string_run(P, quote, escapes, "string")))
			return rc;
		if (P->p >= P->end)
			return fail(P, open, "unterminated multi-line string");
		unsigned char c = (unsigned char)*P->p;
		if (c == (unsigned char)quote) {
			/* Up to two quotes may sit just before the closing three. */
			size_t n = 0;
			while (P->p + n < P->end && P->p[n] == quote)
				n++;
			if (n < 3) {
				if ((rc = scratch_put(P, P->p, n)))
					return rc;
				P->p += n;
				continue;
			}
			if (n > 5)
				return fail(P, P->p + 5, "too many quotes at the end of a string");
			if ((rc = scratch_put(P, P->p, n - 3)))
				return rc;
			P->p += n;
			return scratch_put(P, "", 0);
		}
		if (c == '\\') {
			/* A backslash ending a line (blanks may follow it) swallows the newline and
			 * all blanks and newlines after it. */
			const char *q = P->p + 1;
			while (q < P->end && (*q == ' ' || *q == '\t'))
				q++;
			if (q < P->end && (*q == '\n' || *q == '\r')) {
				P->p = q;
				for (;;) {
					skip_ws(P);
					if ((rc = eat_newline(P, &ate)))
						return rc;
					if (!ate)
						break;
				}
				continue;
			}
			if (q >= P->end)
				return fail(P, open, "unterminated multi-line string");
			if ((rc = parse_escape(P)))
				return rc;
			continue;
		}
		if (c == '\n' || c == '\r') {
			if ((rc = eat_newline(P, &ate)) || (rc = scratch_putc(P, '\n')))
				return rc;
			continue;
		}
		return fail(P, P->p, "control character U+%04X in string", c);
	}
}

/* ---- keys ----------------------------------------------------------------------------- */

/* Parses a (dotted) key at the cursor into kp, appending it to the key text for errors. */
static int parse_key(struct parser *P, struct keypath *kp)
{
	int rc;

	kp->n = 0;
	for (;;) {
		const char *at = P->p;
		struct keypart *k;
		int c = peek(P);

		if (kp->n == KUMO_TOML_MAX_DEPTH)
			return fail(P, at, "key has more than %d dotted parts",
				    KUMO_TOML_MAX_DEPTH);
		k = &kp->part[kp->n];
		k->at = at;
		if (c == '"' || c == '\'') {
			char q3[3] = {(char)c, (char)c, (char)c};
			if (starts_with(P, q3, 3))
				return fail(P, at, "a multi-line string cannot be a key");
			if ((rc = parse_line_string(P, (char)c)))
				return rc;
			k->s = arena_strdup(P->doc, P->scratch, P->slen);
			k->len = P->slen;
		} else if (c >= 0 && is_bare_key_char(c)) {
			while (P->p < P->end && is_bare_key_char((unsigned char)*P->p))
				P->p++;
			k->len = (size_t)(P->p - at);
			k->s = arena_strdup(P->doc, at, k->len);
		} else if (c == -1 || c == '\n' || c == '\r' || c == '#') {
			return fail(P, at, "expected a key");
		} else if (c >= 0x80 &&
			   !utf8_len((const unsigned char *)at, (const unsigned char *)P->end)) {
			return fail(P, at, "invalid UTF-8");
		} else if (c == '=' || c == '.' || c == ']') {
			return fail(P, at, "expected a key before '%c'", c);
		} else {
			return fail(P, at,
				    "invalid character in key (quote keys that are not "
				    "made of A-Z a-z 0-9 _ -)");
		}
		if (!k->s)
			return nomem(P);
		k->hash = hash_key(k->s, k->len);
		kp->n++;
		kb_append(P, k->s, k->len);
		skip_ws(P);
		if (peek(P) != '.')
			return 0;
		P->p++;
		skip_ws(P);
	}
}

/* Walks the dotted key kp from table t as a key/value line or inline table entry does:
 * missing tables are made (as dotted), existing ones are entered only if dotted keys made
 * them. Stores the table that gets the last part. */
static int resolve_dotted(struct parser *P, struct kumo_toml_value *t, const struct keypath *kp,
			  struct kumo_toml_value **parent)
{
	for (size_t i = 0; i + 1 < kp->n; i++) {
		const struct keypart *k = &kp->part[i];
		struct entry *e = tab_find(t, k->s, k->len, k->hash);
		if (!e) {
			struct kumo_toml_value *nt =
			    new_container(P, KUMO_TOML_TABLE, t->depth + 1u, TAB_DOTTED, k->at);
			if (!nt || tab_add(P, t, k, nt))
				return P->rc;
			t = nt;
			continue;
		}
		struct kumo_toml_value *v = e->val;
		if (v->type != KUMO_TOML_TABLE)
			return fail(P, k->at, "cannot add keys to '%s': it is already %s", k->s,
				    what_is(v));
		if (!(v->flags & TAB_DOTTED)) {
			if (v->flags & TAB_INLINE)
				return fail(P, k->at, "cannot add keys to inline table '%s'", k->s);
			return fail(P, k->at,
				    "cannot add keys to table '%s' with a dotted key: it was made "
				    "by a [header]",
				    k->s);
		}
		t = v;
	}
	const struct keypart *last = &kp->part[kp->n - 1];
	if (tab_find(t, last->s, last->len, last->hash))
		return fail(P, last->at, "duplicate key");
	*parent = t;
	return 0;
}

/* ---- values --------------------------------------------------------------------------- */

static int parse_value(struct parser *P, unsigned depth, struct kumo_toml_value **out);

static int parse_keyval(struct parser *P, struct kumo_toml_value *t);

/* Digits of a base with single underscores between digits; returns the end of the run,
 * or NULL when it is empty or an underscore is not between two digits. */
static const char *scan_digits(const char *s, const char *e, int base)
{
	if (s >= e || hexval((unsigned char)*s) < 0 || hexval((unsigned char)*s) >= base)
		return NULL;
	s++;
	while (s < e) {
		if (*s == '_') {
			if (s + 1 >= e || hexval((unsigned char)s[1]) < 0 ||
			    hexval((unsigned char)s[1]) >= base)
				return NULL;
			s += 2;
		} else if (hexval((unsigned char)*s) >= 0 && hexval((unsigned char)*s) < base) {
			s++;
		} else {
			break;
		}
	}
	return s;
}

/* The value of digits (underscores skipped) if at most limit, else false. */
static bool digits_value(const char *s, const char *e, int base, uint64_t limit, uint64_t *out)
{
	uint64_t v = 0;

	for (; s < e; s++) {
		if (*s == '_')
			continue;
		uint64_t d = (uint64_t)hexval((unsigned char)*s);
		if (v > (limit - d) / (uint64_t)base)
			return false;
		v = v * (uint64_t)base + d;
	}
	*out = v;
	return true;
}

static int parse_number(struct parser *P, const char *s, const char *e, struct kumo_toml_value *v)
{
	const char *q = s, *d;
	bool neg = false, sign = false;
	int len = (int)(e - s > 64 ? 64 : e - s);
	uint64_t mag;

	if (*q == '+' || *q == '-') {
		neg = *q == '-';
		sign = true;
		q++;
	}
	if (e - q == 3 && (!memcmp(q, "inf", 3) || !memcmp(q, "nan", 3))) {
		v->type = KUMO_TOML_FLOAT;
		v->u.f = q[0] == 'i' ? INFINITY : NAN;
		if (neg)
			v->u.f = -v->u.f;
		return 0;
	}
	if (!sign && e - q > 2 && q[0] == '0' && (q[1] == 'x' || q[1] == 'o' || q[1] == 'b')) {
		int base = q[1] == 'x' ? 16 : q[1] == 'o' ? 8 : 2;
		d = scan_digits(q + 2, e, base);
		if (d != e)
			return fail(P, s, "invalid integer '%.*s'", len, s);
		if (!digits_value(q + 2, e, base, INT64_MAX, &mag))
			return fail(P, s, "integer '%.*s' does not fit in 64 bits", len, s);
		v->type = KUMO_TOML_INTEGER;
		v->u.i = (int64_t)mag;
		return 0;
	}
	d = scan_digits(q, e, 10);
	if (!d)
		return fail(P, s, "invalid value '%.*s'", len, s);
	if (*q == '0' && d - q > 1)
		return fail(P, s, "leading zeros are not allowed in '%.*s'", len, s);
	if (d == e) {
		if (!digits_value(q, e, 10, neg ? (uint64_t)INT64_MAX + 1 : INT64_MAX, &mag))
			return fail(P, s, "integer '%.*s' does not fit in 64 bits", len, s);
		v->type = KUMO_TOML_INTEGER;
		if (!neg)
			v->u.i = (int64_t)mag;
		else if (mag == (uint64_t)INT64_MAX + 1)
			v->u.i = INT64_MIN;
		else
			v->u.i = -(int64_t)mag;
		return 0;
	}
	if (*d == '.') {
		d = scan_digits(d + 1, e, 10);
		if (!d)
			return fail(P, s, "invalid float '%.*s': digits must follow the '.'", len,
				    s);
	}
	if (d < e && (*d == 'e' || *d == 'E')) {
		d++;
		if (d < e && (*d == '+' || *d == '-'))
			d++;
		d = scan_digits(d, e, 10);
		if (!d)
			return fail(P, s, "invalid float '%.*s': bad exponent", len, s);
	}
	if (d != e)
		return fail(P, s, "invalid value '%.*s'", len, s);

	/* strtod_l in the C locale: the embedder's LC_NUMERIC must not change the result. */
	int rc;
	char *endp;
	P->slen = 0;
	for (const char *c = s; c < e; c++)
		if (*c != '_' && (rc = scratch_putc(P, *c)))
			return rc;
	if (!P->cloc) {
		P->cloc = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
		if (!P->cloc)
			return nomem(P);
	}
	errno = 0;
	v->u.f = strtod_l(P->scratch, &endp, P->cloc);
	if (endp != P->scratch + P->slen)
		return fail(P, s, "invalid float '%.*s'", len, s);
	if (errno == ERANGE && isinf(v->u.f))
		return fail(P, s, "float '%.*s' is out of range", len, s);
	v->type = KUMO_TOML_FLOAT;
	return 0;
}

static bool digits_n(const char *s, int n)
{
	for (int i = 0; i < n; i++)
		if (!is_digit((unsigned char)s[i]))
			return false;
	return true;
}

static int num2(const char *s)
{
	return (s[0] - '0') * 10 + (s[1] - '0');
}

/* HH:MM:SS[.fraction] at s; returns its end or NULL. */
static const char *scan_time(const char *s, const char *e)
{
	if (e - s < 8 || !digits_n(s, 2) || s[2] != ':' || !digits_n(s + 3, 2) || s[5] != ':' ||
	    !digits_n(s + 6, 2))
		return NULL;
	if (num2(s) > 23 || num2(s + 3) > 59 || num2(s + 6) > 60)
		return NULL;
	s += 8;
	if (s < e && *s == '.') {
		s++;
		if (s >= e || !is_digit((unsigned char)*s))
			return NULL;
		while (s < e && is_digit((unsigned char)*s))
			s++;
	}
	return s;
}

/* Checks a date, date-time or time token (RFC 3339 as TOML restricts it). */
static bool valid_datetime(const char *s, const char *e)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	const char *p;

	if (e - s >= 3 && s[2] == ':') {
		p = scan_time(s, e);
		return p == e;
	}
	if (e - s < 10 || !digits_n(s, 4) || s[4] != '-' || !digits_n(s + 5, 2) || s[7] != '-' ||
	    !digits_n(s + 8, 2))
		return false;
	int y = num2(s) * 100 + num2(s + 2), m = num2(s + 5), d = num2(s + 8);
	if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
		return false;
	if (m == 2 && d == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
		return false;
	p = s + 10;
	if (p == e)
		return true;
	if (*p != 'T' && *p != 't' && *p != ' ')
		return false;
	p = scan_time(p + 1, e);
	if (!p)
		return false;
	if (p == e)
		return true;
	if ((*p == 'Z' || *p == 'z') && p + 1 == e)
		return true;
	if ((*p != '+' && *p != '-') || e - p != 6 || !digits_n(p + 1, 2) || p[3] != ':' ||
	    !digits_n(p + 4, 2))
		return false;
	return num2(p + 1) <= 23 && num2(p + 4) <= 59;
}

/* Booleans, numbers, inf/nan, dates and times. */
static int parse_bare_value(struct parser *P, struct kumo_toml_value *v)
{
	const char *s = P->p, *e = s;
	int len;

	while (e < P->end && is_bare_value_char((unsigned char)*e))
		e++;
	if (e == s) {
		int c = (unsigned char)*s;
		if (c >= 0x80 && !utf8_len((const unsigned char *)s, (const unsigned char *)P->end))
			return fail(P, s, "invalid UTF-8");
		if (c > 0x20 && c < 0x7f)
			return fail(P, s, "expected a value, found '%c'", c);
		return fail(P, s, "expected a value");
	}
	/* A date and a time may be separated by a space. */
	if (e - s == 10 && s[4] == '-' && P->end - e >= 4 && e[0] == ' ' &&
	    is_digit((unsigned char)e[1]) && is_digit((unsigned char)e[2]) && e[3] == ':') {
		e++;
		while (e < P->end && is_bare_value_char((unsigned char)*e))
			e++;
	}
	P->p = e;
	len = (int)(e - s > 64 ? 64 : e - s);
	if (e - s == 4 && !memcmp(s, "true", 4)) {
		v->type = KUMO_TOML_BOOL;
		v->u.b = true;
		return 0;
	}
	if (e - s == 5 && !memcmp(s, "false", 5)) {
		v->type = KUMO_TOML_BOOL;
		v->u.b = false;
		return 0;
	}
	if ((e - s >= 5 && digits_n(s, 4) && s[4] == '-') ||
	    (e - s >= 3 && digits_n(s, 2) && s[2] == ':')) {
		if (!valid_datetime(s, e))
			return fail(P, s, "invalid date or time '%.*s'", len, s);
		v->type = KUMO_TOML_DATETIME;
		v->u.str.len = (size_t)(e - s);
		v->u.str.s = arena_strdup(P->doc, s, v->u.str.len);
		return v->u.str.s ? 0 : nomem(P);
	}
	if (is_digit((unsigned char)*s) || *s == '+' || *s == '-' || *s == 'i' || *s == 'n')
		return parse_number(P, s, e, v);
	return fail(P, s, "invalid value '%.*s' (strings need quotes)", len, s);
}

static int parse_array(struct parser *P, unsigned depth, struct kumo_toml_value **out)
{
	const char *open = P->p;
	struct kumo_toml_value *a, *item;
	int rc;

	if (!(a = new_container(P, KUMO_TOML_ARRAY, depth, 0, open)))
		return P->rc;
	P->p++;
	for (;;) {
		if ((rc = skip_blank(P)))
			return rc;
		if (P->p >= P->end)
			return fail(P, open, "unterminated array");
		if (*P->p == ']') {
			P->p++;
			break;
		}
		if ((rc = parse_value(P, depth + 1, &item)) || (rc = arr_push(P, a, item)))
			return rc;
		if ((rc = skip_blank(P)))
			return rc;
		if (P->p >= P->end)
			return fail(P, open, "unterminated array");
		if (*P->p == ',') {
			P->p++;
			continue;
		}
		if (*P->p == ']') {
			P->p++;
			break;
		}
		return fail(P, P->p, "expected ',' or ']' in array");
	}
	*out = a;
	return 0;
}

static int parse_inline_table(struct parser *P, unsigned depth, struct kumo_toml_value **out)
{
	const char *open = P->p;
	size_t keysave = P->keylen;
	struct kumo_toml_value *t;
	int rc;

	if (!(t = new_container(P, KUMO_TOML_TABLE, depth, TAB_INLINE, open)))
		return P->rc;
	P->p++;
	skip_ws(P);
	if (peek(P) == '}') {
		P->p++;
		*out = t;
		return 0;
	}
	for (;;) {
		if (P->p >= P->end)
			return fail(P, open, "unterminated inline table");
		if (*P->p == '\n' || *P->p == '\r')
			return fail(P, P->p,
				    "newline in inline table (TOML 1.0 keeps them on one line)");
		kb_truncate(P, keysave);
		if ((rc = parse_keyval(P, t)))
			return rc;
		skip_ws(P);
		if (P->p >= P->end)
			return fail(P, open, "unterminated inline table");
		if (*P->p == ',') {
			P->p++;
			skip_ws(P);
			if (peek(P) == '}')
				return fail(P, P->p, "trailing comma in inline table");
			continue;
		}
		if (*P->p == '}') {
			P->p++;
			break;
		}
		if (*P->p == '\n' || *P->p == '\r')
			return fail(P, P->p,
				    "newline in inline table (TOML 1.0 keeps them on one line)");
		return fail(P, P->p, "expected ',' or '}' in inline table");
	}
	kb_truncate(P, keysave);
	*out = t;
	return 0;
}

/* Parses the value at the cursor as a node at depth. */
static int parse_value(struct parser *P, unsigned depth, struct kumo_toml_value **out)
{
	const char *at = P->p;
	struct kumo_toml_value *v;
	int c = peek(P), rc;

	if (c == '[')
		return parse_array(P, depth, out);
	if (c == '{')
		return parse_inline_table(P, depth, out);
	if (c == -1 || c == '\n' || c == '\r' || c == '#')
		return fail(P, at, "expected a value");
	if (!(v = new_node(P, KUMO_TOML_STRING, depth, line_at(P, at))))
		return P->rc;
	if (c == '"' || c == '\'') {
		char q3[3] = {(char)c, (char)c, (char)c};
		if (starts_with(P, q3, 3))
			rc = parse_ml_string(P, (char)c);
		else
			rc = parse_line_string(P, (char)c);
		if (rc)
			return rc;
		v->u.str.len = P->slen;
		v->u.str.s = arena_strdup(P->doc, P->scratch, P->slen);
		if (!v->u.str.s)
			return nomem(P);
	} else if ((rc = parse_bare_value(P, v))) {
		return rc;
	}
	*out = v;
	return 0;
}

/* key = value, into table t (a section or an inline table). */
static int parse_keyval(struct parser *P, struct kumo_toml_value *t)
{
	struct kumo_toml_value *parent = NULL, *v = NULL;
	struct keypath kp;
	int rc;

	if ((rc = parse_key(P, &kp)))
		return rc;
	if (peek(P) != '=')
		return fail(P, P->p, "expected '=' after key");
	P->p++;
	skip_ws(P);
	if ((rc = resolve_dotted(P, t, &kp, &parent)))
		return rc;
	if ((rc = parse_value(P, parent->depth + 1u, &v)))
		return rc;
	return tab_add(P, parent, &kp.part[kp.n - 1], v);
}

/* ---- document ------------------------------------------------------------------------- */

/* Follows a [header] or [[header]] path from the root and makes the named table the
 * current section. */
static int open_section(struct parser *P, const struct keypath *kp, bool aot, const char *at)
{
	struct kumo_toml_value *t = P->doc->root, *v;
	int line = line_at(P, at);

	for (size_t i = 0; i + 1 < kp->n; i++) {
		const struct keypart *k = &kp->part[i];
		struct entry *e = tab_find(t, k->s, k->len, k->hash);
		if (!e) {
			v = new_container(P, KUMO_TOML_TABLE, t->depth + 1u, TAB_IMPLICIT, at);
			if (!v || tab_add(P, t, k, v))
				return P->rc;
			t = v;
			continue;
		}
		v = e->val;
		if (v->type == KUMO_TOML_ARRAY && (v->flags & ARR_TABLES)) {
			t = v->u.arr.items[v->u.arr.n - 1];
		} else if (v->type == KUMO_TOML_TABLE && !(v->flags & TAB_INLINE)) {
			t = v;
		} else {
			return fail(P, k->at, "cannot define a table inside '%s': it is already %s",
				    k->s, what_is(v));
		}
	}

	const struct keypart *last = &kp->part[kp->n - 1];
	struct entry *e = tab_find(t, last->s, last->len, last->hash);
	if (!aot) {
		if (!e) {
			v = new_container(P, KUMO_TOML_TABLE, t->depth + 1u, TAB_DEFINED, at);
			if (!v || tab_add(P, t, last, v))
				return P->rc;
		} else if (e->val->type == KUMO_TOML_TABLE && e->val->flags == TAB_IMPLICIT) {
			v = e->val;
			v->flags = TAB_DEFINED;
			v->line = line;
		} else if (e->val->type == KUMO_TOML_TABLE && (e->val->flags & TAB_DEFINED)) {
			return fail(P, at, "table defined more than once");
		} else if (e->val->type == KUMO_TOML_TABLE && (e->val->flags & TAB_DOTTED)) {
			return fail(P, at, "table already defined by dotted keys");
		} else {
			return fail(P, at, "key already defined as %s", what_is(e->val));
		}
	} else {
		struct kumo_toml_value *arr;
		if (!e) {
			arr = new_container(P, KUMO_TOML_ARRAY, t->depth + 1u, ARR_TABLES, at);
			if (!arr || tab_add(P, t, last, arr))
				return P->rc;
		} else if (e->val->type == KUMO_TOML_ARRAY && (e->val->flags & ARR_TABLES)) {
			arr = e->val;
		} else {
			return fail(P, at, "key already defined as %s, not an array of tables",
				    what_is(e->val));
		}
		v = new_container(P, KUMO_TOML_TABLE, arr->depth + 1u, TAB_DEFINED, at);
		if (!v || arr_push(P, arr, v))
			return P->rc;
	}
	P->section = v;
	return 0;
}

static int parse_header(struct parser *P)
{
	const char *at = P->p;
	struct keypath kp;
	bool aot;
	int rc;

	kb_truncate(P, 0);
	P->p++;
	aot = peek(P) == '[';
	if (aot)
		P->p++;
	skip_ws(P);
	if ((rc = parse_key(P, &kp)))
		return rc;
	if (P->p >= P->end)
		return fail(P, at, "unterminated table header");
	if (*P->p != ']')
		return fail(P, P->p, "expected '%s' to end the table header", aot ? "]]" : "]");
	P->p++;
	if (aot) {
		if (P->p >= P->end)
			return fail(P, at, "unterminated table header");
		if (*P->p != ']')
			return fail(P, P->p, "expected ']]' to end the array of tables header");
		P->p++;
	}
	if ((rc = open_section(P, &kp, aot, at)))
		return rc;
	memcpy(P->sectbuf, P->keybuf, P->keylen + 1);
	P->sectlen = P->keylen;
	return end_of_line(P, "table header");
}

static int parse_document(struct parser *P)
{
	int rc;

	if (starts_with(P, "\xEF\xBB\xBF", 3))
		P->p += 3;
	for (;;) {
		skip_ws(P);
		if (P->p >= P->end)
			return 0;
		int c = (unsigned char)*P->p;
		if (c == '#' || c == '\n' || c == '\r') {
			kb_truncate(P, 0);
			rc = end_of_line(P, "comment");
		} else if (c == '[') {
			rc = parse_header(P);
		} else {
			memcpy(P->keybuf, P->sectbuf, P->sectlen + 1);
			P->keylen = P->sectlen;
			rc = parse_keyval(P, P->section);
			if (!rc)
				rc = end_of_line(P, "value");
		}
		if (rc)
			return rc;
	}
}

/* ---- public API ----------------------------------------------------------------------- */

int kumo_toml_parse(const char *text, size_t len, struct kumo_toml_doc **out,
		    struct kumo_toml_error *err)
{
	struct kumo_toml_error dummy;
	struct parser P;
	int rc;

	if (!err)
		err = &dummy;
	memset(err, 0, sizeof(*err));
	*out = NULL;
	if (len > INT_MAX) {
		snprintf(err->msg, sizeof(err->msg), "input larger than %d bytes", INT_MAX);
		return -EFBIG;
	}
	if (!text && len) {
		snprintf(err->msg, sizeof(err->msg), "no input text");
		return -EINVAL;
	}
	if (!len)
		text = ""; /* no arithmetic on a null pointer */
	memset(&P, 0, sizeof(P));
	P.start = P.p = P.lpos = text;
	P.end = text + len;
	P.lline = 1;
	P.err = err;
	P.doc = calloc(1, sizeof(*P.doc));
	if (!P.doc)
		return nomem(&P);
	P.doc->next_cap = CHUNK_FIRST;
	P.doc->root = new_node(&P, KUMO_TOML_TABLE, 0, 1);
	if (P.doc->root) {
		P.doc->root->flags = TAB_DEFINED;
		P.section = P.doc->root;
		parse_document(&P);
	}
	rc = P.rc;
	free(P.scratch);
	if (P.cloc)
		freelocale(P.cloc);
	if (rc) {
		kumo_toml_free(P.doc);
		return rc;
	}
	*out = P.doc;
	return 0;
}

static int io_error(struct kumo_toml_error *err, const char *what, int rc)
{
	char buf[128];

	memset(err, 0, sizeof(*err));
	snprintf(err->msg, sizeof(err->msg), "cannot %s: %s", what,
		 strerror_r(-rc, buf, sizeof(buf)));
	return rc;
}

int kumo_toml_parse_file(const char *path, struct kumo_toml_doc **out, struct kumo_toml_error *err)
{
	struct kumo_toml_error dummy;
	struct stat st;
	char *buf = NULL;
	size_t len = 0, cap;
	int fd, rc;

	if (!err)
		err = &dummy;
	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return io_error(err, "open", -errno);
	cap = 65536;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
	    (uint64_t)st.st_size < (uint64_t)INT_MAX)
		cap = (size_t)st.st_size + 1; /* one spare byte, so one read sees the end */
	buf = malloc(cap);
	if (!buf) {
		rc = -ENOMEM;
		goto out_nomem;
	}
	for (;;) {
		if (len == cap) {
			char *nb;
			if (cap > (size_t)INT_MAX) {
				rc = -EFBIG;
				memset(err, 0, sizeof(*err));
				snprintf(err->msg, sizeof(err->msg), "file larger than %d bytes",
					 INT_MAX);
				goto out_close;
			}
			nb = realloc(buf, cap * 2);
			if (!nb) {
				rc = -ENOMEM;
				goto out_nomem;
			}
			buf = nb;
			cap *= 2;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = io_error(err, "read", -errno);
			goto out_close;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	rc = kumo_toml_parse(buf, len, out, err);
	free(buf);
	return rc;

out_nomem:
	memset(err, 0, sizeof(*err));
	snprintf(err->msg, sizeof(err->msg), "out of memory");
out_close:
	close(fd);
	free(buf);
	return rc;
}

void kumo_toml_free(struct kumo_toml_doc *doc)
{
	if (!doc)
		return;
	for (struct chunk *c = doc->chunks, *next; c; c = next) {
		next = c->next;
		free(c);
	}
	free(doc);
}

const struct kumo_toml_value *kumo_toml_root(const struct kumo_toml_doc *doc)
{
	return doc ? doc->root : NULL;
}

enum kumo_toml_type kumo_toml_type(const struct kumo_toml_value *v)
{
	return (enum kumo_toml_type)v->type;
}

const char *kumo_toml_type_name(enum kumo_toml_type type)
{
	switch (type) {
	case KUMO_TOML_STRING:
		return "string";
	case KUMO_TOML_INTEGER:
		return "integer";
	case KUMO_TOML_FLOAT:
		return "float";
	case KUMO_TOML_BOOL:
		return "boolean";
	case KUMO_TOML_DATETIME:
		return "datetime";
	case KUMO_TOML_ARRAY:
		return "array";
	case KUMO_TOML_TABLE:
		return "table";
	}
	return "?";
}

int kumo_toml_line(const struct kumo_toml_value *v)
{
	return v ? v->line : 0;
}

const struct kumo_toml_value *kumo_toml_getn(const struct kumo_toml_value *table, const char *key,
					     size_t keylen)
{
	struct entry *e;

	if (!table || table->type != KUMO_TOML_TABLE || (!key && keylen))
		return NULL;
	if (!key)
		key = "";
	e = tab_find(table, key, keylen, hash_key(key, keylen));
	return e ? e->val : NULL;
}

const struct kumo_toml_value *kumo_toml_get(const struct kumo_toml_value *table, const char *key)
{
	return key ? kumo_toml_getn(table, key, strlen(key)) : NULL;
}

size_t kumo_toml_count(const struct kumo_toml_value *v)
{
	if (!v)
		return 0;
	if (v->type == KUMO_TOML_TABLE)
		return v->u.tab.n;
	if (v->type == KUMO_TOML_ARRAY)
		return v->u.arr.n;
	return 0;
}

const char *kumo_toml_keyn_at(const struct kumo_toml_value *table, size_t i, size_t *len)
{
	if (!table || table->type != KUMO_TOML_TABLE || i >= table->u.tab.n)
		return NULL;
	if (len)
		*len = table->u.tab.ents[i].klen;
	return table->u.tab.ents[i].key;
}

const char *kumo_toml_key_at(const struct kumo_toml_value *table, size_t i)
{
	return kumo_toml_keyn_at(table, i, NULL);
}

const struct kumo_toml_value *kumo_toml_at(const struct kumo_toml_value *v, size_t i)
{
	if (!v)
		return NULL;
	if (v->type == KUMO_TOML_TABLE)
		return i < v->u.tab.n ? v->u.tab.ents[i].val : NULL;
	if (v->type == KUMO_TOML_ARRAY)
		return i < v->u.arr.n ? v->u.arr.items[i] : NULL;
	return NULL;
}

const char *kumo_toml_string(const struct kumo_toml_value *v, size_t *len)
{
	if (!v || (v->type != KUMO_TOML_STRING && v->type != KUMO_TOML_DATETIME))
		return NULL;
	if (len)
		*len = v->u.str.len;
	return v->u.str.s;
}

int kumo_toml_int(const struct kumo_toml_value *v, int64_t *out)
{
	if (!v)
		return -ENOENT;
	if (v->type != KUMO_TOML_INTEGER)
		return -EINVAL;
	*out = v->u.i;
	return 0;
}

int kumo_toml_float(const struct kumo_toml_value *v, double *out)
{
	if (!v)
		return -ENOENT;
	if (v->type == KUMO_TOML_INTEGER) {
		*out = (double)v->u.i;
		return 0;
	}
	if (v->type != KUMO_TOML_FLOAT)
		return -EINVAL;
	*out = v->u.f;
	return 0;
}

int kumo_toml_bool(const struct kumo_toml_value *v, bool *out)
{
	if (!v)
		return -ENOENT;
	if (v->type != KUMO_TOML_BOOL)
		return -EINVAL;
	*out = v->u.b;
	return 0;
}

size_t kumo_toml_format_error(const struct kumo_toml_error *err, const char *filename, char *buf,
			      size_t cap)
{
	const char *f = filename ? filename : "<input>";
	char line[16] = "";
	int n;

	if (err->line > 0)
		snprintf(line, sizeof(line), ":%d", err->line);
	if (err->key[0])
		n = snprintf(buf, cap, "%s%s: key '%s': %s", f, line, err->key, err->msg);
	else
		n = snprintf(buf, cap, "%s%s: %s", f, line, err->msg);
	return n < 0 ? 0 : (size_t)n;
}

/* ---- writing values -------------------------------------------------------------------- */

/* s[0..len) as a basic string. */
static void render_quoted(struct kumo_buf *out, const char *s, size_t len)
{
	char e[6];

	kumo_buf_putc(out, '"');
	for (size_t i = 0; i < len; i++)
		kumo_buf_append(out, e, escape_byte((unsigned char)s[i], e));
	kumo_buf_putc(out, '"');
}

void kumo_toml_render_key(struct kumo_buf *out, const char *key, size_t len)
{
	if (is_bare_key(key, len))
		kumo_buf_append(out, key, len);
	else
		render_quoted(out, key, len);
}

/* A finite float as %.17g (exact: it reads back as the same double) with a '.' or an
 * exponent, so that it reads back as a float; whatever bytes LC_NUMERIC uses for the
 * decimal point, '.' is written. */
static void render_finite(struct kumo_buf *out, double d)
{
	char num[64], *p = num;
	bool dot = false;

	snprintf(num, sizeof(num), "%.17g", d);
	while (*p) {
		bool number_char = is_digit(*p) || *p == '-' || *p == '+' || *p == 'e';
		if (number_char) {
			kumo_buf_putc(out, *p++);
			continue;
		}
		kumo_buf_putc(out, '.'); /* the decimal point, one or more bytes */
		while (*p && !is_digit(*p))
			p++;
		dot = true;
	}
	if (!dot && !strchr(num, 'e'))
		kumo_buf_puts(out, ".0");
}

static void render_float(struct kumo_buf *out, double d)
{
	if (isnan(d))
		kumo_buf_puts(out, "nan");
	else if (isinf(d))
		kumo_buf_puts(out, d < 0 ? "-inf" : "inf");
	else
		render_finite(out, d);
}

/* The elements of an array, or the members of a table as key = value, between open and
 * close. */
static void render_container(struct kumo_buf *out, const struct kumo_toml_value *v, char open,
			     char close)
{
	size_t klen;

	kumo_buf_putc(out, open);
	for (size_t i = 0; i < kumo_toml_count(v); i++) {
		if (i)
			kumo_buf_puts(out, ", ");
		if (v->type == KUMO_TOML_TABLE) {
			const char *key = kumo_toml_keyn_at(v, i, &klen);
			kumo_toml_render_key(out, key, klen);
			kumo_buf_puts(out, " = ");
		}
		kumo_toml_render_value(out, kumo_toml_at(v, i));
	}
	kumo_buf_putc(out, close);
}

void kumo_toml_render_value(struct kumo_buf *out, const struct kumo_toml_value *v)
{
	if (!v)
		return;
	switch ((enum kumo_toml_type)v->type) {
	case KUMO_TOML_STRING:
		render_quoted(out, v->u.str.s, v->u.str.len);
		break;
	case KUMO_TOML_INTEGER:
		kumo_buf_printf(out, "%" PRId64, v->u.i);
		break;
	case KUMO_TOML_FLOAT:
		render_float(out, v->u.f);
		break;
	case KUMO_TOML_BOOL:
		kumo_buf_puts(out, v->u.b ? "true" : "false");
		break;
	case KUMO_TOML_DATETIME:
		kumo_buf_append(out, v->u.str.s, v->u.str.len);
		break;
	case KUMO_TOML_ARRAY:
		render_container(out, v, '[', ']');
		break;
	case KUMO_TOML_TABLE:
		render_container(out, v, '{', '}');
		break;
	}
}
