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
 * server and relays -> agent (stdout), 12-byte records {type, relay, value}:
 *   {1, relay, 0}       READY: a new relay is waiting
 *   {2, relay, 0}       SIGNAL: the relay was sent SIGUSR1
 *   {4, 0, 0}           a fork failed
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
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

enum { OP_NEW = 1, OP_RELEASE = 3 };
enum { REC_READY = 1, REC_SIGNAL = 2, REC_FAILED = 4 };

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

static int new_relay(void)
{
    if (nrelays == cap) {
        size_t ncap = cap ? cap * 2 : 64;
        struct relay *n = realloc(relays, ncap * sizeof *n);
        if (!n)
            return -1;
        relays = n;
        cap = ncap;
    }
    pid_t server = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        close(0);
        relay_main(server);
    }
    relays[nrelays].pid = pid;
    nrelays++;
    return send_record(REC_READY, (uint32_t)pid, 0);
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
    sigset_t all;
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

    unsigned char buf[8 * 64];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(0, buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* the agent is gone */
        have += (size_t)n;
        size_t off = 0;
        for (; have - off >= 8; off += 8) {
            uint32_t op, pid;
            memcpy(&op, buf + off, 4);
            memcpy(&pid, buf + off + 4, 4);
            struct relay *r = op == OP_RELEASE ? find((pid_t)pid) : NULL;
            if (op == OP_NEW) {
                if (new_relay() != 0)
                    send_record(REC_FAILED, 0, 0);
            } else if (r) {
                kill(r->pid, SIGKILL);
                waitpid(r->pid, NULL, 0);
                forget(r);
            }
        }
        memmove(buf, buf + off, have - off);
        have -= off;
    }
    shutdown_all();
    return 0;
}
