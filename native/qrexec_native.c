/*
 * qrexec_native: the few system calls qrexec-agent needs and Node.js lacks.
 *
 *   recvFds(fd, maxBytes, maxFds) -> { data: Buffer, fds: number[] } | null
 *       one non-blocking recvmsg() with room for maxFds descriptors
 *       (SCM_RIGHTS, received close-on-exec); null on EAGAIN.
 *   sendFds(fd, data, fds) -> bytes sent    one non-blocking sendmsg() of data with
 *       fds attached (SCM_RIGHTS)
 *   pipe() -> [readFd, writeFd]             pipe2(O_CLOEXEC)
 *   setBlocking(fd, blocking)               clear/set O_NONBLOCK
 *   shutdown(fd, how) -> errno or 0         shutdown(2)
 *   dup(fd) -> fd                           fcntl(F_DUPFD_CLOEXEC)
 *   connectUnix(path) -> fd | errno string  a non-blocking stream socket
 *       connected to a unix socket path at once (one connect(2), no event-loop
 *       round trip); "ENOENT", "ECONNREFUSED", "EAGAIN"... when it fails
 *   socketpair() -> [fd, fd]                 socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)
 *   watchSignal(signo, cb)                  installs an SA_SIGINFO handler for signo and
 *       calls cb(senderPid, lineage) in the event loop for each delivery
 *       (senderPid 0 when the kernel sent it; lineage: the sender and its
 *       ancestors as /proc showed them at delivery); see that section
 *   drainSignals() -> count                 delivers, now, the watched signals' records
 *       not handed to JS yet (see that section)
 *   waitReadable(fd, timeoutMs, cb)         calls cb(true) once fd is readable
 *       (data, EOF or error) or cb(false) after timeoutMs, without reading;
 *       watches a dup() of fd in the event loop, so Node's own handle for fd
 *       (paused) is left alone
 *   listenUnix, requestServer              qubesd's request/reply server: see
 *       request_server.c
 *
 * Written for qrexec-ts (MIT). Uses only Node-API (ABI-stable).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <node_api.h>
#include <uv.h>

#include "request_server.h"

#define MAX_FDS_LIMIT 16
#define MAX_BYTES_LIMIT (1024 * 1024)

static napi_value throw_errno(napi_env env, const char *what, int err)
{
    char msg[128];
    const char *s = strerror(err);
    size_t n = strlen(what);
    if (n > 60)
        n = 60;
    memcpy(msg, what, n);
    msg[n] = '\0';
    strncat(msg, ": ", sizeof(msg) - strlen(msg) - 1);
    strncat(msg, s, sizeof(msg) - strlen(msg) - 1);
    napi_throw_error(env, NULL, msg);
    return NULL;
}

/* Reads argument i as an int32 into *out; throws and returns false on error. */
static int get_int_arg(napi_env env, napi_value *argv, size_t argc, size_t i, int32_t *out)
{
    napi_valuetype t;
    if (i >= argc || napi_typeof(env, argv[i], &t) != napi_ok || t != napi_number ||
        napi_get_value_int32(env, argv[i], out) != napi_ok) {
        napi_throw_type_error(env, NULL, "expected a number argument");
        return 0;
    }
    return 1;
}

/* Checks that argument i is a function; throws and returns false otherwise. */
static int check_fn_arg(napi_env env, napi_value *argv, size_t argc, size_t i)
{
    napi_valuetype t;
    if (i >= argc || napi_typeof(env, argv[i], &t) != napi_ok || t != napi_function) {
        napi_throw_type_error(env, NULL, "expected a callback");
        return 0;
    }
    return 1;
}

static napi_value recv_fds(napi_env env, napi_callback_info info)
{
    napi_value argv[3];
    size_t argc = 3;
    int32_t fd, max_bytes, max_fds;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    if (!get_int_arg(env, argv, argc, 0, &fd) || !get_int_arg(env, argv, argc, 1, &max_bytes) ||
        !get_int_arg(env, argv, argc, 2, &max_fds))
        return NULL;
    if (fd < 0 || max_bytes < 1 || max_bytes > MAX_BYTES_LIMIT || max_fds < 0 || max_fds > MAX_FDS_LIMIT) {
        napi_throw_range_error(env, NULL, "recvFds: argument out of range");
        return NULL;
    }

    char *buf = malloc((size_t)max_bytes);
    if (buf == NULL)
        return throw_errno(env, "recvFds: malloc", ENOMEM);
    /* Room for one more descriptor than allowed, to detect (and reject) extras. */
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * (MAX_FDS_LIMIT + 1))];
    } cbuf;
    memset(&cbuf, 0, sizeof(cbuf));
    struct iovec iov = { .iov_base = buf, .iov_len = (size_t)max_bytes };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.space;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * ((size_t)max_fds + 1));

    ssize_t n;
    do
        n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        int err = errno;
        free(buf);
        if (err == EAGAIN || err == EWOULDBLOCK) {
            napi_value null_value;
            napi_get_null(env, &null_value);
            return null_value;
        }
        return throw_errno(env, "recvmsg", err);
    }

    int fds[MAX_FDS_LIMIT + 1];
    size_t nfds = 0;
    int too_many = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0))
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *p = CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int one;
            memcpy(&one, p + i * sizeof(int), sizeof(int));
            if (nfds < (size_t)max_fds)
                fds[nfds++] = one;
            else {
                close(one);
                too_many = 1;
            }
        }
    }
    if (too_many || (msg.msg_flags & MSG_CTRUNC)) {
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
        free(buf);
        napi_throw_error(env, NULL, "recvFds: too many file descriptors");
        return NULL;
    }

    napi_value result, data, arr;
    if (napi_create_object(env, &result) != napi_ok ||
        napi_create_buffer_copy(env, (size_t)n, buf, NULL, &data) != napi_ok ||
        napi_create_array_with_length(env, nfds, &arr) != napi_ok) {
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
        free(buf);
        return NULL;
    }
    free(buf);
    for (size_t i = 0; i < nfds; i++) {
        napi_value v;
        napi_create_int32(env, fds[i], &v);
        napi_set_element(env, arr, (uint32_t)i, v);
    }
    napi_set_named_property(env, result, "data", data);
    napi_set_named_property(env, result, "fds", arr);
    return result;
}

/* sendFds(fd, data, fds): one non-blocking sendmsg() of data with fds (SCM_RIGHTS). */
static napi_value send_fds(napi_env env, napi_callback_info info)
{
    napi_value argv[3];
    size_t argc = 3;
    int32_t fd;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    if (!get_int_arg(env, argv, argc, 0, &fd))
        return NULL;
    void *data;
    size_t len;
    bool is_buf = false, is_arr = false;
    if (argc < 3 || napi_is_buffer(env, argv[1], &is_buf) != napi_ok || !is_buf ||
        napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok || napi_is_array(env, argv[2], &is_arr) != napi_ok || !is_arr) {
        napi_throw_type_error(env, NULL, "sendFds(fd, buffer, fds)");
        return NULL;
    }
    uint32_t nfds;
    napi_get_array_length(env, argv[2], &nfds);
    if (fd < 0 || len == 0 || nfds > MAX_FDS_LIMIT) {
        napi_throw_range_error(env, NULL, "sendFds: argument out of range");
        return NULL;
    }
    int fds[MAX_FDS_LIMIT];
    for (uint32_t i = 0; i < nfds; i++) {
        napi_value v;
        if (napi_get_element(env, argv[2], i, &v) != napi_ok || napi_get_value_int32(env, v, &fds[i]) != napi_ok) {
            napi_throw_type_error(env, NULL, "sendFds: fds must be numbers");
            return NULL;
        }
    }
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * MAX_FDS_LIMIT)];
    } cbuf;
    memset(&cbuf, 0, sizeof(cbuf));
    struct iovec iov = { .iov_base = data, .iov_len = len };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        msg.msg_control = cbuf.space;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t n;
    do
        n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return throw_errno(env, "sendmsg", errno);
    napi_value r;
    napi_create_int64(env, (int64_t)n, &r);
    return r;
}

static napi_value make_pipe(napi_env env, napi_callback_info info)
{
    (void)info;
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return throw_errno(env, "pipe2", errno);
    napi_value arr, a, b;
    napi_create_array_with_length(env, 2, &arr);
    napi_create_int32(env, p[0], &a);
    napi_create_int32(env, p[1], &b);
    napi_set_element(env, arr, 0, a);
    napi_set_element(env, arr, 1, b);
    return arr;
}

static napi_value set_blocking(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    size_t argc = 2;
    int32_t fd;
    bool blocking;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    if (!get_int_arg(env, argv, argc, 0, &fd))
        return NULL;
    if (argc < 2 || napi_get_value_bool(env, argv[1], &blocking) != napi_ok) {
        napi_throw_type_error(env, NULL, "expected a boolean argument");
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return throw_errno(env, "fcntl(F_GETFL)", errno);
    fl = blocking ? (fl & ~O_NONBLOCK) : (fl | O_NONBLOCK);
    if (fcntl(fd, F_SETFL, fl) < 0)
        return throw_errno(env, "fcntl(F_SETFL)", errno);
    return NULL;
}

static napi_value do_shutdown(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    size_t argc = 2;
    int32_t fd, how;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    if (!get_int_arg(env, argv, argc, 0, &fd) || !get_int_arg(env, argv, argc, 1, &how))
        return NULL;
    if (how != SHUT_RD && how != SHUT_WR) {
        napi_throw_range_error(env, NULL, "shutdown: how must be 0 or 1");
        return NULL;
    }
    int r = shutdown(fd, how) == 0 ? 0 : errno;
    napi_value v;
    napi_create_int32(env, r, &v);
    return v;
}

/* One waitReadable() in progress: a poll on a dup of the descriptor and a timer. */
typedef struct {
    uv_poll_t poll;
    uv_timer_t timer;
    napi_env env;
    napi_ref callback;
    napi_async_context async;
    int fd;
    int pending_closes;
    int fired;
} waiter_t;

static void waiter_closed(uv_handle_t *h)
{
    waiter_t *w = h->data;
    if (--w->pending_closes == 0) {
        close(w->fd);
        free(w);
    }
}

static void waiter_fire(waiter_t *w, bool readable)
{
    if (w->fired)
        return;
    w->fired = 1;
    uv_poll_stop(&w->poll);
    uv_timer_stop(&w->timer);
    napi_env env = w->env;
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) == napi_ok) {
        napi_value cb, recv, arg, result;
        if (napi_get_reference_value(env, w->callback, &cb) == napi_ok && napi_get_global(env, &recv) == napi_ok &&
            napi_get_boolean(env, readable, &arg) == napi_ok)
            napi_make_callback(env, w->async, recv, cb, 1, &arg, &result);
        bool pending = false;
        napi_value err;
        /* a throwing callback is an uncaught exception, as for any other event */
        if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
            napi_get_and_clear_last_exception(env, &err) == napi_ok)
            napi_fatal_exception(env, err);
        napi_close_handle_scope(env, scope);
    }
    napi_delete_reference(env, w->callback);
    napi_async_destroy(env, w->async);
    uv_close((uv_handle_t *)&w->poll, waiter_closed);
    uv_close((uv_handle_t *)&w->timer, waiter_closed);
}

static void waiter_on_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    waiter_fire(h->data, true);
}

static void waiter_on_timer(uv_timer_t *h)
{
    waiter_fire(h->data, false);
}

static napi_value wait_readable(napi_env env, napi_callback_info info)
{
    napi_value argv[3];
    size_t argc = 3;
    int32_t fd, timeout_ms;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    if (!get_int_arg(env, argv, argc, 0, &fd) || !get_int_arg(env, argv, argc, 1, &timeout_ms))
        return NULL;
    if (!check_fn_arg(env, argv, argc, 2))
        return NULL;
    if (fd < 0 || timeout_ms < 0) {
        napi_throw_range_error(env, NULL, "waitReadable: argument out of range");
        return NULL;
    }
    uv_loop_t *loop;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok)
        return NULL;
    waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return throw_errno(env, "waitReadable: calloc", ENOMEM);
    w->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (w->fd < 0) {
        int err = errno;
        free(w);
        return throw_errno(env, "waitReadable: dup", err);
    }
    w->env = env;
    napi_value name;
    if (uv_poll_init(loop, &w->poll, w->fd) != 0) {
        close(w->fd);
        free(w);
        napi_throw_error(env, NULL, "waitReadable: cannot watch the descriptor");
        return NULL;
    }
    w->poll.data = w;
    w->pending_closes = 1;
    if (napi_create_reference(env, argv[2], 1, &w->callback) != napi_ok ||
        napi_create_string_utf8(env, "qrexecWaitReadable", NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_async_init(env, NULL, name, &w->async) != napi_ok) {
        if (w->callback != NULL)
            napi_delete_reference(env, w->callback);
        uv_close((uv_handle_t *)&w->poll, waiter_closed);
        napi_throw_error(env, NULL, "waitReadable: out of memory");
        return NULL;
    }
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    w->pending_closes = 2;
    uv_poll_start(&w->poll, UV_READABLE | UV_DISCONNECT, waiter_on_poll);
    uv_timer_start(&w->timer, waiter_on_timer, (uint64_t)timeout_ms, 0);
    return NULL;
}

static napi_value do_dup(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    size_t argc = 1;
    int32_t fd;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    if (!get_int_arg(env, argv, argc, 0, &fd))
        return NULL;
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0)
        return throw_errno(env, "dup", errno);
    napi_value v;
    napi_create_int32(env, d, &v);
    return v;
}

static napi_value connect_unix(napi_env env, napi_callback_info info)
{
    napi_value argv[1];
    size_t argc = 1;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    size_t len = 0;
    napi_valuetype t;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_string ||
        napi_get_value_string_utf8(env, argv[0], path, sizeof(path), &len) != napi_ok) {
        napi_throw_type_error(env, NULL, "expected a path");
        return NULL;
    }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof(addr));
    if (len == 0 || len >= sizeof(addr.sun_path)) {
        napi_throw_range_error(env, NULL, "connectUnix: path empty or too long");
        return NULL;
    }
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, len);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return throw_errno(env, "socket", errno);
    int r;
    do
        r = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
    while (r < 0 && errno == EINTR);
    napi_value v;
    if (r < 0) {
        int err = errno;
        close(fd);
        const char *code = err == ENOENT ? "ENOENT" : err == ECONNREFUSED ? "ECONNREFUSED" : err == EAGAIN ? "EAGAIN"
                         : err == EACCES ? "EACCES" : err == ENOTDIR ? "ENOTDIR" : "EIO";
        napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &v);
        return v;
    }
    napi_create_int32(env, fd, &v);
    return v;
}

static napi_value make_socketpair(napi_env env, napi_callback_info info)
{
    (void)info;
    int p[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p) != 0)
        return throw_errno(env, "socketpair", errno);
    napi_value arr, a, b;
    napi_create_array_with_length(env, 2, &arr);
    napi_create_int32(env, p[0], &a);
    napi_create_int32(env, p[1], &b);
    napi_set_element(env, arr, 0, a);
    napi_set_element(env, arr, 1, b);
    return arr;
}

/*
 * watchSignal: who sent a signal. uv_signal (and so process.on) reports only
 * the signal number; qrexec-agent needs the sender's pid to find the call a
 * SIGUSR1 belongs to. The SA_SIGINFO handler writes one record per delivery
 * to a non-blocking self-pipe (write(2) is async-signal-safe; a record is far
 * below PIPE_BUF, so it is written whole or, when the pipe is full, dropped);
 * a uv_poll on the read end hands the records to JS. The handler also reads
 * the sender's ancestry from /proc/<pid>/stat (open/read/close are
 * async-signal-safe): a short-lived sender (`sh -c 'kill ...'`) is often gone,
 * and reaped by its parent, by the time the event loop gets to it; at delivery
 * it is usually still there.
 *
 * The event loop sees a record among other events of the same turn (a
 * child's exit, its pipes' EOF) in no set order, but the handler itself runs
 * before the main thread returns from the system call in which it could
 * learn of anything the sender did after kill(): drainSignals() delivers,
 * synchronously, every record written so far, so a caller that saw such an
 * event can first learn of the signals sent before it. For that the handler
 * must run on the main thread: a thread that does not block the signal
 * (libuv's thread pool) gets it only when the main thread already has a
 * signal pending; the handler then blocks it in that thread for good (through
 * the mask restored at its return), and drainSignals() waits for handlers
 * still running. The poll is unref'd: a
 * watch does not keep the process alive. One environment (the main thread)
 * owns all watches; at its teardown the watched signals become SIG_IGN, so a
 * late signal neither kills the process nor reaches an old handler.
 */
#define SIG_WATCH_MAX 65

#define SIG_LINEAGE_MAX 16

typedef struct {
    int32_t signo;
    int32_t pid;
    int32_t count; /* entries of lineage */
    int32_t lineage[SIG_LINEAGE_MAX];
} sig_record_t;

/* The parent of pid from /proc/<pid>/stat, or -1. Async-signal-safe (no
 * stdio, no allocation). */
static int32_t sig_parent_of(int32_t pid)
{
    char path[32] = "/proc/";
    char digits[12];
    size_t nd = 0;
    for (uint32_t v = (uint32_t)pid; nd == 0 || v > 0; v /= 10)
        digits[nd++] = (char)('0' + v % 10);
    size_t at = 6;
    while (nd > 0)
        path[at++] = digits[--nd];
    memcpy(path + at, "/stat", 6);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[512];
    ssize_t n;
    do
        n = read(fd, buf, sizeof(buf));
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0)
        return -1;
    /* "pid (comm) state ppid ...": comm may hold ')' but nothing after it does */
    ssize_t close_paren = -1;
    for (ssize_t i = 0; i < n; i++)
        if (buf[i] == ')')
            close_paren = i;
    ssize_t i = close_paren + 4; /* ") S " */
    if (close_paren < 0 || i >= n || buf[i] < '0' || buf[i] > '9')
        return -1;
    int64_t ppid = 0;
    for (; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) {
        ppid = ppid * 10 + (buf[i] - '0');
        if (ppid > INT32_MAX)
            return -1;
    }
    return (int32_t)ppid;
}

static volatile sig_atomic_t sig_write_fd = -1;
static int sig_read_fd = -1;
static napi_env sig_env = NULL;
static uv_poll_t sig_poll;
static napi_async_context sig_async = NULL;
static napi_ref sig_callbacks[SIG_WATCH_MAX];
static pid_t sig_main_tid = 0;
static volatile int sig_running = 0; /* handlers between entry and their record's write */

static void sig_handler(int signo, siginfo_t *si, void *uctx)
{
    __atomic_add_fetch(&sig_running, 1, __ATOMIC_SEQ_CST);
    int saved = errno;
    /* not the main thread: this thread blocks the signal from its return on */
    if (uctx != NULL && (pid_t)syscall(SYS_gettid) != sig_main_tid)
        sigaddset(&((ucontext_t *)uctx)->uc_sigmask, signo);
    sig_record_t r;
    r.signo = signo;
    /* si_pid is the sender only for signals sent by a process (si_code <= 0:
     * kill, sigqueue, tgkill); the kernel's own have no sender */
    r.pid = (si != NULL && si->si_code <= 0) ? (int32_t)si->si_pid : 0;
    r.count = 0;
    /* the sender, its parent, ... up to (not including) us or pid 1 */
    int32_t self = (int32_t)getpid();
    for (int32_t p = r.pid; p > 1 && p != self && r.count < SIG_LINEAGE_MAX; p = sig_parent_of(p))
        r.lineage[r.count++] = p;
    int fd = sig_write_fd;
    if (fd >= 0) {
        ssize_t n = write(fd, &r, sizeof(r));
        (void)n;
    }
    errno = saved;
    __atomic_sub_fetch(&sig_running, 1, __ATOMIC_SEQ_CST);
}

/* Calls the record's callback: from the event loop (a new callback scope) or,
 * `sync`, from a JS call under way (drainSignals). */
static void sig_deliver(napi_env env, const sig_record_t *r, int sync)
{
    if (r->signo <= 0 || r->signo >= SIG_WATCH_MAX || sig_callbacks[r->signo] == NULL)
        return;
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok)
        return;
    napi_value cb, recv, args[2], result;
    int ok = napi_get_reference_value(env, sig_callbacks[r->signo], &cb) == napi_ok && cb != NULL &&
             napi_get_global(env, &recv) == napi_ok && napi_create_int32(env, r->pid, &args[0]) == napi_ok &&
             napi_create_array_with_length(env, (size_t)r->count, &args[1]) == napi_ok;
    for (int32_t i = 0; ok && i < r->count && i < SIG_LINEAGE_MAX; i++) {
        napi_value v;
        ok = napi_create_int32(env, r->lineage[i], &v) == napi_ok && napi_set_element(env, args[1], (uint32_t)i, v) == napi_ok;
    }
    if (ok && sync) {
        /* the exception, if any, goes on to drainSignals' caller */
        napi_call_function(env, recv, cb, 2, args, &result);
        napi_close_handle_scope(env, scope);
        return;
    }
    if (ok)
        napi_make_callback(env, sig_async, recv, cb, 2, args, &result);
    bool pending = false;
    napi_value err;
    /* a throwing callback is an uncaught exception, as for any other event */
    if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
        napi_get_and_clear_last_exception(env, &err) == napi_ok)
        napi_fatal_exception(env, err);
    napi_close_handle_scope(env, scope);
}

/* Delivers every record in the pipe; returns how many. */
static uint32_t sig_read_all(int sync)
{
    sig_record_t recs[64];
    uint32_t total = 0;
    for (;;) {
        if (sig_read_fd < 0)
            return total;
        ssize_t n = read(sig_read_fd, recs, sizeof(recs));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return total;
        size_t count = (size_t)n / sizeof(sig_record_t);
        for (size_t i = 0; i < count && sig_env != NULL; i++) {
            bool pending = false;
            if (sync && napi_is_exception_pending(sig_env, &pending) == napi_ok && pending)
                break; /* a callback threw: the rest is dropped with the exception */
            sig_deliver(sig_env, &recs[i], sync);
            total++;
        }
        if ((size_t)n < sizeof(recs))
            return total;
    }
}

static void sig_on_poll(uv_poll_t *h, int status, int events)
{
    (void)h;
    (void)status;
    (void)events;
    sig_read_all(0);
}

/* drainSignals(): the records written so far, delivered now (after waiting,
 * at most 100 ms, for handlers still running on other threads). */
static napi_value drain_signals(napi_env env, napi_callback_info info)
{
    (void)info;
    napi_value out;
    if (sig_env == NULL || sig_env != env) {
        napi_create_uint32(env, 0, &out);
        return out;
    }
    for (int i = 0; i < 1000 && __atomic_load_n(&sig_running, __ATOMIC_SEQ_CST) > 0; i++) {
        struct timespec ts = { 0, 100000 };
        nanosleep(&ts, NULL);
    }
    uint32_t n = sig_read_all(1);
    napi_create_uint32(env, n, &out);
    return out;
}

static void sig_poll_closed(uv_handle_t *h)
{
    (void)h;
    close(sig_read_fd);
    sig_read_fd = -1;
}

static void sig_teardown(void *arg)
{
    napi_env env = arg;
    struct sigaction ign;
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    for (int s = 1; s < SIG_WATCH_MAX; s++) {
        if (sig_callbacks[s] == NULL)
            continue;
        sigaction(s, &ign, NULL);
        napi_delete_reference(env, sig_callbacks[s]);
        sig_callbacks[s] = NULL;
    }
    int wfd = sig_write_fd;
    sig_write_fd = -1;
    if (wfd >= 0)
        close(wfd);
    uv_poll_stop(&sig_poll);
    uv_close((uv_handle_t *)&sig_poll, sig_poll_closed);
    if (sig_async != NULL)
        napi_async_destroy(env, sig_async);
    sig_async = NULL;
    sig_env = NULL;
}

/* The pipe and its poll, once per process. Returns 0 or throws. */
static int sig_setup(napi_env env)
{
    if (sig_env != NULL)
        return 1;
    if (sig_read_fd >= 0) {
        napi_throw_error(env, NULL, "watchSignal: a previous watch is still closing");
        return 0;
    }
    uv_loop_t *loop;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok)
        return 0;
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) {
        throw_errno(env, "watchSignal: pipe2", errno);
        return 0;
    }
    if (uv_poll_init(loop, &sig_poll, p[0]) != 0) {
        close(p[0]);
        close(p[1]);
        napi_throw_error(env, NULL, "watchSignal: cannot watch the pipe");
        return 0;
    }
    sig_read_fd = p[0];
    napi_value name;
    if (napi_create_string_utf8(env, "qrexecWatchSignal", NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_async_init(env, NULL, name, &sig_async) != napi_ok ||
        napi_add_env_cleanup_hook(env, sig_teardown, env) != napi_ok) {
        if (sig_async != NULL)
            napi_async_destroy(env, sig_async);
        sig_async = NULL;
        close(p[1]);
        uv_close((uv_handle_t *)&sig_poll, sig_poll_closed);
        napi_throw_error(env, NULL, "watchSignal: out of memory");
        return 0;
    }
    uv_poll_start(&sig_poll, UV_READABLE, sig_on_poll);
    uv_unref((uv_handle_t *)&sig_poll);
    sig_main_tid = (pid_t)syscall(SYS_gettid);
    sig_write_fd = p[1];
    sig_env = env;
    return 1;
}

/*
 * Blocking the signal in libuv's thread pool: its threads block nothing, and
 * the kernel hands a process's signal to one of them when the main thread
 * already has a signal pending (a child's SIGCHLD, under load); that thread
 * may then run the handler only after the main thread saw what came next.
 * One work item per pool thread (UV_THREADPOOL_SIZE, as libuv reads it, 4 by
 * default) blocks it and waits, at most 200 ms, for the others, so that each
 * lands on its own thread. Threads created later inherit the main thread's
 * mask, which does not block it; the pool is created once, so there are none.
 */
typedef struct {
    uv_work_t req;
    int signo;
} sig_block_req_t;

static volatile int sig_blocked_threads = 0;
static int sig_pool_size = 4;

static void sig_block_work(uv_work_t *req)
{
    sig_block_req_t *r = (sig_block_req_t *)req;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, r->signo);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    __atomic_add_fetch(&sig_blocked_threads, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 200 && __atomic_load_n(&sig_blocked_threads, __ATOMIC_SEQ_CST) < sig_pool_size; i++) {
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}

static void sig_block_done(uv_work_t *req, int status)
{
    (void)status;
    free(req);
}

static void sig_block_in_pool(napi_env env, int signo)
{
    uv_loop_t *loop;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok)
        return;
    const char *v = getenv("UV_THREADPOOL_SIZE");
    long n = v != NULL ? strtol(v, NULL, 10) : 4;
    if (n < 1)
        n = 1;
    if (n > 1024)
        n = 1024;
    sig_pool_size = (int)n;
    __atomic_store_n(&sig_blocked_threads, 0, __ATOMIC_SEQ_CST);
    for (long i = 0; i < n; i++) {
        sig_block_req_t *r = calloc(1, sizeof(*r));
        if (r == NULL)
            return;
        r->signo = signo;
        if (uv_queue_work(loop, &r->req, sig_block_work, sig_block_done) != 0) {
            free(r);
            return;
        }
    }
}

static napi_value watch_signal(napi_env env, napi_callback_info info)
{
    napi_value argv[2];
    size_t argc = 2;
    int32_t signo;
    if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
        return NULL;
    if (!get_int_arg(env, argv, argc, 0, &signo))
        return NULL;
    if (!check_fn_arg(env, argv, argc, 1))
        return NULL;
    /* signals a program cannot or must not catch this way: uncatchable ones,
     * and faults, which must not return to the faulting code */
    if (signo <= 0 || signo >= SIG_WATCH_MAX || signo == SIGKILL || signo == SIGSTOP || signo == SIGSEGV ||
        signo == SIGBUS || signo == SIGILL || signo == SIGFPE || signo == SIGTRAP || signo == SIGSYS) {
        napi_throw_range_error(env, NULL, "watchSignal: this signal cannot be watched");
        return NULL;
    }
    if (sig_env != NULL && sig_env != env) {
        napi_throw_error(env, NULL, "watchSignal: signals are watched by another thread");
        return NULL;
    }
    if (sig_callbacks[signo] != NULL) {
        napi_throw_error(env, NULL, "watchSignal: this signal is already watched");
        return NULL;
    }
    if (!sig_setup(env))
        return NULL;
    if (napi_create_reference(env, argv[1], 1, &sig_callbacks[signo]) != napi_ok) {
        sig_callbacks[signo] = NULL;
        napi_throw_error(env, NULL, "watchSignal: out of memory");
        return NULL;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = sig_handler;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, NULL) != 0) {
        int err = errno;
        napi_delete_reference(env, sig_callbacks[signo]);
        sig_callbacks[signo] = NULL;
        return throw_errno(env, "watchSignal: sigaction", err);
    }
    sig_block_in_pool(env, signo);
    return NULL;
}

static int add_fn(napi_env env, napi_value exports, const char *name, napi_callback cb)
{
    napi_value fn;
    return napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) == napi_ok &&
           napi_set_named_property(env, exports, name, fn) == napi_ok;
}

NAPI_MODULE_INIT()
{
    if (!add_fn(env, exports, "recvFds", recv_fds) || !add_fn(env, exports, "pipe", make_pipe) ||
        !add_fn(env, exports, "setBlocking", set_blocking) || !add_fn(env, exports, "shutdown", do_shutdown) ||
        !add_fn(env, exports, "waitReadable", wait_readable) || !add_fn(env, exports, "connectUnix", connect_unix) || !add_fn(env, exports, "dup", do_dup) ||
        !add_fn(env, exports, "socketpair", make_socketpair) || !add_fn(env, exports, "watchSignal", watch_signal) ||
        !add_fn(env, exports, "drainSignals", drain_signals) || !add_fn(env, exports, "sendFds", send_fds) ||
        !request_server_init(env, exports))
        return NULL;
    return exports;
}
