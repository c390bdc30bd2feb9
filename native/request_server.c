/*
 * request_server: a one-request-per-connection unix socket server on the
 * main thread's libuv loop, for qubesd's sockets (src/qubesd/server.ts).
 *
 *   listenUnix(path, backlog) -> fd
 *       a non-blocking, close-on-exec unix stream socket bound to path and
 *       listening (the caller sets the umask and the mode); throws an Error
 *       whose code is the errno name ("EADDRINUSE"...)
 *   requestServer(fd, maxRequest, onRequest) -> server
 *       serves the listening fd (and owns it from now on): accepts each
 *       connection (accept4, non-blocking), reads it to the client's EOF and
 *       calls onRequest(id, bytes) with the whole request. A request longer
 *       than maxRequest bytes is aborted (the connection closed at once) and
 *       reported as onRequest(id, null). A client that sends part of a
 *       request and stalls is only watched; others are served meanwhile.
 *   server.reply(id, data)    writes data (waiting for the socket to be
 *       writable as needed) and closes the connection: the reply, then EOF
 *   server.drop(id)           closes the connection without a reply
 *   server.detach(id) -> fd   hands the connection's descriptor over (for
 *       a streaming reply through a net.Socket); the server forgets it
 *   server.close()            stops listening (closes the listening fd) and
 *       closes every connection it still holds
 *   server.connections() -> number of connections it holds
 *
 * An id that is no longer held (closed, detached, the server closed) is
 * ignored by reply/drop and makes detach return -1.
 *
 * Written for qrexec-ts (MIT). Uses only Node-API and libuv.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "request_server.h"

#define SLOT_BITS 21
#define SLOT_MASK ((UINT64_C(1) << SLOT_BITS) - 1)
#define MAX_SLOTS (1u << SLOT_BITS)
#define ACCEPT_BATCH 64
#define MAX_REQUEST_LIMIT (16 * 1024 * 1024)

enum { C_READING, C_DISPATCHED, C_WRITING };

typedef struct rs_server rs_server_t;

typedef struct {
    uv_poll_t poll;
    rs_server_t *srv;
    int fd;
    uint32_t slot;
    uint32_t gen;
    int state;
    int polling; /* poll initialised: it must be uv_close()d */
    char *buf;   /* request being read, or reply left to write */
    size_t len, cap, off;
} rs_conn_t;

struct rs_server {
    napi_env env;
    uv_loop_t *loop;
    int lfd;
    uv_poll_t lpoll;
    uv_timer_t retry; /* accept paused after EMFILE */
    napi_ref cb;
    napi_async_context actx;
    size_t max;
    char *scratch; /* max + 1 bytes: a request read in one go needs no buffer of its own */
    rs_conn_t **slots;
    uint32_t *gens;
    uint32_t *freelist;
    uint32_t nfree, used, cap;
    uint32_t count;
    int closed;
    int handles; /* open uv handles and callbacks in progress */
    int js_released;
    int finalized;
};

/* Once closed and idle: drop the callback; once the JS object is gone too: free. */
static void srv_maybe_free(rs_server_t *s)
{
    if (!s->closed || s->handles > 0)
        return;
    if (!s->js_released) {
        s->js_released = 1;
        napi_delete_reference(s->env, s->cb);
        s->cb = NULL;
        napi_async_destroy(s->env, s->actx);
        s->actx = NULL;
    }
    if (!s->finalized)
        return;
    free(s->scratch);
    free(s->slots);
    free(s->gens);
    free(s->freelist);
    free(s);
}

static uint64_t conn_id(const rs_conn_t *c)
{
    return ((uint64_t)c->gen << SLOT_BITS) | c->slot;
}

static rs_conn_t *conn_lookup(rs_server_t *s, int64_t id)
{
    if (id < 0)
        return NULL;
    uint64_t slot = (uint64_t)id & SLOT_MASK;
    uint64_t gen = (uint64_t)id >> SLOT_BITS;
    if (slot >= s->used)
        return NULL;
    rs_conn_t *c = s->slots[slot];
    return c != NULL && c->gen == gen ? c : NULL;
}

static rs_conn_t *conn_new(rs_server_t *s, int fd)
{
    if (s->nfree == 0 && s->used == s->cap) {
        uint32_t ncap = s->cap ? s->cap * 2 : 256;
        if (ncap > MAX_SLOTS)
            return NULL;
        rs_conn_t **slots = realloc(s->slots, ncap * sizeof(*slots));
        if (slots == NULL)
            return NULL;
        s->slots = slots;
        uint32_t *gens = realloc(s->gens, ncap * sizeof(*gens));
        if (gens == NULL)
            return NULL;
        s->gens = gens;
        uint32_t *fl = realloc(s->freelist, ncap * sizeof(*fl));
        if (fl == NULL)
            return NULL;
        s->freelist = fl;
        s->cap = ncap;
    }
    rs_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    uint32_t slot;
    if (s->nfree > 0) {
        slot = s->freelist[--s->nfree];
    } else {
        slot = s->used++;
        s->gens[slot] = 0;
    }
    c->srv = s;
    c->fd = fd;
    c->slot = slot;
    c->gen = s->gens[slot];
    c->state = C_READING;
    s->slots[slot] = c;
    s->count++;
    return c;
}

static void conn_closed(uv_handle_t *h)
{
    rs_conn_t *c = h->data;
    rs_server_t *s = c->srv;
    free(c->buf);
    free(c);
    s->handles--;
    srv_maybe_free(s);
}

/* Forgets the connection; closes its descriptor unless it was handed over. */
static void conn_release(rs_conn_t *c, int close_fd)
{
    rs_server_t *s = c->srv;
    s->slots[c->slot] = NULL;
    s->gens[c->slot] = (s->gens[c->slot] + 1) & 0x7fffffffu;
    s->freelist[s->nfree++] = c->slot;
    s->count--;
    if (c->polling) {
        /* uv_close stops the poll and forgets the fd at once: closing it next is safe */
        uv_close((uv_handle_t *)&c->poll, conn_closed);
        if (close_fd)
            close(c->fd);
    } else {
        if (close_fd)
            close(c->fd);
        free(c->buf);
        free(c);
    }
}

static void on_conn_poll(uv_poll_t *h, int status, int events);

static int conn_watch(rs_conn_t *c, int events)
{
    rs_server_t *s = c->srv;
    if (!c->polling) {
        if (uv_poll_init(s->loop, &c->poll, c->fd) != 0)
            return -1;
        c->poll.data = c;
        c->polling = 1;
        s->handles++;
    }
    return uv_poll_start(&c->poll, events, on_conn_poll) == 0 ? 0 : -1;
}

/* onRequest(id, data | null) in a callback scope (microtasks run after it). */
static void call_js(rs_server_t *s, uint64_t id, const char *data, size_t len)
{
    napi_env env = s->env;
    napi_handle_scope scope;
    if (s->cb == NULL || napi_open_handle_scope(env, &scope) != napi_ok)
        return;
    s->handles++; /* the server outlives this call whatever JS does */
    napi_value cb, recv, argv[2], result;
    void *copy;
    if (napi_get_reference_value(env, s->cb, &cb) == napi_ok && napi_get_global(env, &recv) == napi_ok &&
        napi_create_double(env, (double)id, &argv[0]) == napi_ok &&
        (data != NULL ? napi_create_buffer_copy(env, len, data, &copy, &argv[1]) : napi_get_null(env, &argv[1])) == napi_ok)
        napi_make_callback(env, s->actx, recv, cb, 2, argv, &result);
    bool pending = false;
    napi_value err;
    /* a throwing callback is an uncaught exception, as for any other event */
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending && napi_get_and_clear_last_exception(env, &err) == napi_ok)
        napi_fatal_exception(env, err);
    napi_close_handle_scope(env, scope);
    s->handles--;
}

/* Reads until EOF or EAGAIN: 1 at EOF, 0 for more to come, -1 too long, -2 an error. */
static int read_some(int fd, char *buf, size_t *len, size_t cap)
{
    for (;;) {
        if (*len >= cap)
            return -1;
        ssize_t n = read(fd, buf + *len, cap - *len);
        if (n > 0) {
            *len += (size_t)n;
            continue;
        }
        if (n == 0)
            return 1;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -2;
    }
}

/* The request is complete: hand it to JS. `c` may be gone on return. */
static void conn_dispatch(rs_conn_t *c, const char *data, size_t len)
{
    rs_server_t *s = c->srv;
    c->state = C_DISPATCHED;
    if (c->polling)
        uv_poll_stop(&c->poll);
    call_js(s, conn_id(c), data, len);
}

static void conn_too_long(rs_conn_t *c)
{
    rs_server_t *s = c->srv;
    uint64_t id = conn_id(c);
    conn_release(c, 1);
    call_js(s, id, NULL, 0);
}

/* A freshly accepted connection: most requests are already there in full. */
static void conn_start(rs_conn_t *c)
{
    rs_server_t *s = c->srv;
    size_t len = 0;
    int r = read_some(c->fd, s->scratch, &len, s->max + 1);
    if (r == 1) {
        conn_dispatch(c, s->scratch, len);
        return;
    }
    if (r == -1) {
        conn_too_long(c);
        return;
    }
    if (r == -2) {
        conn_release(c, 1);
        return;
    }
    size_t cap = len * 2 > 4096 ? len * 2 : 4096;
    if (cap > s->max + 1)
        cap = s->max + 1;
    c->buf = malloc(cap);
    if (c->buf == NULL) {
        conn_release(c, 1);
        return;
    }
    memcpy(c->buf, s->scratch, len);
    c->len = len;
    c->cap = cap;
    if (conn_watch(c, UV_READABLE) != 0)
        conn_release(c, 1);
}

static void conn_on_readable(rs_conn_t *c)
{
    rs_server_t *s = c->srv;
    for (;;) {
        int r = read_some(c->fd, c->buf, &c->len, c->cap);
        if (r == -1 && c->cap < s->max + 1) {
            size_t ncap = c->cap * 2 < s->max + 1 ? c->cap * 2 : s->max + 1;
            char *nb = realloc(c->buf, ncap);
            if (nb == NULL) {
                conn_release(c, 1);
                return;
            }
            c->buf = nb;
            c->cap = ncap;
            continue;
        }
        if (r == 0)
            return;
        if (r == -1) {
            conn_too_long(c);
            return;
        }
        if (r == -2) {
            conn_release(c, 1);
            return;
        }
        /* EOF: copy out (JS gets its own buffer) and free ours before the call */
        char *buf = c->buf;
        size_t len = c->len;
        c->buf = NULL;
        c->len = c->cap = 0;
        memcpy(s->scratch, buf, len);
        free(buf);
        conn_dispatch(c, s->scratch, len);
        return;
    }
}

/* Writes what is left of the reply; closes when done or on an error. */
static void conn_write(rs_conn_t *c, const char *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(c->fd, data + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            off += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        conn_release(c, 1); /* the client has gone */
        return;
    }
    if (off == len) {
        conn_release(c, 1);
        return;
    }
    /* keep our own copy of the rest: the caller's buffer is not ours */
    char *rest = malloc(len - off);
    if (rest == NULL) {
        conn_release(c, 1);
        return;
    }
    memcpy(rest, data + off, len - off);
    free(c->buf);
    c->buf = rest;
    c->len = len - off;
    c->off = 0;
    c->state = C_WRITING;
    if (conn_watch(c, UV_WRITABLE) != 0)
        conn_release(c, 1);
}

static void on_conn_poll(uv_poll_t *h, int status, int events)
{
    (void)events;
    rs_conn_t *c = h->data;
    if (c->state == C_READING) {
        if (status < 0)
            conn_release(c, 1);
        else
            conn_on_readable(c);
    } else if (c->state == C_WRITING) {
        if (status < 0) {
            conn_release(c, 1);
            return;
        }
        /* the buffer is ours: write from the offset reached */
        char *data = c->buf + c->off;
        size_t len = c->len - c->off;
        size_t before = c->off;
        size_t off = 0;
        while (off < len) {
            ssize_t n = send(c->fd, data + off, len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n >= 0) {
                off += (size_t)n;
                continue;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_release(c, 1);
            return;
        }
        if (off == len)
            conn_release(c, 1);
        else
            c->off = before + off;
    }
}

static void srv_resume_accept(uv_timer_t *t);

static void on_listen(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    rs_server_t *s = h->data;
    for (int i = 0; i < ACCEPT_BATCH && !s->closed; i++) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors: pause accepting instead of spinning on a readable socket */
                uv_poll_stop(&s->lpoll);
                uv_timer_start(&s->retry, srv_resume_accept, 50, 0);
            }
            return;
        }
        rs_conn_t *c = conn_new(s, fd);
        if (c == NULL) {
            close(fd);
            continue;
        }
        conn_start(c);
    }
}

static void srv_resume_accept(uv_timer_t *t)
{
    rs_server_t *s = t->data;
    if (!s->closed)
        uv_poll_start(&s->lpoll, UV_READABLE, on_listen);
}

static void srv_handle_closed(uv_handle_t *h)
{
    rs_server_t *s = h->data;
    s->handles--;
    srv_maybe_free(s);
}

static void srv_close(rs_server_t *s)
{
    if (s->closed)
        return;
    s->closed = 1;
    uv_close((uv_handle_t *)&s->lpoll, srv_handle_closed);
    uv_close((uv_handle_t *)&s->retry, srv_handle_closed);
    close(s->lfd);
    s->lfd = -1;
    for (uint32_t i = 0; i < s->used; i++)
        if (s->slots[i] != NULL)
            conn_release(s->slots[i], 1);
}

static void srv_cleanup_hook(void *arg)
{
    rs_server_t *s = arg;
    srv_close(s);
}

static void srv_finalize(napi_env env, void *data, void *hint)
{
    (void)hint;
    rs_server_t *s = data;
    if (!s->closed) {
        napi_remove_env_cleanup_hook(env, srv_cleanup_hook, s);
        srv_close(s);
    }
    s->finalized = 1;
    srv_maybe_free(s);
}

/* --- JS functions --- */

static napi_value throw_code(napi_env env, const char *what, int err)
{
    const char *name = strerrorname_np(err);
    char msg[160];
    snprintf(msg, sizeof(msg), "%s: %s", what, strerror(err));
    napi_value code, text, e;
    if (napi_create_string_utf8(env, name ? name : "EIO", NAPI_AUTO_LENGTH, &code) == napi_ok &&
        napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text) == napi_ok && napi_create_error(env, code, text, &e) == napi_ok)
        napi_throw(env, e);
    return NULL;
}

static rs_server_t *this_server(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv)
{
    void *data = NULL;
    if (napi_get_cb_info(env, info, argc, argv, NULL, &data) != napi_ok)
        return NULL;
    return data;
}

static int get_id(napi_env env, napi_value *argv, size_t argc, int64_t *id)
{
    if (argc < 1 || napi_get_value_int64(env, argv[0], id) != napi_ok) {
        napi_throw_type_error(env, NULL, "expected a connection id");
        return 0;
    }
    return 1;
}

/*
 * The connection a call's first argument names: NULL in *c when it is gone
 * or the server is closed. Returns 0, with an exception pending, when the
 * call is malformed.
 */
static int call_conn(napi_env env, napi_callback_info info, napi_value *argv, size_t *argc, rs_conn_t **c)
{
    int64_t id;
    rs_server_t *s = this_server(env, info, argc, argv);
    if (s == NULL || !get_id(env, argv, *argc, &id))
        return 0;
    *c = s->closed ? NULL : conn_lookup(s, id);
    return 1;
}

static napi_value rs_reply(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    size_t argc = 2;
    rs_conn_t *c;
    if (!call_conn(env, info, argv, &argc, &c))
        return NULL;
    void *data;
    size_t len;
    bool isbuf = false;
    if (argc < 2 || napi_is_buffer(env, argv[1], &isbuf) != napi_ok || !isbuf ||
        napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) {
        napi_throw_type_error(env, NULL, "reply: expected a Buffer");
        return NULL;
    }
    if (c != NULL && c->state == C_DISPATCHED)
        conn_write(c, data, len);
    return NULL;
}

static napi_value rs_drop(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    size_t argc = 1;
    rs_conn_t *c;
    if (!call_conn(env, info, argv, &argc, &c))
        return NULL;
    if (c != NULL)
        conn_release(c, 1);
    return NULL;
}

static napi_value rs_detach(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    size_t argc = 1;
    rs_conn_t *c;
    if (!call_conn(env, info, argv, &argc, &c))
        return NULL;
    int fd = -1;
    if (c != NULL && c->state == C_DISPATCHED) {
        fd = c->fd;
        conn_release(c, 0);
    }
    napi_value r;
    napi_create_int32(env, fd, &r);
    return r;
}

static napi_value rs_close(napi_env env, napi_callback_info info)
{
    size_t argc = 0;
    rs_server_t *s = this_server(env, info, &argc, NULL);
    if (s != NULL && !s->closed) {
        napi_remove_env_cleanup_hook(env, srv_cleanup_hook, s);
        srv_close(s);
    }
    return NULL;
}

static napi_value rs_connections(napi_env env, napi_callback_info info)
{
    size_t argc = 0;
    rs_server_t *s = this_server(env, info, &argc, NULL);
    napi_value r;
    napi_create_uint32(env, s != NULL ? s->count : 0, &r);
    return r;
}

static napi_value listen_unix(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    size_t argc = 2;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t plen = 0;
    int32_t backlog = 0;
    if (argc < 2 || napi_get_value_string_utf8(env, argv[0], sa.sun_path, sizeof(sa.sun_path), &plen) != napi_ok ||
        napi_get_value_int32(env, argv[1], &backlog) != napi_ok) {
        napi_throw_type_error(env, NULL, "listenUnix: expected (path, backlog)");
        return NULL;
    }
    if (plen == 0 || plen >= sizeof(sa.sun_path) - 1)
        return throw_code(env, "listenUnix", ENAMETOOLONG);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return throw_code(env, "socket", errno);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, backlog) != 0) {
        int err = errno;
        close(fd);
        return throw_code(env, "listen", err);
    }
    napi_value r;
    napi_create_int32(env, fd, &r);
    return r;
}

static napi_value request_server(napi_env env, napi_callback_info info)
{
    napi_value argv[3];
    size_t argc = 3;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    int32_t fd, max;
    napi_valuetype t;
    if (argc < 3 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_get_value_int32(env, argv[1], &max) != napi_ok ||
        napi_typeof(env, argv[2], &t) != napi_ok || t != napi_function) {
        napi_throw_type_error(env, NULL, "requestServer: expected (fd, maxRequest, onRequest)");
        return NULL;
    }
    if (fd < 0 || max < 1 || max > MAX_REQUEST_LIMIT) {
        napi_throw_range_error(env, NULL, "requestServer: argument out of range");
        return NULL;
    }
    uv_loop_t *loop;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok)
        return NULL;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return throw_code(env, "requestServer", errno);
    rs_server_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return throw_code(env, "requestServer", ENOMEM);
    s->scratch = malloc((size_t)max + 1);
    if (s->scratch == NULL) {
        free(s);
        return throw_code(env, "requestServer", ENOMEM);
    }
    s->env = env;
    s->loop = loop;
    s->lfd = fd;
    s->max = (size_t)max;
    napi_value name, obj;
    if (uv_poll_init(loop, &s->lpoll, fd) != 0) {
        free(s->scratch);
        free(s);
        napi_throw_error(env, NULL, "requestServer: cannot watch the descriptor");
        return NULL;
    }
    s->lpoll.data = s;
    uv_timer_init(loop, &s->retry);
    s->retry.data = s;
    s->handles = 2;
    if (napi_create_reference(env, argv[2], 1, &s->cb) != napi_ok ||
        napi_create_string_utf8(env, "qubesdRequestServer", NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_async_init(env, NULL, name, &s->actx) != napi_ok || napi_create_object(env, &obj) != napi_ok) {
        napi_throw_error(env, NULL, "requestServer: out of memory");
        return NULL;
    }
    static const struct {
        const char *name;
        napi_callback fn;
    } methods[] = { { "reply", rs_reply }, { "drop", rs_drop }, { "detach", rs_detach }, { "close", rs_close }, { "connections", rs_connections } };
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        napi_value fn;
        if (napi_create_function(env, methods[i].name, NAPI_AUTO_LENGTH, methods[i].fn, s, &fn) != napi_ok ||
            napi_set_named_property(env, obj, methods[i].name, fn) != napi_ok)
            return NULL;
    }
    if (napi_wrap(env, obj, s, srv_finalize, NULL, NULL) != napi_ok || napi_add_env_cleanup_hook(env, srv_cleanup_hook, s) != napi_ok)
        return NULL;
    uv_poll_start(&s->lpoll, UV_READABLE, on_listen);
    return obj;
}

int request_server_init(napi_env env, napi_value exports)
{
    napi_value fn;
    return napi_create_function(env, "listenUnix", NAPI_AUTO_LENGTH, listen_unix, NULL, &fn) == napi_ok &&
           napi_set_named_property(env, exports, "listenUnix", fn) == napi_ok &&
           napi_create_function(env, "requestServer", NAPI_AUTO_LENGTH, request_server, NULL, &fn) == napi_ok &&
           napi_set_named_property(env, exports, "requestServer", fn) == napi_ok;
}
