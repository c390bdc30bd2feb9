/*
 * qrexec-sigrelay: per-call signal targets for qrexec-agent (qrexec-ts).
 *
 * A service asks for the single-socket switch by sending SIGUSR1 to
 * QREXEC_AGENT_PID. One qrexec-ts agent serves every call, and standard
 * signals do not queue: two services signalling the agent at the same moment
 * are one signal to the kernel, and one call's switch would be lost. So each
 * call gets a process of its own as QREXEC_AGENT_PID: a "relay", forked by this
 * server (started once by the agent), that reports what it receives.
 *
 * agent -> server (stdin), 8-byte records {op, pid}:
 *   {1, 0}    fork a relay (answered with READY)
 *   {3, pid}  release: the call is over, the relay is killed and reaped
 *   {4, len} + len bytes, with 3 descriptors (SCM_RIGHTS, stdin/stdout/stderr):
 *             spawn a service: {tag, uid, gid, nargs, nenv} then NUL-terminated
 *             file, cwd ("" = stay), argv[0..nargs-1], env[0..nenv-1];
 *             uid/gid 0xffffffff = unchanged (else supplementary groups are
 *             dropped, as Node's spawn does); file is searched in the env's PATH
 *             when it has no slash
 * server and relays -> agent (stdout), 12-byte records {type, relay, value}:
 *   {1, relay, 0}       READY: a new relay is waiting
 *   {2, relay, 0}       SIGNAL: the relay was sent SIGUSR1
 *   {4, 0, 0}           a fork failed
 *   {5, tag, pid}       the service was spawned (execve succeeded)
 *   {6, tag, errno}     it could not be (fork, set-up or execve failed)
 *   {7, pid, status}    a spawned service exited (wait status)
 *
 * Spawning here costs a fork of this small process, where Node's spawn forks
 * the whole agent (its page tables) and blocks its event loop meanwhile.
 *
 * A relay blocks every signal and never takes SIGUSR1: it watches it with a
 * signalfd that it does not read, reports it once, and sleeps. The signal
 * stays pending, so the agent can also see it at once, without a round
 * trip, in the relay's /proc/PID/status (ShdPnd): a signal sent before a
 * service exited is there when the service's output EOF is handled, even if
 * its record is not read yet. A relay is reaped only after its release, so
 * its pid is not reused while the agent may still name it. Records are
 * shorter than PIPE_BUF: writes from the server and the relays to the shared
 * pipe do not interleave.
 *
 * Written for qrexec-ts (MIT).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

enum { OP_NEW = 1, OP_RELEASE = 3, OP_SPAWN = 4 };
enum { REC_READY = 1, REC_SIGNAL = 2, REC_FAILED = 4, REC_SPAWNED = 5, REC_SPAWN_ERROR = 6, REC_EXITED = 7 };

#define MAX_MSG (256 * 1024)
#define MAX_QUEUED_FDS 192

struct relay {
    pid_t pid;
};

static struct relay *relays;
static size_t nrelays, cap;

static int send_record(uint32_t type, uint32_t pid, uint32_t value)
{
    uint32_t rec[3] = { type, pid, value };
    ssize_t n;
    do
        n = write(1, rec, sizeof rec);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof rec ? 0 : -1;
}

static void relay_main(pid_t server)
{
    sigset_t want;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != server)
        _exit(0);
    sigemptyset(&want);
    sigaddset(&want, SIGUSR1);
    int fd = signalfd(-1, &want, SFD_CLOEXEC);
    if (fd < 0)
        _exit(1);
    struct pollfd p = { .fd = fd, .events = POLLIN };
    while (poll(&p, 1, -1) < 0)
        if (errno != EINTR)
            _exit(1);
    send_record(REC_SIGNAL, (uint32_t)getpid(), 0);
    /* every signal is blocked: only SIGKILL (the release) ends this */
    for (;;)
        pause();
}

static struct relay *find(pid_t pid)
{
    for (size_t i = 0; i < nrelays; i++)
        if (relays[i].pid == pid)
            return &relays[i];
    return NULL;
}

static void forget(struct relay *r)
{
    *r = relays[--nrelays];
}

static int grow(void)
{
    if (nrelays < cap)
        return 0;
    size_t ncap = cap ? cap * 2 : 64;
    struct relay *n = realloc(relays, ncap * sizeof *n);
    if (!n)
        return -1;
    relays = n;
    cap = ncap;
    return 0;
}

static int new_relay(int keep)
{
    if (grow() != 0)
        return -1;
    pid_t server = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* nothing of the server's but the record pipe (a service's pipe end
           held here would keep its call's EOF away) */
        (void)keep;
        close(0);
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
        relay_main(server);
    }
    relays[nrelays].pid = pid;
    nrelays++;
    return send_record(REC_READY, (uint32_t)pid, 0);
}

/* running services, reaped on SIGCHLD (relays are reaped only at release) */
static pid_t *services;
static size_t nservices, scap;

static void reap_services(void)
{
    for (size_t i = 0; i < nservices;) {
        int st;
        pid_t r = waitpid(services[i], &st, WNOHANG);
        if (r == services[i] || (r < 0 && errno == ECHILD)) {
            send_record(REC_EXITED, (uint32_t)services[i], r < 0 ? 255u << 8 : (uint32_t)st);
            services[i] = services[--nservices];
        } else {
            i++;
        }
    }
}

static uint32_t word(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The strings of a spawn request: count NUL-terminated strings from *p within end. */
static char **strings(char **p, const char *end, uint32_t count)
{
    char **v = calloc((size_t)count + 1, sizeof *v);
    if (!v)
        return NULL;
    for (uint32_t i = 0; i < count; i++) {
        char *z = memchr(*p, 0, (size_t)(end - *p));
        if (!z) {
            free(v);
            return NULL;
        }
        v[i] = *p;
        *p = z + 1;
    }
    return v;
}

static void child_fail(int errpipe, int err)
{
    ssize_t n = write(errpipe, &err, sizeof err);
    (void)n;
    _exit(127);
}

static void spawn_service(unsigned char *msg, uint32_t len, const int fds[3], int keep)
{
    uint32_t tag = len >= 4 ? word(msg) : 0;
    int err = EINVAL;
    if (len < 20)
        goto fail;
    uint32_t uid = word(msg + 4), gid = word(msg + 8), nargs = word(msg + 12), nenv = word(msg + 16);
    char *p = (char *)msg + 20, *end = (char *)msg + len;
    if (nargs < 1 || nargs > 4096 || nenv > 4096 || end[-1] != '\0')
        goto fail;
    char *file = p;
    p += strlen(p) + 1;
    if (p >= end)
        goto fail;
    char *cwd = p;
    p += strlen(p) + 1;
    char **argv = strings(&p, end, nargs);
    if (!argv)
        goto fail;
    char **envp = strings(&p, end, nenv);
    if (!envp) {
        free(argv);
        goto fail;
    }
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) != 0) {
        err = errno;
        free(argv);
        free(envp);
        goto fail;
    }
    if (nservices == scap) {
        size_t ncap = scap ? scap * 2 : 64;
        pid_t *n = realloc(services, ncap * sizeof *n);
        if (!n) {
            err = ENOMEM;
            close(ep[0]);
            close(ep[1]);
            free(argv);
            free(envp);
            goto fail;
        }
        services = n;
        scap = ncap;
    }
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        close(ep[0]);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, 0);
        if (gid != UINT32_MAX || uid != UINT32_MAX) {
            if (setgroups(0, NULL) != 0 && errno != EPERM)
                child_fail(ep[1], errno);
        }
        if (gid != UINT32_MAX && setgid((gid_t)gid) != 0)
            child_fail(ep[1], errno);
        if (uid != UINT32_MAX && setuid((uid_t)uid) != 0)
            child_fail(ep[1], errno);
        if (*cwd && chdir(cwd) != 0)
            child_fail(ep[1], errno);
        /* fds[] are >= 3 here (0-2 are the server's own): no overlap */
        for (int i = 0; i < 3; i++)
            if (dup2(fds[i], i) < 0)
                child_fail(ep[1], errno);
        for (int fd = 3; fd < 1024; fd++)
            if (fd != ep[1])
                close(fd);
        (void)keep;
        extern char **environ;
        environ = envp;
        execvp(file, argv);
        child_fail(ep[1], errno);
    }
    free(argv);
    free(envp);
    close(ep[1]);
    if (pid < 0) {
        err = errno;
        close(ep[0]);
        goto fail;
    }
    services[nservices++] = pid;
    int child_err = 0;
    ssize_t n;
    do
        n = read(ep[0], &child_err, sizeof child_err);
    while (n < 0 && errno == EINTR);
    close(ep[0]);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    if (n == (ssize_t)sizeof child_err) {
        /* it exits 127 at once: reaped (and reported) with the others, after this */
        send_record(REC_SPAWN_ERROR, tag, (uint32_t)child_err);
        return;
    }
    send_record(REC_SPAWNED, tag, (uint32_t)pid);
    return;
fail:
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    send_record(REC_SPAWN_ERROR, tag, (uint32_t)err);
}

static void shutdown_all(void)
{
    for (size_t i = 0; i < nrelays; i++)
        kill(relays[i].pid, SIGKILL);
    for (size_t i = 0; i < nrelays; i++)
        waitpid(relays[i].pid, NULL, 0);
}

int main(int argc, char **argv)
{
    sigset_t all, chld;
    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "usage: qrexec-sigrelay (started by qrexec-agent; records on stdin/stdout)\n");
        return 2;
    }
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        return 0;
    /* relays inherit this: every signal blocked */
    sigfillset(&all);
    if (sigprocmask(SIG_BLOCK, &all, NULL) != 0)
        return 1;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        return 1;

    static unsigned char buf[MAX_MSG + 8];
    size_t have = 0;
    int queued[MAX_QUEUED_FDS];
    size_t nq = 0;
    for (;;) {
        struct pollfd p[2] = { { .fd = 0, .events = POLLIN }, { .fd = sfd, .events = POLLIN } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents & POLLIN) {
            struct signalfd_siginfo ssi;
            while (read(sfd, &ssi, sizeof ssi) == (ssize_t)sizeof ssi)
                ;
            reap_services();
        }
        if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        union {
            struct cmsghdr align;
            char space[CMSG_SPACE(sizeof(int) * 16)];
        } cbuf;
        struct iovec iov = { .iov_base = buf + have, .iov_len = sizeof buf - have };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.space, .msg_controllen = sizeof cbuf.space };
        ssize_t n = recvmsg(0, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            break; /* the agent is gone */
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                if (nq < MAX_QUEUED_FDS)
                    queued[nq++] = fd;
                else
                    close(fd);
            }
        }
        have += (size_t)n;
        size_t off = 0;
        while (have - off >= 8) {
            uint32_t op = word(buf + off), arg = word(buf + off + 4);
            if (op == OP_SPAWN) {
                if (arg > MAX_MSG)
                    goto out; /* not our agent */
                if (have - off < 8 + (size_t)arg)
                    break;
                int fds[3] = { -1, -1, -1 };
                for (int i = 0; i < 3 && nq > 0; i++) {
                    fds[i] = queued[0];
                    memmove(queued, queued + 1, (--nq) * sizeof *queued);
                }
                spawn_service(buf + off + 8, arg, fds, sfd);
                off += 8 + (size_t)arg;
                continue;
            }
            if (op == OP_NEW) {
                if (new_relay(sfd) != 0)
                    send_record(REC_FAILED, 0, 0);
            } else if (op == OP_RELEASE) {
                struct relay *r = find((pid_t)arg);
                if (r) {
                    kill(r->pid, SIGKILL);
                    waitpid(r->pid, NULL, 0);
                    forget(r);
                }
            }
            off += 8;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
    }
out:
    shutdown_all();
    return 0;
}
