/*
 * qrexec-client-vm: a small launcher that hands a service call to the
 * long-running qrexec-agent (qrexec-ts), so that a call costs no Node.js start.
 *
 * It parses the reference's command line, sends the reference's request
 * (MSG_TRIGGER_SERVICE4 + trigger_service_params4 + SERVICE+ARG) on the agent
 * socket with its stdin/stdout/stderr attached (SCM_RIGHTS) plus a memfd with
 * the options, and waits. A qrexec-ts agent answers with 8-byte records:
 *
 *   agent -> launcher  {0xfffffff0, 0}     call accepted (start PROGRAM now)
 *                      {0xfffffff1, code}  call finished: exit with code
 *   launcher -> agent  {1, 0}              SIGUSR1: use stdin socket for output
 *                      {2, status}         the local PROGRAM exited
 *   agent -> launcher  {3, n}              sync: answer once every SIGUSR1 received
 *   launcher -> agent  {3, n}              so far was reported (FLAG_SYNC)
 *
 * EOF before any record means the call was refused (exit 126). Any other
 * 8 bytes are the reference agent's exec_params: then this launcher execs the
 * Node.js implementation, which carries on with the same connection.
 * All protocol logic lives in TypeScript; this file only moves descriptors.
 *
 * Written for qrexec-ts (MIT).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MSG_TRIGGER_SERVICE4 0x213u
#define EXIT_REFUSED 126
#define DEFAULT_AGENT_SOCKET "/var/run/qubes/qrexec-agent"

#define REC_ACCEPTED 0xfffffff0u
#define REC_EXIT 0xfffffff1u
#define REC_SIGUSR1 1u
#define REC_CHILD_EXIT 2u
#define REC_SYNC 3u

#define OPTS_MAGIC 0x314c5851u /* "QXL1" */
#define FLAG_REPLACE_STDOUT 1u
#define FLAG_REPLACE_STDERR 2u
#define FLAG_LOCAL_PROGRAM 4u
#define FLAG_STDIN_SOCKET 8u
#define FLAG_SYNC 16u /* this launcher answers REC_SYNC */

#ifndef NODE_BIN
#define NODE_BIN "node"
#endif

struct trigger {
    uint32_t type;
    uint32_t len;
    char source_domain[64];
    char target_domain[64];
    char ident[32];
};

static volatile sig_atomic_t got_sigchld, got_sigusr1;

static void on_signal(int sig)
{
    if (sig == SIGCHLD)
        got_sigchld = 1;
    else if (sig == SIGUSR1)
        got_sigusr1 = 1;
}

static void usage_text(FILE *s, const char *argv0)
{
    fprintf(s, "usage: %s [options] target_vmname program_ident [local_program [local program arguments]]\n", argv0);
    fprintf(s, "Options:\n"
               "  -h, --help - print this message\n"
               "  --buffer-size=BUFFER_SIZE - minimum vchan buffer size (default: 64k)\n"
               "  -t, --filter-escape-chars-stdout - filter non-ASCII and control characters on stdout (default if stdout is a terminal)\n"
               "  -T, --filter-escape-chars-stderr - filter non-ASCII and control characters on stderr (default if stderr is a terminal)\n"
               "  --no-filter-escape-chars-stdout - opposite to --filter-escape-chars-stdout\n"
               "  --no-filter-escape-chars-stderr - opposite to --filter-escape-chars-stderr\n");
    fprintf(s, "  --agent-socket=PATH - path to connect to, default: %s\n", DEFAULT_AGENT_SOCKET);
    fprintf(s, "  -p PREFIX-DATA, --prefix-data=PREFIX-DATA - send the given data before the provided stdin (can only be used once)\n"
               "  --use-stdin-socket - use fd 0 (which must be socket) for both stdin and stdout\n"
               "  -s SOURCE-QUBE, --source-qube=SOURCE-QUBE - Specify the source qube. This option provides extra information for relayed connection that may be used during policy evaluation.\n");
}

static _Noreturn void usage(const char *argv0, int status)
{
    usage_text(status ? stderr : stdout, argv0);
    exit(status);
}

/* A usage error: the usage, then what was wrong (getopt has already said it when what is NULL); exit 2. */
static _Noreturn void usage_error(const char *what)
{
    if (what != NULL) {
        usage_text(stderr, "qrexec-client-vm");
        fprintf(stderr, "qrexec-client-vm: error: %s\n", what);
        exit(2);
    }
    usage("qrexec-client-vm", 2);
}

static _Noreturn void die(const char *what)
{
    fprintf(stderr, "qrexec-client-vm: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* The agent's socket cannot be reached: say what is missing, in one line. */
static _Noreturn void connect_failed(const char *path)
{
    int err = errno;
    if (err == ENOENT) {
        /* the first missing component: the socket itself or a directory above it */
        char missing[PATH_MAX];
        snprintf(missing, sizeof(missing), "%s", path);
        for (;;) {
            char *slash = strrchr(missing, '/');
            if (slash == NULL || slash == missing)
                break;
            *slash = '\0';
            if (access(missing, F_OK) == 0) {
                *slash = '/';
                break;
            }
        }
        fprintf(stderr, "qrexec-client-vm: cannot connect to qrexec-agent at %s: %s does not exist\n", path, missing);
    } else if (err == ECONNREFUSED) {
        fprintf(stderr, "qrexec-client-vm: cannot connect to qrexec-agent at %s: no agent is listening there\n", path);
    } else {
        fprintf(stderr, "qrexec-client-vm: cannot connect to qrexec-agent at %s: %s\n", path, strerror(err));
    }
    exit(1);
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return 0;
        }
        p += n;
        len -= (size_t)n;
    }
    return 1;
}

/* Reads exactly 8 bytes, retrying on EINTR only when no signal needs handling.
 * Returns 8, 0 on EOF before any byte, -1 on error or short read. */
static int read_record(int fd, uint32_t rec[2], int allow_signals)
{
    unsigned char buf[8];
    size_t got = 0;
    while (got < sizeof(buf)) {
        ssize_t n = read(fd, buf + got, sizeof(buf) - got);
        if (n < 0) {
            if (errno == EINTR && (!allow_signals || got > 0))
                continue;
            return -1;
        }
        if (n == 0)
            return got == 0 ? 0 : -1;
        got += (size_t)n;
    }
    memcpy(&rec[0], buf, 4);
    memcpy(&rec[1], buf + 4, 4);
    return 8;
}

static void send_record(int fd, uint32_t a, uint32_t b)
{
    uint32_t rec[2] = { a, b };
    if (!write_all(fd, rec, sizeof(rec)))
        die("write to qrexec-agent");
}

/* Execs the Node.js implementation to continue a call the reference agent accepted. */
static _Noreturn void exec_node_fallback(int sock, const uint32_t params[2], int argc, char **argv)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        die("readlink(/proc/self/exe)");
    self[n] = '\0';
    /* <root>/native/build/qrexec-client-vm -> <root> */
    for (int i = 0; i < 3; i++) {
        char *slash = strrchr(self, '/');
        if (slash == NULL)
            die("locate installation");
        *slash = '\0';
    }
    char script[PATH_MAX + 64], resume[96];
    if ((size_t)snprintf(script, sizeof(script), "%s/dist/src/cli/qrexec-client-vm.js", self) >= sizeof(script) ||
        (size_t)snprintf(resume, sizeof(resume), "--x-resume=%d:%u:%u", sock, params[0], params[1]) >= sizeof(resume)) {
        errno = ENAMETOOLONG;
        die("locate installation");
    }
    int fl = fcntl(sock, F_GETFD);
    if (fl < 0 || fcntl(sock, F_SETFD, fl & ~FD_CLOEXEC) < 0)
        die("fcntl");
    char **nargv = calloc((size_t)argc + 4, sizeof(char *));
    if (nargv == NULL)
        die("calloc");
    nargv[0] = "node";
    nargv[1] = script;
    nargv[2] = resume;
    for (int i = 1; i < argc; i++)
        nargv[i + 2] = argv[i];
    nargv[argc + 2] = NULL;
    execv(NODE_BIN, nargv);
    execvp("node", nargv);
    die("exec node");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "buffer-size", required_argument, 0, 'b' },
        { "filter-escape-chars-stdout", no_argument, 0, 't' },
        { "filter-escape-chars-stderr", no_argument, 0, 'T' },
        { "no-filter-escape-chars-stdout", no_argument, 0, 't' + 128 },
        { "no-filter-escape-chars-stderr", no_argument, 0, 'T' + 128 },
        { "agent-socket", required_argument, 0, 'a' },
        { "prefix-data", required_argument, 0, 'p' },
        { "use-stdin-socket", no_argument, 0, 'u' + 128 },
        { "source-qube", required_argument, 0, 's' },
        { "help", no_argument, 0, 'h' },
        { NULL, 0, 0, 0 },
    };
    const char *agent_socket = DEFAULT_AGENT_SOCKET, *prefix = NULL, *source = NULL;
    int replace_out = -1, replace_err = -1, stdout_fd = 1, opt;
    char *end;

    signal(SIGPIPE, SIG_IGN);
    /* messages name the command, not the path it was started by */
    argv[0] = "qrexec-client-vm";
    while ((opt = getopt_long(argc, argv, "+tTa:p:s:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'b': {
            if (*optarg < '0' || *optarg > '9') {
                fputs("Bad buffer size: does not begin with a number\n", stderr);
                exit(1);
            }
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 0);
            if (v > INT_MAX)
                errno = ERANGE;
            if (errno) {
                perror("strtoul");
                exit(1);
            }
            if (*end) {
                fputs("Bad buffer size: trailing junk\n", stderr);
                exit(1);
            }
            break; /* accepted for compatibility; channels are sockets here */
        }
        case 't': replace_out = 1; break;
        case 'T': replace_err = 1; break;
        case 't' + 128: replace_out = 0; break;
        case 'T' + 128: replace_err = 0; break;
        case 'h': usage(argv[0], 0);
        case 'a': agent_socket = optarg; break;
        case 'p':
            if (prefix)
                usage_error("-p/--prefix-data given twice");
            prefix = optarg;
            break;
        case 's':
            if (source)
                usage_error("-s/--source-qube given twice");
            source = optarg;
            break;
        case 'u' + 128: {
            int type;
            socklen_t len = sizeof(type);
            if (stdout_fd == 0) {
                fputs("qrexec-client-vm: --use-stdin-socket passed twice\n", stderr);
                exit(2);
            }
            if (getsockopt(0, SOL_SOCKET, SO_TYPE, &type, &len)) {
                if (errno == ENOTSOCK) {
                    fputs("qrexec-client-vm: --use-stdin-socket passed, but stdin not a socket\n", stderr);
                    exit(2);
                }
                fprintf(stderr, "qrexec-client-vm: getsockopt(0, SOL_SOCKET, SO_TYPE): %s\n", strerror(errno));
                exit(2);
            }
            if (type != SOCK_STREAM) {
                fprintf(stderr, "qrexec-client-vm: stdin was a socket of type %d, not SOCK_STREAM (%d)\n", type, SOCK_STREAM);
                exit(2);
            }
            stdout_fd = 0;
            break;
        }
        default: usage_error(NULL);
        }
    }
    if (argc - optind < 2) {
        usage_error("want a target qube and a service");
    }
    int local = argc - optind > 2;
    if (local && stdout_fd != 1) {
        usage_error("cannot spawn a local process with --use-stdin-socket");
    }
    if (!local && replace_out == -1 && isatty(1))
        replace_out = 1;
    if (replace_err == -1 && isatty(2))
        replace_err = 1;

    /* The request, byte for byte as the reference client sends it. */
    const char *service = argv[optind + 1];
    size_t service_len = strlen(service) + 1;
    if (service_len > UINT32_MAX - sizeof(struct trigger)) {
        errno = E2BIG;
        die("service name");
    }
    struct trigger t;
    memset(&t, 0, sizeof(t));
    t.type = MSG_TRIGGER_SERVICE4;
    t.len = (uint32_t)(sizeof(t) - 8 + service_len);
    if (source)
        strncpy(t.source_domain, source, sizeof(t.source_domain) - 1);
    strncpy(t.target_domain, argv[optind], sizeof(t.target_domain) - 1);
    for (char *c = t.target_domain; *c; c++)
        if (*c == '$')
            *c = '@';
    memcpy(t.ident, "SOCKET", sizeof("SOCKET"));
    char *req = malloc(sizeof(t) + service_len);
    if (req == NULL)
        die("malloc");
    memcpy(req, &t, sizeof(t));
    memcpy(req + sizeof(t), service, service_len - 1);
    req[sizeof(t) + service_len - 1] = '\0';

    /* Options for a qrexec-ts agent, in a memfd. */
    uint32_t flags = (replace_out > 0 ? FLAG_REPLACE_STDOUT : 0) | (replace_err > 0 ? FLAG_REPLACE_STDERR : 0) |
                     (local ? FLAG_LOCAL_PROGRAM : 0) | (stdout_fd == 0 ? FLAG_STDIN_SOCKET : 0) | (local ? FLAG_SYNC : 0);
    uint32_t prefix_len = prefix ? (uint32_t)strlen(prefix) : 0;
    uint32_t head[3] = { OPTS_MAGIC, flags, prefix_len };
    int memfd = memfd_create("qrexec-client-vm", MFD_CLOEXEC);
    if (memfd < 0 || !write_all(memfd, head, sizeof(head)) || (prefix_len && !write_all(memfd, prefix, prefix_len)))
        die("memfd");

    /* Local program: it talks to us through two socket pairs. */
    int inpair[2] = { -1, -1 }, outpair[2] = { -1, -1 };
    if (local && (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, inpair) ||
                  socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, outpair)))
        die("socketpair");
    int pass[4] = { local ? inpair[1] : stdout_fd, local ? outpair[0] : 0, 2, memfd };

    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(agent_socket) >= sizeof(addr.sun_path)) {
        errno = ENAMETOOLONG;
        die("connect");
    }
    strcpy(addr.sun_path, agent_socket);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        die("socket");
    if (connect(sock, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
        connect_failed(agent_socket);
    }

    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(pass))];
    } cmsg;
    memset(&cmsg, 0, sizeof(cmsg));
    struct iovec iov = { .iov_base = req, .iov_len = sizeof(t) + service_len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cmsg.buf, .msg_controllen = sizeof(cmsg.buf) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(pass));
    memcpy(CMSG_DATA(c), pass, sizeof(pass));
    ssize_t sent;
    do
        sent = sendmsg(sock, &msg, 0);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        die("write(hdr) to agent");
    if ((size_t)sent < iov.iov_len && !write_all(sock, req + sent, iov.iov_len - (size_t)sent))
        die("write(command) to agent");
    close(memfd);
    free(req);

    uint32_t rec[2];
    int r = read_record(sock, rec, 0);
    if (r == 0) {
        fprintf(stderr, "Request refused\n");
        exit(EXIT_REFUSED);
    }
    if (r < 0)
        die("read");
    if (rec[0] == REC_EXIT)
        exit((int)(rec[1] & 0xff));
    if (rec[0] != REC_ACCEPTED) {
        /* The reference agent: exec_params. Continue in Node.js. */
        if (local) {
            close(inpair[0]); close(inpair[1]); close(outpair[0]); close(outpair[1]);
        }
        exec_node_fallback(sock, rec, argc, argv);
    }

    pid_t child = 0;
    sigset_t block, orig;
    sigemptyset(&block);
    sigaddset(&block, SIGCHLD);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &orig);
    if (local) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGCHLD, &sa, NULL);
        sigaction(SIGUSR1, &sa, NULL);
        char pid_s[16];
        snprintf(pid_s, sizeof(pid_s), "%d", (int)getpid());
        if (setenv("QREXEC_AGENT_PID", pid_s, 1))
            die("setenv");
        close(inpair[1]);
        close(outpair[0]);
        child = fork();
        if (child < 0)
            die("fork");
        if (child == 0) {
            sigprocmask(SIG_SETMASK, &orig, NULL);
            signal(SIGPIPE, SIG_DFL);
            signal(SIGCHLD, SIG_DFL);
            signal(SIGUSR1, SIG_DFL);
            for (int i = 0; i < 3; i++) {
                if (i != 2 || getenv("PASS_LOCAL_STDERR")) {
                    char *env;
                    int dup_fd = dup(i);
                    if (dup_fd < 0 || asprintf(&env, "SAVED_FD_%d=%d", i, dup_fd) < 0 || putenv(env)) {
                        perror("prepare SAVED_FD_");
                        exit(1);
                    }
                }
            }
            if (dup2(inpair[0], 0) != 0 || dup2(outpair[1], 1) != 1) {
                perror("dup2()");
                exit(1);
            }
            char *abs_path = argv[optind + 2];
            char *base = strrchr(abs_path, '/');
            argv[optind + 2] = base ? base + 1 : abs_path;
            execv(abs_path, argv + optind + 2);
            perror("execv");
            exit(-1);
        }
        close(inpair[0]);
        close(outpair[1]);
    } else {
        /* The agent holds our stdin/stdout now; let go of them so EOF can reach their peers. */
        int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devnull >= 0) {
            dup2(devnull, 0);
            if (stdout_fd == 1)
                dup2(devnull, 1);
            close(devnull);
        }
    }

    for (;;) {
        /* SIGUSR1 first: when both came during one wait, the program sent it
         * before it exited */
        if (got_sigusr1) {
            got_sigusr1 = 0;
            send_record(sock, REC_SIGUSR1, 0);
        }
        if (got_sigchld) {
            got_sigchld = 0;
            int status;
            pid_t p;
            while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
                if (p == child) {
                    uint32_t st = WIFSIGNALED(status) ? 128u + (uint32_t)WTERMSIG(status) : (uint32_t)WEXITSTATUS(status);
                    send_record(sock, REC_CHILD_EXIT, st);
                }
            }
        }
        struct pollfd pfd = { .fd = sock, .events = POLLIN };
        int n = ppoll(&pfd, 1, NULL, &orig);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("ppoll");
        }
        r = read_record(sock, rec, 0);
        if (r == 8 && rec[0] == REC_EXIT)
            exit((int)(rec[1] & 0xff));
        if (r == 8 && rec[0] == REC_SYNC) {
            /* the agent saw the program's output end: a SIGUSR1 it sent before
             * is reported first. ppoll returning for the socket leaves a
             * signal that came meanwhile pending (blocked): take it now. */
            struct timespec zero = { 0, 0 };
            sigset_t usr1;
            sigemptyset(&usr1);
            sigaddset(&usr1, SIGUSR1);
            if (sigtimedwait(&usr1, NULL, &zero) == SIGUSR1)
                got_sigusr1 = 1;
            if (got_sigusr1) {
                got_sigusr1 = 0;
                send_record(sock, REC_SIGUSR1, 0);
            }
            send_record(sock, REC_SYNC, rec[1]);
            continue;
        }
        if (r <= 0) {
            fprintf(stderr, "qrexec-client-vm: lost connection to qrexec-agent\n");
            exit(1);
        }
        /* ignore unknown records */
    }
}
