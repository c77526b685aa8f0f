/* Strict JSON reader; see json_read.h. Recursive descent over the input with a depth bound;
 * nodes and decoded strings go to an arena owned by the document; container children are
 * gathered on a scratch stack and copied out when the container closes. */
#include "util/json_read.h"

#include <errno.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct member {
	const char *key;
	size_t len;
};

struct kumo_json_value {
	enum kumo_json_type type;
	bool boolean;
	bool is_int; /* a number written without fraction or exponent that fits in int64 */
	int64_t i;
	double d;
	size_t n; /* string length; elements or members */
	union {
		const char *s;
		struct {
			struct kumo_json_value *items;
			struct member *keys; /* objects: n keys, in document order */
			uint32_t *order;     /* objects: member indices sorted by key */
		} c;
	};
};

struct chunk {
	struct chunk *next;
	size_t used, cap;
	max_align_t data[];
};

struct kumo_json_doc {
	struct chunk *chunks;
	struct kumo_json_value root;
};

struct parser {
	const char *p;
	size_t len, pos;
	struct kumo_json_doc *doc;
	struct kumo_json_error *err;
	int rc; /* first failure: -EINVAL or -ENOMEM */
	int depth;
	/* scratch stack of finished children of the open containers */
	struct kumo_json_value *vals;
	struct member *keys;
	size_t *key_off; /* offset of each key, for duplicate-key errors */
	size_t sp, cap;
	locale_t c_locale; /* for strtod_l, made on the first non-integer number */
};

static void *arena_alloc(struct kumo_json_doc *doc, size_t n)
{
	n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
	struct chunk *c = doc->chunks;
	if (!c || c->cap - c->used < n) {
		size_t cap = c ? c->cap * 2 : 4096;
		if (cap > (size_t)1 << 24)
			cap = (size_t)1 << 24;
		if (cap < n)
			cap = n;
		struct chunk *nc = malloc(sizeof(*nc) + cap);
		if (!nc)
			return NULL;
		nc->cap = cap;
		nc->used = 0;
		/* A big one-off block goes behind the current chunk so that its space stays in use.
		 */
		if (c && cap == n && c->cap - c->used >= 256) {
			nc->next = c->next;
			c->next = nc;
		} else {
			nc->next = c;
			doc->chunks = nc;
		}
		c = nc;
	}
	void *p = (char *)c->data + c->used;
	c->used += n;
	return p;
}

static void position(const char *text, size_t off, int *line, int *col)
{
	int l = 1, co = 1;
	for (size_t i = 0; i < off; i++) {
		unsigned char c = (unsigned char)text[i];
		if (c == '\n') {
			l++;
			co = 1;
		} else if ((c & 0xc0) != 0x80) {
			co++;
		}
	}
	*line = l;
	*col = co;
}

static int fail_at(struct parser *P, size_t off, const char *fmt, const char *arg)
{
	if (P->rc)
		return P->rc;
	P->rc = -EINVAL;
	if (P->err) {
		P->err->offset = off;
		position(P->p, off, &P->err->line, &P->err->col);
		snprintf(P->err->msg, sizeof(P->err->msg), fmt, arg ? arg : "");
	}
	return P->rc;
}

static int oom(struct parser *P)
{
	if (!P->rc) {
		P->rc = -ENOMEM;
		if (P->err) {
			P->err->offset = P->pos;
			P->err->line = P->err->col = 0;
			snprintf(P->err->msg, sizeof(P->err->msg), "out of memory");
		}
	}
	return P->rc;
}

static void skip_ws(struct parser *P)
{
	while (P->pos < P->len) {
		char c = P->p[P->pos];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		P->pos++;
	}
}

static int push(struct parser *P, const struct kumo_json_value *v, const char *key, size_t klen,
		size_t koff)
{
	if (P->sp == P->cap) {
		size_t cap = P->cap ? P->cap * 2 : 64;
		struct kumo_json_value *vals = realloc(P->vals, cap * sizeof(*vals));
		if (!vals)
			return oom(P);
		P->vals = vals;
		struct member *keys = realloc(P->keys, cap * sizeof(*keys));
		if (!keys)
			return oom(P);
		P->keys = keys;
		size_t *offs = realloc(P->key_off, cap * sizeof(*offs));
		if (!offs)
			return oom(P);
		P->key_off = offs;
		P->cap = cap;
	}
	P->vals[P->sp] = *v;
	P->keys[P->sp] = (struct member){key, klen};
	P->key_off[P->sp] = koff;
	P->sp++;
	return 0;
}

static int hex4(const char *s, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		char c = s[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

/* Length of a valid UTF-8 sequence starting at s[0] (with n bytes available), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len;
	unsigned char lo = 0x80, hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f; /* no UTF-16 surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f; /* nothing above U+10FFFF */
	} else
		return 0;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	return len;
}

static size_t put_utf8(char *out, unsigned cp)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xc0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xe0 | cp >> 12);
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | cp >> 18);
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* A string at P->pos (the opening quote), decoded into the arena. */
static int parse_string(struct parser *P, const char **out, size_t *outlen)
{
	size_t start = ++P->pos, end = start;
	/* Find the closing quote first, to size the decoded copy (never longer than the raw). */
	while (end < P->len && P->p[end] != '"')
		end += P->p[end] == '\\' ? 2 : 1;
	if (end >= P->len)
		return fail_at(P, start - 1, "unterminated string%s", NULL);
	char *buf = arena_alloc(P->doc, end - start + 1);
	if (!buf)
		return oom(P);
	size_t o = 0, i = start;
	while (i < end) {
		unsigned char c = (unsigned char)P->p[i];
		if (c == '\\') {
			char e = P->p[i + 1];
			static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
			const char *k = e ? strchr(from, e) : NULL;
			if (k) {
				buf[o++] = to[k - from];
				i += 2;
				continue;
			}
			unsigned cp, lo;
			if (e != 'u' || end - i < 6 || hex4(P->p + i + 2, &cp) < 0)
				return fail_at(P, i, "invalid escape sequence in a string%s", NULL);
			i += 6;
			if (cp >= 0xdc00 && cp <= 0xdfff)
				return fail_at(P, i - 6, "unpaired surrogate escape%s", NULL);
			if (cp >= 0xd800 && cp <= 0xdbff) {
				if (end - i < 6 || P->p[i] != '\\' || P->p[i + 1] != 'u' ||
				    hex4(P->p + i + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
					return fail_at(P, i - 6, "unpaired surrogate escape%s",
						       NULL);
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				i += 6;
			}
			o += put_utf8(buf + o, cp);
		} else if (c < 0x20) {
			return fail_at(P, i, "control character in a string: escape it%s", NULL);
		} else if (c < 0x80) {
			buf[o++] = (char)c;
			i++;
		} else {
			size_t n = utf8_len((const unsigned char *)P->p + i, end - i);
			if (!n)
				return fail_at(P, i, "invalid UTF-8 in a string%s", NULL);
			memcpy(buf + o, P->p + i, n);
			o += n;
			i += n;
		}
	}
	buf[o] = 0;
	P->pos = end + 1;
	*out = buf;
	*outlen = o;
	return 0;
}

static bool digit(char c)
{
	return c >= '0' && c <= '9';
}

static int parse_number(struct parser *P, struct kumo_json_value *v)
{
	size_t s = P->pos, i = s;
	bool neg = false, integral = true;
	if (i < P->len && P->p[i] == '-') {
		neg = true;
		i++;
	}
	if (i >= P->len || !digit(P->p[i]))
		return fail_at(P, s, "invalid number%s", NULL);
	if (P->p[i] == '0' && i + 1 < P->len && digit(P->p[i + 1]))
		return fail_at(P, s, "leading zero in a number%s", NULL);
	while (i < P->len && digit(P->p[i]))
		i++;
	if (i < P->len && P->p[i] == '.') {
		integral = false;
		if (++i >= P->len || !digit(P->p[i]))
			return fail_at(P, i, "digit expected after the decimal point%s", NULL);
		while (i < P->len && digit(P->p[i]))
			i++;
	}
	if (i < P->len && (P->p[i] == 'e' || P->p[i] == 'E')) {
		integral = false;
		if (++i < P->len && (P->p[i] == '+' || P->p[i] == '-'))
			i++;
		if (i >= P->len || !digit(P->p[i]))
			return fail_at(P, i, "digit expected in the exponent%s", NULL);
		while (i < P->len && digit(P->p[i]))
			i++;
	}
	v->type = KUMO_JSON_NUMBER;
	P->pos = i;
	if (integral) {
		/* Exact when it fits: accumulate the magnitude as a negative number. */
		int64_t acc = 0;
		bool fits = true;
		for (size_t k = s + neg; k < i && fits; k++) {
			int d = P->p[k] - '0';
			if (acc < (INT64_MIN + d) / 10)
				fits = false;
			else
				acc = acc * 10 - d;
		}
		if (fits && (neg || acc != INT64_MIN)) {
			v->is_int = true;
			v->i = neg ? acc : -acc;
			v->d = (double)v->i;
			return 0;
		}
	}
	if (!P->c_locale && !(P->c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0)))
		return oom(P);
	char small[64], *tmp = small;
	size_t n = i - s;
	if (n >= sizeof(small) && !(tmp = malloc(n + 1)))
		return oom(P);
	memcpy(tmp, P->p + s, n);
	tmp[n] = 0;
	v->d = strtod_l(tmp, NULL, P->c_locale);
	if (tmp != small)
		free(tmp);
	return 0;
}

static int parse_value(struct parser *P, struct kumo_json_value *v);

static int parse_array(struct parser *P, struct kumo_json_value *v)
{
	size_t base = P->sp;
	P->pos++;
	skip_ws(P);
	if (P->pos < P->len && P->p[P->pos] == ']') {
		P->pos++;
	} else {
		for (;;) {
			struct kumo_json_value item;
			if (parse_value(P, &item) || push(P, &item, NULL, 0, 0))
				return P->rc;
			skip_ws(P);
			if (P->pos >= P->len)
				return fail_at(P, P->pos, "unterminated array%s", NULL);
			char c = P->p[P->pos++];
			if (c == ']')
				break;
			if (c != ',')
				return fail_at(P, P->pos - 1, "',' or ']' expected in an array%s",
					       NULL);
			skip_ws(P);
			if (P->pos < P->len && P->p[P->pos] == ']')
				return fail_at(P, P->pos, "trailing comma in an array%s", NULL);
		}
	}
	v->type = KUMO_JSON_ARRAY;
	v->n = P->sp - base;
	v->c.items = NULL;
	if (v->n) {
		if (!(v->c.items = arena_alloc(P->doc, v->n * sizeof(*v->c.items))))
			return oom(P);
		memcpy(v->c.items, P->vals + base, v->n * sizeof(*v->c.items));
	}
	P->sp = base;
	return 0;
}

static int key_cmp(const struct member *a, const struct member *b)
{
	size_t n = a->len < b->len ? a->len : b->len;
	int c = memcmp(a->key, b->key, n);
	if (c)
		return c;
	return a->len < b->len ? -1 : a->len > b->len;
}

static int order_cmp(const void *x, const void *y, void *arg)
{
	const struct member *keys = arg;
	uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
	int c = key_cmp(&keys[a], &keys[b]);
	return c ? c : (a > b) - (a < b);
}

static int parse_object(struct parser *P, struct kumo_json_value *v)
{
	size_t base = P->sp;
	P->pos++;
	skip_ws(P);
	if (P->pos < P->len && P->p[P->pos] == '}') {
		P->pos++;
	} else {
		for (;;) {
			if (P->pos >= P->len || P->p[P->pos] != '"')
				return fail_at(P, P->pos, "a string key expected in an object%s",
					       NULL);
			size_t koff = P->pos, klen;
			const char *key;
			if (parse_string(P, &key, &klen))
				return P->rc;
			skip_ws(P);
			if (P->pos >= P->len || P->p[P->pos] != ':')
				return fail_at(P, P->pos, "':' expected after an object key%s",
					       NULL);
			P->pos++;
			struct kumo_json_value item;
			if (parse_value(P, &item) || push(P, &item, key, klen, koff))
				return P->rc;
			skip_ws(P);
			if (P->pos >= P->len)
				return fail_at(P, P->pos, "unterminated object%s", NULL);
			char c = P->p[P->pos++];
			if (c == '}')
				break;
			if (c != ',')
				return fail_at(P, P->pos - 1, "',' or '}' expected in an object%s",
					       NULL);
			skip_ws(P);
			if (P->pos < P->len && P->p[P->pos] == '}')
				return fail_at(P, P->pos, "trailing comma in an object%s", NULL);
		}
	}
	size_t n = P->sp - base;
	v->type = KUMO_JSON_OBJECT;
	v->n = n;
	v->c.items = NULL;
	v->c.keys = NULL;
	v->c.order = NULL;
	if (n > UINT32_MAX)
		return fail_at(P, P->pos, "too many members in an object%s", NULL);
	if (n) {
		v->c.items = arena_alloc(P->doc, n * sizeof(*v->c.items));
		v->c.keys = arena_alloc(P->doc, n * sizeof(*v->c.keys));
		v->c.order = arena_alloc(P->doc, n * sizeof(*v->c.order));
		if (!v->c.items || !v->c.keys || !v->c.order)
			return oom(P);
		memcpy(v->c.items, P->vals + base, n * sizeof(*v->c.items));
		memcpy(v->c.keys, P->keys + base, n * sizeof(*v->c.keys));
		for (uint32_t k = 0; k < n; k++)
			v->c.order[k] = k;
		qsort_r(v->c.order, n, sizeof(*v->c.order), order_cmp, v->c.keys);
		for (size_t k = 1; k < n; k++) {
			uint32_t a = v->c.order[k - 1], b = v->c.order[k];
			if (key_cmp(&v->c.keys[a], &v->c.keys[b]) == 0) {
				char name[64];
				size_t kl = v->c.keys[b].len < 40 ? v->c.keys[b].len : 40;
				memcpy(name, v->c.keys[b].key, kl);
				name[kl] = 0;
				return fail_at(P, P->key_off[base + b], "duplicate key \"%s\"",
					       name);
			}
		}
	}
	P->sp = base;
	return 0;
}

static bool literal(struct parser *P, const char *word)
{
	size_t n = strlen(word);
	if (P->len - P->pos < n || memcmp(P->p + P->pos, word, n) != 0)
		return false;
	P->pos += n;
	return true;
}

static int parse_value(struct parser *P, struct kumo_json_value *v)
{
	memset(v, 0, sizeof(*v));
	skip_ws(P);
	if (P->pos >= P->len)
		return fail_at(P, P->pos, "a value expected%s", NULL);
	int rc;
	switch (P->p[P->pos]) {
	case '{':
	case '[':
		if (++P->depth > KUMO_JSON_MAX_DEPTH)
			return fail_at(P, P->pos, "nesting too deep%s", NULL);
		rc = P->p[P->pos] == '{' ? parse_object(P, v) : parse_array(P, v);
		P->depth--;
		return rc;
	case '"':
		v->type = KUMO_JSON_STRING;
		return parse_string(P, &v->s, &v->n);
	case 't':
	case 'f':
	case 'n':
		if (literal(P, "true") || literal(P, "false")) {
			v->type = KUMO_JSON_BOOL;
			v->boolean = P->p[P->pos - 1] == 'e' && P->p[P->pos - 4] == 't';
			return 0;
		}
		if (literal(P, "null")) {
			v->type = KUMO_JSON_NULL;
			return 0;
		}
		return fail_at(P, P->pos, "unknown literal: expected true, false or null%s", NULL);
	default:
		if (P->p[P->pos] == '-' || digit(P->p[P->pos]))
			return parse_number(P, v);
		return fail_at(P, P->pos, "a value expected%s", NULL);
	}
}

static void free_chunks(struct chunk *c)
{
	while (c) {
		struct chunk *next = c->next;
		free(c);
		c = next;
	}
}

int kumo_json_parse(const char *text, size_t len, size_t *end, struct kumo_json_doc **out,
		    struct kumo_json_error *err)
{
	struct parser P = {.p = text, .len = len, .err = err};
	*out = NULL;
	if (err)
		memset(err, 0, sizeof(*err));
	if (!(P.doc = calloc(1, sizeof(*P.doc))))
		return -ENOMEM;
	if (parse_value(&P, &P.doc->root) == 0) {
		skip_ws(&P);
		if (end)
			*end = P.pos;
		else if (P.pos != len)
			fail_at(&P, P.pos, "unexpected data after the value%s", NULL);
	}
	free(P.vals);
	free(P.keys);
	free(P.key_off);
	if (P.c_locale)
		freelocale(P.c_locale);
	if (P.rc) {
		kumo_json_doc_free(P.doc);
		return P.rc;
	}
	*out = P.doc;
	return 0;
}

void kumo_json_doc_free(struct kumo_json_doc *doc)
{
	if (!doc)
		return;
	free_chunks(doc->chunks);
	free(doc);
}

const struct kumo_json_value *kumo_json_doc_root(const struct kumo_json_doc *doc)
{
	return &doc->root;
}

enum kumo_json_type kumo_json_type(const struct kumo_json_value *v)
{
	return v->type;
}

const char *kumo_json_type_name(enum kumo_json_type type)
{
	static const char *const names[] = {"null",   "boolean", "number",
					    "string", "array",	 "object"};
	return (unsigned)type < sizeof(names) / sizeof(names[0]) ? names[type] : "?";
}

size_t kumo_json_count(const struct kumo_json_value *v)
{
	return v && (v->type == KUMO_JSON_ARRAY || v->type == KUMO_JSON_OBJECT) ? v->n : 0;
}

const struct kumo_json_value *kumo_json_at(const struct kumo_json_value *v, size_t i)
{
	return i < kumo_json_count(v) ? &v->c.items[i] : NULL;
}

const char *kumo_json_key_at(const struct kumo_json_value *obj, size_t i, size_t *len)
{
	if (!obj || obj->type != KUMO_JSON_OBJECT || i >= obj->n)
		return NULL;
	if (len)
		*len = obj->c.keys[i].len;
	return obj->c.keys[i].key;
}

const struct kumo_json_value *kumo_json_getn(const struct kumo_json_value *obj, const char *key,
					     size_t keylen)
{
	if (!obj || obj->type != KUMO_JSON_OBJECT || !obj->n)
		return NULL;
	struct member want = {key, keylen};
	size_t lo = 0, hi = obj->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		uint32_t k = obj->c.order[mid];
		int c = key_cmp(&obj->c.keys[k], &want);
		if (c == 0)
			return &obj->c.items[k];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

const struct kumo_json_value *kumo_json_get(const struct kumo_json_value *obj, const char *key)
{
	return kumo_json_getn(obj, key, strlen(key));
}

const char *kumo_json_string(const struct kumo_json_value *v, size_t *len)
{
	if (!v || v->type != KUMO_JSON_STRING)
		return NULL;
	if (len)
		*len = v->n;
	return v->s;
}

int kumo_json_number(const struct kumo_json_value *v, double *out)
{
	if (!v)
		return -ENOENT;
	if (v->type != KUMO_JSON_NUMBER)
		return -EINVAL;
	*out = v->d;
	return 0;
}

int kumo_json_integer(const struct kumo_json_value *v, int64_t *out)
{
	if (!v)
		return -ENOENT;
	if (v->type != KUMO_JSON_NUMBER)
		return -EINVAL;
	if (v->is_int) {
		*out = v->i;
		return 0;
	}
	/* -2^63 is exact in a double; 2^63 is the first value out of range. */
	if (!(v->d >= -9223372036854775808.0 && v->d < 9223372036854775808.0) ||
	    (double)(int64_t)v->d != v->d)
		return -ERANGE;
	*out = (int64_t)v->d;
	return 0;
}

int kumo_json_boolean(const struct kumo_json_value *v, bool *out)
{
	if (!v)
		return -ENOENT;
	if (v->type != KUMO_JSON_BOOL)
		return -EINVAL;
	*out = v->boolean;
	return 0;
}

bool kumo_json_is_null(const struct kumo_json_value *v)
{
	return v && v->type == KUMO_JSON_NULL;
}
