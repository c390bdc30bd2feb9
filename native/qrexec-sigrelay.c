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
 *   {2, pid}  sync: the relay answers SYNCED once every SIGUSR1 sent to it
 *             before now was reported (or GONE if it died)
 *   {3, pid}  release: the call is over, the relay is killed and reaped
 * server and relays -> agent (stdout), 12-byte records {type, relay, value}:
 *   {1, relay, 0}       READY: a new relay is waiting
 *   {2, relay, sender}  SIGNAL: the relay got SIGUSR1 from `sender`
 *   {3, relay, 0}       SYNCED
 *   {4, relay, status}  GONE: the relay died before it was released
 *
 * Relays block every signal and take SIGUSR1 and SIGUSR2 with sigwaitinfo.
 * The server syncs a relay with SIGUSR2: Linux hands out the lowest pending
 * signal first, so a pending SIGUSR1 is always reported before SYNCED. A relay
 * is reaped only after its release, so its pid is not reused while the agent
 * may still name it. Records are shorter than PIPE_BUF: writes from the server
 * and the relays to the shared pipe do not interleave.
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

enum { OP_NEW = 1, OP_SYNC = 2, OP_RELEASE = 3 };
enum { REC_READY = 1, REC_SIGNAL = 2, REC_SYNCED = 3, REC_GONE = 4 };

struct relay {
    pid_t pid;
    int gone; /* died before release, already reported */
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
    siginfo_t si;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != server)
        _exit(0);
    sigemptyset(&want);
    sigaddset(&want, SIGUSR1);
    sigaddset(&want, SIGUSR2);
    for (;;) {
        int sig = sigwaitinfo(&want, &si);
        if (sig < 0)
            continue;
        if (send_record(sig == SIGUSR1 ? REC_SIGNAL : REC_SYNCED, (uint32_t)getpid(),
                        sig == SIGUSR1 ? (uint32_t)si.si_pid : 0) != 0)
            _exit(0); /* the agent is gone */
    }
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

static int new_relay(int sfd)
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
        close(sfd);
        relay_main(server);
    }
    relays[nrelays].pid = pid;
    relays[nrelays].gone = 0;
    nrelays++;
    return send_record(REC_READY, (uint32_t)pid, 0);
}

/* A relay that died on its own (SIGKILL by someone): reported, kept unreaped. */
static void check_children(void)
{
    for (size_t i = 0; i < nrelays; i++) {
        siginfo_t si;
        if (relays[i].gone)
            continue;
        si.si_pid = 0;
        if (waitid(P_PID, (id_t)relays[i].pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid != 0) {
            relays[i].gone = 1;
            send_record(REC_GONE, (uint32_t)relays[i].pid, (uint32_t)si.si_status);
        }
    }
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

    unsigned char buf[8 * 64];
    size_t have = 0;
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
            check_children();
        }
        if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
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
            struct relay *r = op == OP_NEW ? NULL : find((pid_t)pid);
            if (op == OP_NEW) {
                if (new_relay(sfd) != 0)
                    send_record(REC_GONE, 0, 0);
            } else if (!r) {
                /* not ours: a sync is answered, nothing is signalled */
                if (op == OP_SYNC)
                    send_record(REC_GONE, pid, 0);
            } else if (op == OP_SYNC) {
                if (r->gone || kill(r->pid, SIGUSR2) != 0)
                    send_record(REC_GONE, pid, 0);
            } else if (op == OP_RELEASE) {
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
