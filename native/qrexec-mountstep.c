/*
 * qrexec-mountstep: the host-side mount step of a qrexec-ts sandbox, in one
 * process (src/runtime/sandbox/plan.ts has the same steps as a shell script,
 * used when this is not built).
 *
 * It makes a private mount namespace of its own (unshare(CLONE_NEWNS), then
 * everything private), performs the operations of its arguments in order up
 * to "--", and execs the rest (bwrap). The mounts exist only in that
 * namespace and vanish with the sandbox. Operations (paths are host paths):
 *
 *   C FILE                     write our pid to FILE (a cgroup's cgroup.procs)
 *   D DIR                      mkdir -p DIR
 *   T DIR OPTS                 mkdir -p DIR; tmpfs on it, options "mode=0755" OPTS
 *   O DIR LOWER UPPER WORK CWD mkdir -p DIR (and UPPER, WORK when UPPER is not
 *                              empty); overlayfs on DIR, lowerdir=LOWER
 *                              (entries relative to CWD), read-only without UPPER
 *   B SRC DIR ro|rw            mkdir -p DIR; bind SRC on DIR (then read-only)
 *   F FD DIR ro|rw             mkdir -p DIR; bind the directory open at descriptor
 *                              FD on DIR: the path the descriptor has now, then a
 *                              check that DIR is that very directory (device and
 *                              inode, as bwrap's --bind-fd does), else it is
 *                              unmounted and the step fails; FD is then closed
 *   N FILE                     enter the network namespace FILE (/run/netns/X)
 *
 * A failure prints "mount step: ..." on stderr and exits 1, running nothing.
 * One exec instead of a shell forking mkdir, mount and stat for every step.
 *
 * Written for qrexec-ts (MIT).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("mount step: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* mkdir -p: every missing component, mode 0777 less the umask */
static void mkdir_p(const char *dir)
{
    char buf[PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf)
        die("bad directory '%s'", dir);
    memcpy(buf, dir, n + 1);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                die("mkdir %s: %s", buf, strerror(errno));
            *p = c;
            if (c == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        die("%s: not a directory", dir);
}

static void do_mount(const char *src, const char *target, const char *type, unsigned long flags, const char *data)
{
    if (mount(src, target, type, flags, data) != 0)
        die("mount %s on %s: %s", type ? type : src, target, strerror(errno));
}

static void remount_ro(const char *target)
{
    do_mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
}

static int ro_flag(const char *s)
{
    if (strcmp(s, "ro") == 0)
        return 1;
    if (strcmp(s, "rw") == 0)
        return 0;
    die("bad bind mode '%s'", s);
    return 0;
}

static const char *arg(char **argv, int argc, int *i)
{
    if (*i >= argc)
        die("missing argument");
    return argv[(*i)++];
}

int main(int argc, char **argv)
{
    if (unshare(CLONE_NEWNS) != 0)
        die("unshare: %s", strerror(errno));
    do_mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL);
    int i = 1;
    for (;;) {
        const char *op = arg(argv, argc, &i);
        if (strcmp(op, "--") == 0)
            break;
        if (strcmp(op, "C") == 0) {
            const char *file = arg(argv, argc, &i);
            int fd = open(file, O_WRONLY | O_CLOEXEC);
            char pid[32];
            int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
            if (fd < 0 || write(fd, pid, (size_t)len) != len)
                die("%s: %s", file, strerror(errno));
            close(fd);
        } else if (strcmp(op, "D") == 0) {
            mkdir_p(arg(argv, argc, &i));
        } else if (strcmp(op, "T") == 0) {
            const char *dir = arg(argv, argc, &i);
            const char *opts = arg(argv, argc, &i);
            char data[256];
            if (snprintf(data, sizeof data, "mode=0755%s", opts) >= (int)sizeof data)
                die("tmpfs options too long");
            mkdir_p(dir);
            do_mount("tmpfs", dir, "tmpfs", 0, data);
        } else if (strcmp(op, "O") == 0) {
            const char *dir = arg(argv, argc, &i);
            const char *lower = arg(argv, argc, &i);
            const char *upper = arg(argv, argc, &i);
            const char *work = arg(argv, argc, &i);
            const char *cwd = arg(argv, argc, &i);
            mkdir_p(dir);
            size_t need = strlen(lower) + strlen(upper) + strlen(work) + 40;
            char *data = malloc(need);
            if (!data)
                die("out of memory");
            if (*upper) {
                mkdir_p(upper);
                mkdir_p(work);
                snprintf(data, need, "lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work);
            } else
                snprintf(data, need, "lowerdir=%s", lower);
            /* relative lower entries are resolved from the working directory at mount time */
            if (chdir(cwd) != 0)
                die("cd %s: %s", cwd, strerror(errno));
            do_mount("overlay", dir, "overlay", 0, data);
            if (chdir("/") != 0)
                die("cd /: %s", strerror(errno));
            free(data);
        } else if (strcmp(op, "B") == 0) {
            const char *src = arg(argv, argc, &i);
            const char *dir = arg(argv, argc, &i);
            int ro = ro_flag(arg(argv, argc, &i));
            mkdir_p(dir);
            do_mount(src, dir, NULL, MS_BIND, NULL);
            if (ro)
                remount_ro(dir);
        } else if (strcmp(op, "F") == 0) {
            const char *fds = arg(argv, argc, &i);
            const char *dir = arg(argv, argc, &i);
            int ro = ro_flag(arg(argv, argc, &i));
            char *end;
            long fd = strtol(fds, &end, 10);
            if (*fds == '\0' || *end != '\0' || fd < 3 || fd > 1024)
                die("bad descriptor '%s'", fds);
            mkdir_p(dir);
            char link[64], src[PATH_MAX];
            snprintf(link, sizeof link, "/proc/self/fd/%ld", fd);
            ssize_t n = readlink(link, src, sizeof src - 1);
            if (n <= 0 || n >= (ssize_t)sizeof src - 1)
                die("descriptor %ld: %s", fd, n < 0 ? strerror(errno) : "bad path");
            src[n] = '\0';
            struct stat want, got;
            if (fstat((int)fd, &want) != 0 || !S_ISDIR(want.st_mode))
                die("descriptor %ld: not a directory", fd);
            do_mount(src, dir, NULL, MS_BIND, NULL);
            if (stat(dir, &got) != 0 || got.st_dev != want.st_dev || got.st_ino != want.st_ino) {
                umount2(dir, MNT_DETACH);
                die("%s is not the directory the host opened", dir);
            }
            close((int)fd);
            if (ro)
                remount_ro(dir);
        } else if (strcmp(op, "N") == 0) {
            const char *file = arg(argv, argc, &i);
            int fd = open(file, O_RDONLY | O_CLOEXEC);
            if (fd < 0 || setns(fd, CLONE_NEWNET) != 0)
                die("network namespace %s: %s", file, strerror(errno));
            close(fd);
        } else
            die("bad operation %s", op);
    }
    if (i >= argc)
        die("no command");
    execv(argv[i], argv + i);
    die("exec %s: %s", argv[i], strerror(errno));
    return 1;
}
